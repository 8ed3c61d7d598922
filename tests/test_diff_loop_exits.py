"""torchtrace.diff: loops ended by a read whose first values are alike on both
sides (an end token read with ``.item()``), and halting loops that add up what
they read (``total += p.item()`` ... ``while total < 0.99:``)."""
from __future__ import annotations

import pytest
import torch

import torchtrace
import zoo
from torchtrace.ir import Graph

torch.manual_seed(0)
L4 = torch.nn.Linear(4, 4)
HALT = torch.nn.Linear(4, 1)


def line_of(marker: str) -> int:
    return zoo.marked_line(__file__, marker)


def _traced(fn, *args) -> Graph:
    with torch.no_grad(), torchtrace.trace() as t:
        fn(*args)
    return t.graph


def _count(g: Graph, op: str) -> int:
    return sum(n.op == op for n in g.nodes)


def until_token(x: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "for":
        for t in range(8):  # LINE:tok_for
            x = L4(x)
            if tokens[t].item() == 1:  # LINE:tok_for_read
                break
    else:
        t = 0
        while True:  # LINE:tok_while
            x = L4(x)
            if tokens[t].item() == 1:  # LINE:tok_while_read
                break
            t += 1
    return x


@pytest.mark.parametrize("kind", ["for", "while"])
def test_a_loop_ended_by_a_number_read_alike_at_first_is_named_by_its_header(kind):
    """The end token at 2 in A, at 5 in B: both sides read 0, 0 first. It was "read 1
    in A, 0 in B; the block at <the if's line> ran 2x in A, 5x in B" (one short)."""
    x = torch.randn(1, 4)
    stops = [torch.zeros(8, dtype=torch.long).index_fill_(0, torch.tensor([k]), 1) for k in (2, 5)]
    a, b = (_traced(until_token, x, s, kind) for s in stops)
    assert (_count(a, "aten.addmm.default"), _count(b, "aten.addmm.default")) == (3, 6)
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith(f"`{kind}` at `test_diff_loop_exits.py:{line_of(f'tok_{kind}')}` ran 3\u00d7 in A, 6\u00d7 in B; "
                          f"`test_diff_loop_exits.py:{line_of(f'tok_{kind}_read')}` read 1 in A, 0 in B \u2192 "), why


def halting(x: torch.Tensor, bias: torch.Tensor, kind: str) -> torch.Tensor:
    h, total = x, 0.0
    if kind == "while +=":
        while total < 0.99:  # LINE:halt_while
            h = torch.tanh(L4(h))
            p = torch.sigmoid(HALT(h) + bias).mean()
            total += p.item()  # LINE:halt_while_read
    elif kind == "while =":
        while total < 0.99:  # LINE:halt_while2
            h = torch.tanh(L4(h))
            p = torch.sigmoid(HALT(h) + bias).mean()
            total = total + p.item()  # LINE:halt_while2_read
    else:
        for _ in range(10):  # LINE:halt_for
            h = torch.tanh(L4(h))
            p = torch.sigmoid(HALT(h) + bias).mean()
            total += p.item()  # LINE:halt_for_read
            if total >= 0.99:
                break
    return h


@pytest.mark.parametrize("kind,head,read", [("while +=", "halt_while", "halt_while_read"),
                                            ("while =", "halt_while2", "halt_while2_read"),
                                            ("for +=", "halt_for", "halt_for_read")])
def test_a_halting_loop_that_adds_up_its_reads_is_named_without_a_hedge(kind, head, read):
    """Adaptive computation time: the sum of the halting probabilities ends the loop,
    so no single read parts the iterations that went on from the last. With `+=` it
    was "the block at ..." with a hedged float; with `total = total + ...` the loop
    was named but its read hedged "maybe not the cause"."""
    x = torch.randn(2, 4)
    a, b = (_traced(halting, x, torch.tensor(bias), kind) for bias in (3.0, -1.5))
    n = (_count(a, "aten.tanh.default"), _count(b, "aten.tanh.default"))
    assert n[0] < n[1]
    [why] = torchtrace.diff(a, b).why()
    keyword = kind.split()[0]
    assert why.startswith(f"`{keyword}` at `test_diff_loop_exits.py:{line_of(head)}` ran {n[0]}\u00d7 in A, "
                          f"{n[1]}\u00d7 in B; `test_diff_loop_exits.py:{line_of(read)}` read "), why
    assert "maybe not the cause" not in why


def capped(x: torch.Tensor, cap: int) -> torch.Tensor:
    n = 0
    while n < cap and x.norm() > 1.0:  # LINE:capped_while
        x = L4(x) * 0.5
        n += 1
    return x


def test_a_while_left_by_its_python_test_on_one_side_is_counted():
    """`while n < cap and x.norm() > 1:` left by `n < cap` after 2 iterations in A
    (no read there) and by the norm after 3 in B. It was "no tensor read differs
    before it: decided by Python state → 9 ops only in B", with no loop named: A's
    last read (True) was taken for its exit."""
    x = torch.full((2, 4), 10.0)
    a, b = _traced(capped, x, 2), _traced(capped, x, 10)
    n = (_count(a, "aten.addmm.default"), _count(b, "aten.addmm.default"))
    assert n == (2, 3)
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith(f"`while` at `test_diff_loop_exits.py:{line_of('capped_while')}` ran 2\u00d7 in A, 3\u00d7 "
                          "in B (no tensor read differs: decided by Python state) \u2192 "), why


def halting_per_layer(x: torch.Tensor, biases) -> torch.Tensor:
    h = x
    for bias in biases:
        total = 0.0
        while total < 0.99:
            h = torch.tanh(L4(h))
            p = torch.sigmoid(HALT(h) + bias).mean()
            total += p.item()  # LINE:layer_read
    return h


def test_halting_loops_inside_another_loop_keep_the_hedge():
    """(A review.) The totals were summed across the runs of the inner `while`
    (Python sets `total = 0.0` before each), and a read that ended nothing was
    named unhedged."""
    x = torch.randn(2, 4)
    a = _traced(halting_per_layer, x, [torch.tensor(3.0), torch.tensor(3.0)])
    b = _traced(halting_per_layer, x, [torch.tensor(-1.5), torch.tensor(3.0)])
    [why] = torchtrace.diff(a, b).why()
    assert "maybe not the cause" in why, why


def greedy(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    for t in range(8):  # LINE:greedy_for
        x = L4(x)
        if tokens[t].item() == 7:  # LINE:greedy_read
            break
    return x


def test_a_decode_whose_tokens_differ_before_the_end_token_is_counted_whole():
    """(A review.) A reads 5, 3, 7 (the end), B 5, 2, 9, 4, 7: it said "ran 2× in A,
    4× in B": the first, equal, iteration was not counted."""
    x = torch.randn(1, 4)
    a = _traced(greedy, x, torch.tensor([5, 3, 7, 0, 0, 0, 0, 0]))
    b = _traced(greedy, x, torch.tensor([5, 2, 9, 4, 7, 0, 0, 0]))
    assert (_count(a, "aten.addmm.default"), _count(b, "aten.addmm.default")) == (3, 5)
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith(f"`for` at `test_diff_loop_exits.py:{line_of('greedy_for')}` ran 3\u00d7 in A, 5\u00d7 in B; "
                          f"`test_diff_loop_exits.py:{line_of('greedy_read')}` read 3 in A, 2 in B \u2192 "), why
