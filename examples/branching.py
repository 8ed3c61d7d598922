"""Why did the second pass build a different graph?

A router sends inputs with outliers through a bigger block (an ``if`` on
tensor data) and refines its output as many times as a tensor counter says
(a ``while`` on tensor data). Two inputs, two graphs; ``torchtrace.diff``
names the line of Python that read tensor data and what it read each time.

    python examples/branching.py            # the explained diff, as text
    python examples/branching.py mermaid    # or: dot, markdown
"""
from __future__ import annotations

import sys

import torch
from torch import nn

import torchtrace


class Router(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.small = nn.Linear(8, 8)
        self.large = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if x.abs().amax() > 3.0:  # outliers take the big block
            h = self.large(h)
        else:
            h = self.small(h)
        while steps > 0:  # refine `steps` times
            h = torch.tanh(h) + h
            steps = steps - 1
        return self.head(h)


def record(model: nn.Module, x: torch.Tensor, steps: int, label: str) -> torchtrace.Graph:
    with torch.no_grad(), torchtrace.trace(model, label=label) as t:
        model(x, torch.tensor(steps))
    return t.graph


def graphs() -> tuple:
    """The two passes: calm input, 3 refinements; spiky input, 5 refinements."""
    torch.manual_seed(0)
    model = Router().eval()
    calm = torch.randn(2, 8).clamp(-1, 1)
    spiky = calm.clone()
    spiky[0, 3] = 7.5
    return record(model, calm, 3, "calm"), record(model, spiky, 5, "spiky")


def main(fmt: str = "text") -> None:
    a, b = graphs()
    d = torchtrace.diff(a, b)
    if fmt == "text":
        print(d)
    else:
        from torchtrace.renderers.diffs import render_diff

        print(render_diff(d, fmt))


if __name__ == "__main__":
    try:
        main(*sys.argv[1:2])
    except torchtrace.TorchtraceError as e:  # (`python examples/branching.py svgg`: say why, no traceback)
        sys.exit(f"error: {e}")
