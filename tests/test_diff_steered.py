"""torchtrace.diff: reads that steer ops both passes ran (other args, other
tensors read), counts read up front, a flag a helper returned, and the
parameters and buffers a type change names. (A 2026-11-27 audit of diff
explanations found each of these said wrongly or not at all.)"""
from __future__ import annotations

import torch
import torch.nn as nn

import torchtrace
import zoo


def line_of(marker: str) -> int:
    return zoo.marked_line(__file__, marker)


def _pass(model: nn.Module, *args: object) -> torchtrace.Graph:
    with torch.no_grad(), torchtrace.trace(model) as t:
        model(*args)
    return t.graph


def _both(model: nn.Module, set_a, set_b, *args: object):
    set_a()
    a = _pass(model, *args)
    set_b()
    return a, _pass(model, *args)


class Arms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:  # LINE:arms
            h = self.c(h) * 2
        else:
            h = self.c(h) * 3
        return h


def _bias(lin: nn.Linear, value: float):
    def set_() -> None:
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.fill_(value)
    return set_


def test_an_if_whose_arms_call_a_module_then_scale_names_its_read():
    """`h = self.c(h) * 2` against `* 3`: the module's ops ran in both at other
    lines, and the `mul` with other args is the arm's, decided by the read.
    Before, the read was only among "other reads that differ"."""
    m = Arms()
    a, b = _both(m, _bias(m.a, 1.0), _bias(m.a, -1.0), torch.randn(2, 4))
    d = torchtrace.diff(a, b)
    assert d.why() == [f"`test_diff_steered.py:{line_of('arms')}` read True in A, False in B \u2192 the same ops, "
                       "from other lines, with other args (1 op changed): aten.mul.Tensor other=2 \u2192 3 (1 op)"]


class Best(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.score = nn.Linear(4, 1)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cands = [c(x) for c in self.c]
        scores = torch.stack([self.score(h).sum() for h in cands])
        best = cands[int(scores.argmax())]  # LINE:best
        return self.out(best)


def test_a_read_that_picks_which_tensor_an_op_reads_is_named_hedged_with_the_ops_that_made_them():
    """Best-of-N by an index read: the same ops, `out` reads another candidate.
    The read is the nearest that differs with the same ops since: named, hedged;
    the rewired op says which module made what it read in each pass (it said
    "inputs come from other ops", and the read was named nowhere)."""
    torch.manual_seed(0)
    m = Best()
    x = torch.randn(2, 4)

    def pick(k: int):
        def set_() -> None:
            with torch.no_grad():
                for i, c in enumerate(m.c):
                    c.bias.fill_(1.0 if i == k else -1.0)
                    c.weight.zero_()
                m.score.weight.fill_(1.0)
        return set_

    a, b = _both(m, pick(2), pick(0), x)
    d = torchtrace.diff(a, b)
    assert d.why() == [f"`test_diff_steered.py:{line_of('best')}` read 2 in A, 0 in B (both passes ran the same ops "
                       "since: the nearest read that differs, maybe not the cause); `addmm` reads what `c.2`'s "
                       "`addmm` made in A, what `c.0`'s `addmm` made in B \u2192 1 op changed (in `out`)"]
    [h] = d.hunks
    assert h.witness.steered and h.witness.weak and h.to_dict()["rewires"][0]["made"]
    assert torchtrace.diff(b, a).why()[0].endswith("`addmm` reads what `c.0`'s `addmm` made in A, what `c.2`'s "
                                                    "`addmm` made in B \u2192 1 op changed (in `out`)")


class Counted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, steps: list) -> torch.Tensor:
        ks = [int(k.item()) for k in steps]  # LINE:counts
        for k in ks:
            for _ in range(k):
                x = torch.tanh(self.cell(x))  # LINE:body
            x = x * 2
        return x


def test_loop_counts_read_up_front_name_the_read_that_gave_them():
    """`ks = [int(k.item()) ...]` then `for k in ks: for _ in range(k):` with
    counts [1, 2, 3] against [2, 2, 1]: each changed run is put down to the read
    of its own count. Before, run 1 was put down to run 3's read (3 against 1),
    with the matching one as an alternative."""
    m = Counted()
    x = torch.randn(2, 4)
    T = torch.tensor
    a, b = _pass(m, x, [T(1), T(2), T(3)]), _pass(m, x, [T(2), T(2), T(1)])
    read, body = line_of("counts"), line_of("body")
    assert torchtrace.diff(a, b).why() == [
        f"`test_diff_steered.py:{read}` read 1 in A, 2 in B; the block at `test_diff_steered.py:{body}` (3 ops) "
        "ran 1\u00d7 in A, 2\u00d7 in B \u2192 3 ops only in B (in `<root>`)",
        f"`test_diff_steered.py:{read}` read 3 in A, 1 in B; the block at `test_diff_steered.py:{body}` (3 ops) "
        "ran 3\u00d7 in A, 1\u00d7 in B \u2192 6 ops only in A (in `<root>`)"]


class Tree(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.split, self.leaf = nn.Linear(4, 8), nn.Linear(4, 4)

    def grow(self, h: torch.Tensor, d: int, thr: list) -> torch.Tensor:
        if d < 3 and h.abs().mean() > thr[d]:  # LINE:split
            left, right = self.split(h).chunk(2, -1)
            return self.grow(left, d + 1, thr) + self.grow(right, d + 1, thr)
        return self.leaf(h)

    def forward(self, x: torch.Tensor, thr: list) -> torch.Tensor:
        return self.grow(x, 0, thr)


def test_the_add_joining_recursive_calls_is_the_split_reads_not_a_loop():
    """A split once in A, at the root and both children in B: the `+` that joins
    the extra calls is the split read's, not "the block at ... ran 1x in A, 2x in
    B (no tensor read decided it)" (it ran 3x in B)."""
    torch.manual_seed(0)
    m = Tree()
    x = torch.randn(1, 4)
    d = torchtrace.diff(_pass(m, x, [0.0, 1e9, 1e9]), _pass(m, x, [0.0, 0.0, 1e9]))
    [why] = d.why()
    assert why.startswith(f"`test_diff_steered.py:{line_of('split')}` (called from ")
    assert why.endswith(" read False in A, True in B \u2192 28 ops only in B in 2 hunks (in `<root>`)")
    assert all(h.loop is None for h in d.structural_hunks)


def check(x: torch.Tensor) -> bool:
    return bool(x.mean() > 0)  # LINE:helper


class Flagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flag = check(x)
        h = self.a(x)
        if h.max() > 0.5:  # LINE:nearer
            self.seen += 1
        if flag:
            h = self.b(h)
        return h


def test_a_flag_a_helper_returned_is_the_cause_of_the_if_that_tests_it():
    """`flag = check(x)` ... `if flag:`, with a nearer read whose `if` ran no op:
    the helper's read decided the hunk, as an inline `flag = bool(...)` does. It
    named the nearer read first."""
    m = Flagged()
    xa, xb = torch.full((2, 4), 0.01), torch.full((2, 4), -0.01)
    _bias(m.a, 1.0)()
    a = _pass(m, xa)
    _bias(m.a, 0.0)()
    b = _pass(m, xb)
    assert torchtrace.diff(a, b).why() == [
        f"`test_diff_steered.py:{line_of('helper')}` read True in A, False in B \u2192 2 ops only in A (in `b`)"]


class Cached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("cache", torch.zeros(1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cache, self.a(x)])
        if self.cache.shape[0] > 2:
            h = self.b(h)
        return h


def test_one_buffer_or_parameter_whose_type_changed_is_named():
    """One buffer of its kind is named ("buffer `cache` f32[1,4] → f32[3,4]"),
    where several are counted; more input changes than are listed read "1 more
    input change" (it read "1 more input", as if B had one more)."""
    torch.manual_seed(0)
    m = Cached()
    x = torch.randn(1, 4)
    a = _pass(m, x)
    m.cache = torch.randn(3, 4)
    b = _pass(m, x)
    d = torchtrace.diff(a, b)
    assert [i.describe() for i in d.inputs] == ["buffer `cache` f32[1,4] \u2192 f32[3,4]"]
    assert "buffer `cache` f32[1,4] \u2192 f32[3,4]" in d.why()[0]

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.l(x) + 1

    two = Two()
    g32 = _pass(two, torch.randn(2, 4))
    two.double()
    g64 = _pass(two, torch.randn(2, 4, dtype=torch.float64))
    d = torchtrace.diff(g32, g64)
    assert [i.describe() for i in d.inputs] == ["input `x` f32[2,4] \u2192 f64[2,4]",
                                                "param `l.weight` f32[4,4] \u2192 f64[4,4]",
                                                "param `l.bias` f32[4] \u2192 f64[4]"]
    assert "1 more input change" in d.why()[0]


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        pos = h[h > 0]  # (a shape read: it names the hunk of changed shapes and args)
        while n > 0:
            h = h * 2
            n = n - 1
        scale = h.abs().mean().item()  # LINE:scale
        return h.sum() * scale + pos.sum()


def test_a_read_kept_by_a_hunk_whose_cause_is_another_is_still_listed():
    """Gradients accumulated into `.grad`s that existed are their own cause; the
    float read before them was kept as those hunks' witness, unsaid, and so left
    out of "other reads that differ" too: named nowhere (the changed args are
    in a hunk the shape read names)."""
    torch.manual_seed(0)
    m = Scaled()
    graphs = []
    for x, n in ((torch.randn(3, 4), torch.tensor(2)), (torch.randn(3, 4) + 2, torch.tensor(3))):
        with torchtrace.trace(m) as t:
            m(x, n).backward()
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    assert any("AccumulateGrad" in w for w in d.why())
    [other] = d.other_reads()
    assert other.startswith(f"`test_diff_steered.py:{line_of('scale')}` read ")


# -- (a review of the fixes above) reads that must not be named ------------------------------

class CountAfterIndex(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, sel: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        # (2 against 3: no op count depends on it)
        j = int(sel.argmax())  # LINE:index
        h = x[:, j:j + 1] * x
        k = int(n.item())  # LINE:count
        for _ in range(k + 1):
            h = torch.tanh(self.cell(h))
        return h


def test_a_read_whose_values_equal_the_counts_is_not_named_past_a_nearer_read():
    """An index read 2 against 3 before a loop that ran 2x against 3x (`range(k + 1)`
    with `k` read 1 against 2, nearer): the index read was named, unhedged."""
    torch.manual_seed(0)
    m = CountAfterIndex()
    x = torch.randn(2, 4)
    a = _pass(m, x, torch.tensor([0., 0., 1., 0.]), torch.tensor(1))
    b = _pass(m, x, torch.tensor([0., 0., 0., 1.]), torch.tensor(2))
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith(f"`test_diff_steered.py:{line_of('count')}` read 1 in A, 2 in B (or, read earlier, "
                          f"`test_diff_steered.py:{line_of('index')}` read 2 in A, 3 in B)")


class ConfigAfterArms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 4)
        self.double, self.temp, self.hits = True, 1.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:  # LINE:unrelated
            h = self.c(h)
        else:
            h = self.c(h)
        if h.max() > 100:  # (False in both)
            self.hits += 1
        return (h * 2 if self.double else h * 3) / self.temp


def test_args_a_python_setting_changed_are_not_put_down_to_an_unrelated_read():
    """`self.double` / `self.temp` changed between the passes, and an `if` whose arms
    both call `self.c` read differently before: neither `arm` (the ops between are
    not the changed op's statement) nor `steered` (its value reaches no line of the
    changed ops) names that read."""
    m = ConfigAfterArms()
    x = torch.randn(2, 4)
    _bias(m.a, 1.0)()
    a = _pass(m, x)
    _bias(m.a, -1.0)()
    m.double, m.temp = False, 2.0
    b = _pass(m, x)
    d = torchtrace.diff(a, b)
    assert d.why() == ["same ops, other args (2 ops changed): aten.mul.Tensor other=2 \u2192 3 (1 op); "
                       "aten.div.Tensor other=1.0 \u2192 2.0 (1 op)"]
    assert d.other_reads() == [f"`test_diff_steered.py:{line_of('unrelated')}` read True in A, False in B"]


def summary(x: torch.Tensor):
    f = bool(x.mean() > 0)  # LINE:flag
    n = int((x > 0).sum())  # (a count, logged)
    return f, n


class TwoNames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.log: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flag, n = summary(x)
        self.log.append(n)
        h = self.a(x)
        if flag:
            h = self.b(h)
        return h


def test_a_helper_returning_two_reads_names_the_bool_an_if_tests():
    """`flag, n = summary(x)` ... `if flag:`: the count read last was named, unhedged."""
    m = TwoNames()
    a, b = _pass(m, torch.tensor([[1., 1., -0.5, 0.2]])), _pass(m, torch.tensor([[-1., -1., 0.5, 0.2]]))
    assert torchtrace.diff(a, b).why() == [
        f"`test_diff_steered.py:{line_of('flag')}` read True in A, False in B \u2192 2 ops only in A (in `b`)"]


class PickParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p, self.q = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return x * (self.p if bool(k.sum() > 0) else self.q)


def test_a_rewired_op_that_reads_another_parameter_names_it():
    m = PickParam()
    x = torch.randn(2, 4)
    d = torchtrace.diff(_pass(m, x, torch.tensor([1.])), _pass(m, x, torch.tensor([-1.])))
    assert [r.describe() for h in d.hunks for r in h.rewires] == ["`mul.Tensor` reads param `p` in A, param `q` in B"]
