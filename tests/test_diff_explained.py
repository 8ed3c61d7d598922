"""torchtrace.diff (a 2026-11-28 audit of diff explanations): ops that an
``except`` ran at the end of a pass, after an op raised there only; an ``if``
that tests a dtype."""
from __future__ import annotations

import torch
import torch.nn as nn

import torchtrace
import zoo
from torchtrace.ir import Graph


def line_of(marker: str) -> int:
    return zoo.marked_line(__file__, marker)


class TryAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.register_buffer("mem", torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        try:
            h = h + self.mem  # LINE:try_add
        except RuntimeError:
            h = h + self.mem.mean(0)  # LINE:fallback
        return h


def _traced(m: nn.Module, x: torch.Tensor) -> Graph:
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(x)
    return t.graph


def test_ops_an_except_ran_as_the_pass_s_last_are_put_down_to_the_raise():
    """Batch 3 adds the [3, 4] buffer; batch 2 raises there and the `except` adds its
    mean: the last ops of B, after every op of A. That hunk was put down to the
    input's shape ("Python saw another shape"), because the other pass had ended."""
    torch.manual_seed(0)
    m = TryAdd()
    ok, failed = _traced(m, torch.randn(3, 4)), _traced(m, torch.randn(2, 4))
    for d, side in ((torchtrace.diff(ok, failed), "B"), (torchtrace.diff(failed, ok), "A")):
        [fallback] = [h for h in d.hunks if h.kind == "structural"]
        assert {n.source.line for n in (fallback.only_b if side == "B" else fallback.only_a)} == {line_of("fallback")}
        assert fallback.caught is not None and fallback.witness is None
        assert fallback.explanation.startswith(f"`add.Tensor` raised in {side}: RuntimeError: The size of tensor a"), \
            fallback.explanation
        assert "(caught: the program went on, down another path) \u2192 2 ops only in " in fallback.explanation
        assert fallback.explanation in d.why()


def test_a_pass_that_stopped_at_its_raise_is_not_said_to_have_caught_it():
    """The other way round: the pass that raised ran nothing after it (the error
    ended the block), so the ops only the other ran are not what an `except` ran."""
    torch.manual_seed(0)
    m = nn.Linear(4, 4)

    def f(x: torch.Tensor, fail: bool) -> torch.Tensor:
        h = m(x)
        h = h.view(5, 5) if fail else h.view(2, 8)
        return torch.tanh(h).sum()

    x = torch.randn(4, 4)
    with torch.no_grad(), torchtrace.trace() as t:
        f(x, False)
    ok = t.graph
    try:
        with torch.no_grad(), torchtrace.trace() as t:
            f(x, True)
    except RuntimeError:
        pass
    d = torchtrace.diff(ok, t.graph)
    assert all(h.caught is None for h in d.hunks), [h.explanation for h in d.hunks]


class ToFloat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # LINE:dtype_if
            x = x.float() / 255.0
        return self.l(x)


def test_an_if_that_saw_only_a_dtype_change_tests_a_dtype():
    """It said "the `if` at ... tests a shape; input `x` f32[2,4] → u8[2,4]"."""
    torch.manual_seed(0)
    m = ToFloat()
    [why] = torchtrace.diff(_traced(m, torch.rand(2, 4)),
                            _traced(m, torch.randint(0, 255, (2, 4), dtype=torch.uint8))).why()
    assert why.startswith(f"the `if` at `test_diff_explained.py:{line_of('dtype_if')}` tests a dtype; "
                          "input `x` f32[2,4] \u2192 u8[2,4]"), why
    [why] = torchtrace.diff(_traced(m, torch.rand(2, 4)),
                            _traced(m, torch.randint(0, 255, (3, 4), dtype=torch.uint8))).why()
    assert "tests a shape or dtype; " in why, why
