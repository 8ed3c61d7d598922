"""The autograd Node torch builds anew for a view read after an in-place write
to its base (a 2026-11-28 audit: Longformer, LED): linked to the view op."""
from __future__ import annotations

import math

import pytest
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


class Reads(nn.Module):
    """Stale views read beside a fresh one (`W.t()` in a Linear), two at once, a view of a view."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.pre, self.post = nn.Linear(4, 4), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        if self.kind == "linear":
            v = h[:, :3]
            h.mul_(2)
            return self.post(v)  # (addmm(bias, v, W.t()): the transpose is a view made later, not stale)
        if self.kind == "two":
            v1, v2 = h[:, :3], h[:, 3:]
            h.mul_(2)
            return v1 * v2  # (one op reads both: [2, 3] and [2, 1])
        w = h[:, :3][:, 1:]
        h.mul_(2)
        return w * 3


@pytest.mark.parametrize("kind", ["linear", "two", "nested"])
def test_each_rebuilt_node_is_linked_to_its_own_view(kind):
    """(A review.) The Node was linked to the view op the reader's inputs came from
    last: `post.weight.t()` for a Linear reading the stale view, and one slice for two
    stale views read by one op. Each is checked against what its backward ran: the
    `as_strided` of its view's size."""
    torch.manual_seed(0)
    m, x = Reads(kind), torch.randn(2, 4)
    with torchtrace.trace(m) as t:
        loss = m(x).sum()
        loss.backward()
    g = t.graph
    walked = [n.name() for n in _walk(loss.grad_fn)]
    rebuilt = [a for a in g.autograd.nodes if a.name == "AsStridedBackward0"]
    assert len(rebuilt) == walked.count("AsStridedBackward0") == (2 if kind == "two" else 1)
    assert len({a.op for a in rebuilt}) == len(rebuilt)
    for a in rebuilt:
        view = g.node(a.op)
        assert view.op == "aten.slice.Tensor" and view.grad_fn == a.id, (a, view)
        numel = math.prod(g.value(view.outputs[0]).shape)  # (torch may drop a size-1 dimension there)
        sizes = [n.args.get("size") for n in g.nodes if n.autograd_node == a.id and n.op == "aten.as_strided.default"]
        assert numel in [math.prod(s) for s in sizes], (numel, sizes)
