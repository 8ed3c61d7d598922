"""The autograd Node torch builds anew for a view read after an in-place write
to its base (a 2026-11-28 audit: Longformer, LED): linked to the view op."""
from __future__ import annotations

import torch
import torch.nn as nn

import torchtrace


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        v = h[:, :3]  # a view: SliceBackward0
        h.mul_(2)  # its base written in place: v's Node is stale
        return v * 3  # reading v makes it anew, an AsStridedBackward0


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _walk(fn):
    seen, stack = [], [fn]
    while stack:
        n = stack.pop()
        if n is None or any(n is s for s in seen):
            continue
        seen.append(n)
        stack.extend(f for f, _ in n.next_functions)
    return seen


def test_a_view_s_rebuilt_node_is_linked_to_the_view_op_and_its_backward_to_the_module():
    """It was linked to no op (`op` null), and the 4 ops it ran in backward were
    in no module call."""
    torch.manual_seed(0)
    m, x = Net(), torch.randn(2, 8, 4)
    plain = m(x)
    with torchtrace.trace(m) as t:
        out = m(x)
        loss = out.sum()
        loss.backward()
    assert torch.equal(plain, out)
    g = t.graph
    walked = sorted(n.name() for n in _walk(loss.grad_fn))  # the oracle: torch's own graph
    assert sorted(a.name for a in g.autograd.nodes) == walked and "AsStridedBackward0" in walked
    [rebuilt] = [a for a in g.autograd.nodes if a.name == "AsStridedBackward0"]
    view = g.node(rebuilt.op)
    assert view.op == "aten.slice.Tensor" and g.module_path(view.module) == "block" and view.grad_fn == rebuilt.id
    ran = [n for n in g.nodes if n.autograd_node == rebuilt.id]
    assert ran and all(n.phase == "backward" and g.module_path(n.module) == "block" for n in ran)
    assert all(a.op is not None for a in g.autograd.nodes if not a.name.endswith("AccumulateGrad"))
