"""The classic seed: y = w*x + b, traced with its backward.

    python examples/seed_linear.py

Shows the real aten ops on the real tensors (mul, add), the autograd graph
they built (MulBackward0, AddBackward0, an AccumulateGrad for w and for b),
and the true gradients: dy/dw = x = 1.0, dy/db = 1.0.
"""
import torch

import torchtrace

w = torch.tensor(2.0, requires_grad=True)
x = torch.tensor(1.0)
b = torch.tensor(0.5, requires_grad=True)

with torchtrace.trace(label="y = w*x + b") as t:
    y = w * x + b
    y.backward()

g = t.graph
print(g)
print()
print("autograd graph (built by the forward):")
for a in g.autograd.nodes:
    made_by = f"made by {a.op} ({g.node(a.op).op})" if a.op else f"feeds {a.param}"
    nxt = ", ".join(g.autograd_node(n).name.split("::")[-1] for n in a.next) or "-"
    print(f"  {a.id:<4} {a.name.split('::')[-1]:<16} {made_by:<34} next: {nxt}")
print("backward ran:", " -> ".join(g.autograd_node(a).name.split("::")[-1] for a in g.autograd.executed))
print()
print(f"y = {y.item()}   w.grad = {w.grad.item()} (== x = {x.item()})   b.grad = {b.grad.item()}")
for gi in g.autograd.grads:
    print(f"  gradient of {gi.name}: shape {list(gi.shape)} {gi.dtype} norm {gi.norm}")
