"""torchtrace.diff: causes that are not a tensor read before the hunk --
autograd state (a .grad that existed), recursion, nested loops."""
from __future__ import annotations

import torch
import torch.nn as nn

import torchtrace
from torchtrace.ir import Graph


def line_of(marker: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# LINE:{marker}"):
                return i
    raise LookupError(marker)


class Clip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        if g.abs().max() > 1.0:  # LINE:clip
            g = g / g.abs().max()
        return g


class Clipped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Clip.apply(self.fc(x))


def _step(m: nn.Module, scale: float) -> Graph:
    with torchtrace.trace(m) as t:
        (m(torch.ones(2, 4)).sum() * scale).backward()
    return t.graph


def test_accumulating_into_an_existing_grad_is_not_blamed_on_a_branch():
    torch.manual_seed(0)
    m = Clipped()
    a = _step(m, 0.1)  # creates .grad
    b = _step(m, 10.0)  # adds into it; the backward branch flips too
    adds = [n for n in b.nodes if "accumulate_grad" in n.tags]
    assert [n.short_op for n in adds] == ["add_.Tensor"] * 2
    assert sorted(b.value(n.inputs[0]).name for n in adds) == ["fc.bias.grad", "fc.weight.grad"]
    assert not any("accumulate_grad" in n.tags for n in a.nodes)
    d = torchtrace.diff(a, b)
    accumulated = "gradient accumulated into an existing .grad in B (AccumulateGrad: autograd state, not a branch)"
    assert d.why() == [f"`test_diff_causes.py:{line_of('clip')}` read False in A, True in B "
                       "\u2192 3 ops only in B (in `<root>`)",
                       f"{accumulated} \u2192 2 hunks, each 1 op only in B (in `<root>`)"]
    assert sorted(g for h in d.hunks for g in h.grads) == ["fc.bias.grad", "fc.weight.grad"]
    assert torchtrace.diff(b, a).why()[1] == accumulated.replace("in B", "in A") + \
        " \u2192 2 hunks, each 1 op only in A (in `<root>`)"
