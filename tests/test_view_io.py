"""Views draw every input and output of the pass (an audit found views that
dropped some): oracles from the graph's own values and outputs."""
from __future__ import annotations

from typing import List

import pytest
import torch
from torch import nn

import torchtrace
from torchtrace.ir import Graph


def boxes(g: Graph, prefix: str, **view) -> List[str]:
    """The text view's lines of input (``in``) or output (``out``) boxes."""
    return [line for line in torchtrace.render(g, "text", **view).splitlines() if line.startswith(prefix)]


def traced(m: nn.Module, *args: torch.Tensor, backward: bool = False) -> Graph:
    with torchtrace.trace(m) as t:
        out = m(*args)
        if backward:
            (out[0] if isinstance(out, tuple) else out).sum().backward()
    return t.graph


class Passes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return self.l(x), y, self.l.weight, x.view(-1)


@pytest.mark.parametrize("view", [{}, {"depth": 0}, {"depth": 1}, {"params": False}, {"hide": ("view",)}])
def test_every_output_is_drawn_also_one_returned_as_it_came_in(view):
    """An input returned untouched (`y`), a returned parameter at depth 1 or with
    params=False, and with views hidden an output a hidden op made from an input
    (`x.view(-1)`): each view drew fewer outputs than the call returned."""
    torch.manual_seed(0)
    g = traced(Passes(), torch.randn(2, 4), torch.randn(3))
    outs = boxes(g, "out", **view)
    shapes = [f"f32[{','.join(map(str, g.value(v).shape))}]" for v in g.outputs]
    assert len(outs) == len(g.outputs) == 4 and [o.split()[2] for o in outs] == shapes, outs
    assert [i.split()[1] for i in boxes(g, "in", **view)] == ["x", "y"]


class Unchained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(8, 8)
        self.enc = nn.Linear(8, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = self.pre(a)
        return torch.stack([self.enc(v) for v in (h, h * 2, h * 3, b)])


@pytest.mark.parametrize("depth", [1, 2])
def test_a_fold_draws_an_input_only_a_later_piece_reads(depth):
    """`enc` folded x4 is drawn as its first call, which reads `pre`'s output:
    the input `b` the fourth call reads was drawn nowhere."""
    torch.manual_seed(0)
    g = traced(Unchained(), torch.randn(2, 8), torch.randn(2, 8))
    text = torchtrace.render(g, "text", depth=depth)
    assert "enc · Linear × 4" in text
    assert [i.split()[1] for i in boxes(g, "in", depth=depth)] == ["a", "b"]


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        h2 = self.inner(h * 2)
        return self.head(h2 + h)


def test_a_focus_draws_where_its_results_go_and_a_backward_view_no_forward_output():
    """A focus on a module called twice drew no output box for what it made (only
    the graph's own outputs); the backward view drew the forward's loss as an
    output, because a backward op read it."""
    torch.manual_seed(0)
    g = traced(Twice(), torch.randn(3, 4), backward=True)
    outs = boxes(g, "out", focus="inner")
    assert [o.split()[1:4] for o in outs] == [["to", "<root>", "f32[3,4]"]] * 2, outs
    assert boxes(g, "out", phase="backward") == [] and boxes(g, "out", phase="optimizer") == []
    assert len(boxes(g, "out", phase="both")) == len(boxes(g, "out")) == len(g.outputs) == 1


class Looped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(4, 4)
        self.o = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = []
        for _ in range(5):
            x = self.b(x)
            ys.append(x)
        return self.o(sum(ys))


def test_a_focus_on_a_module_called_in_a_loop_draws_one_output_for_the_fold():
    """(A review.) Focus on `b`, called 5x and folded into one box: five identical
    "to <root>" boxes hung off it; unfolded, one per call."""
    torch.manual_seed(0)
    g = traced(Looped(), torch.randn(2, 4))
    assert len(boxes(g, "out", focus="b")) == 1
    assert len(boxes(g, "out", focus="b", fold=False)) == 5
    from torchtrace.views.labels import range_name
    assert range_name(["bs.0", "bs.0", "o", "bs.1", "bs.1", "o"]) == "bs.0 (+3 more)"  # (runs of names after it)


def test_a_focus_draws_no_output_for_a_value_made_outside_it():
    """(A review.) T5's encoder output is a graph output that the decoder's blocks
    read: a focus on `decoder.block.0` drew it as an output of its own."""
    import zoo
    torch.manual_seed(0)
    m = zoo.t5()
    ids = torch.randint(0, 100, (1, 6))
    with torchtrace.trace(m) as t:
        m(input_ids=ids, decoder_input_ids=ids)
    outs = boxes(t.graph, "out", focus="decoder.block.0")
    assert outs and all(o.split()[1] == "to" for o in outs), outs


class _Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor):
        a, b = self.lin(x).chunk(2, -1)
        return a, b


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = _Split()
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.enc(x)
        return self.head(a).sum() * self.head(b).sum()


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_a_focus_draws_each_value_that_leaves_it(depth):
    """(A review of the one-output-per-fold rule.) Two results of one box, both
    read by `head`, drew one output."""
    torch.manual_seed(0)
    g = traced(_TwoHeads(), torch.randn(2, 4))
    assert [o.split()[1:3] for o in boxes(g, "out", focus="enc", depth=depth)] == [["to", "head"]] * 2
