"""torchtrace.diff on real PyTorch models: alignment, classification, and the
witness or loop count that explains each hunk."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import pytest

import torchtrace
import zoo
from torchtrace.compare import GraphDiff
from torchtrace.errors import UsageError
from torchtrace.inputchange import InputChange
from torchtrace.typechange import TypeChange
from torchtrace.explain import read_str
from torchtrace.ir import Graph, Witness

FILE = "test_diff.py"


def line_of(marker: str) -> int:
    return zoo.marked_line(__file__, marker)


class BranchLoop(nn.Module):
    """An `if` on the input's sign, then a `while` on a tensor counter."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.pos = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
        self.neg = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        if x.sum() > 0:  # LINE:branch
            h = self.pos(h)
        else:
            h = self.neg(h)
        while k > 0:  # LINE:while
            h = h * 0.5 + 1
            k = k - 1
        return self.out(h)


class Stack(nn.Module):
    """Four layers; ``extra`` (a Python flag, no tensor read) inserts one in the middle."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
        self.extra = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.use_extra = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = torch.relu(layer(x))
            if i == 1 and self.use_extra:
                x = self.extra(x)
        return x


class Repeat(nn.Module):
    """A Python-level loop: ``times`` is a plain int, nothing reads tensor data."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.times = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        for _ in range(self.times):
            h = torch.sigmoid(h) * h
        return h.sum(-1)


record = zoo.record


@pytest.fixture(scope="module")
def model() -> BranchLoop:
    torch.manual_seed(0)
    return BranchLoop().eval()


POS, NEG = torch.ones(2, 4), -torch.ones(2, 4)


def test_identical_runs_give_an_empty_diff_and_equal_fingerprints(model):
    for train in (False, True):
        a = record(model, POS, torch.tensor(2), train=train)
        b = record(model, POS.clone(), torch.tensor(2), train=train)
        d = torchtrace.diff(a, b)
        assert d.is_empty and d.kind == "identical" and not d.hunks
        assert a.fingerprints == b.fingerprints
        assert {p.status for p in d.ops} == {"same"}
        assert d.summary() == "identical"
        assert str(d).splitlines()[2] == "identical"


def test_branch_hunk_is_explained_by_the_witness_line_and_values(model):
    a = record(model, NEG, torch.tensor(2))
    b = record(model, POS, torch.tensor(2))
    d = torchtrace.diff(a, b)
    assert d.kind == "structural" and not d.structure_equal
    [h] = d.hunks
    assert h.kind == "structural"
    assert (h.witness.line, h.witness.a.value, h.witness.b.value) == (line_of("branch"), False, True)
    assert h.witness.file == __file__
    assert {a.module_path(n.module) for n in h.only_a} == {"neg"}
    assert {b.module_path(n.module) for n in h.only_b} == {"pos.0", "pos.1", "pos.2"}
    assert [n.short_op for n in h.only_b] == ["t", "addmm", "relu", "t", "addmm"]
    assert h.loop is None and not h.changed
    assert h.explanation == (f"`{FILE}:{line_of('branch')}` read False in A, True in B "
                             "\u2192 2 ops only in A, 5 ops only in B (in `<root>`)")
    assert d.changed == 0 and d.witnesses == (h.witness,)
    text = str(d)
    assert text.index("why:") < text.index("@@")  # the explanation comes first
    assert h.explanation in text


def test_diff_b_a_mirrors_diff_a_b(model):
    a = record(model, NEG, torch.tensor(1))
    b = record(model, POS, torch.tensor(3))
    ab, ba = torchtrace.diff(a, b), torchtrace.diff(b, a)
    assert ba.to_dict() == ab.mirror().to_dict()
    assert ab.to_dict() == ba.mirror().to_dict()
    branch, loop = f"`{FILE}:{line_of('branch')}`", f"`while` at `{FILE}:{line_of('while')}`"
    assert [h.explanation for h in ab.hunks] == [
        f"{branch} read False in A, True in B \u2192 2 ops only in A, 5 ops only in B (in `<root>`)",
        f"{loop} ran 1\u00d7 in A, 3\u00d7 in B \u2192 10 ops only in B (in `<root>`)"]
    assert [h.explanation for h in ba.hunks] == [
        f"{branch} read True in A, False in B \u2192 5 ops only in A, 2 ops only in B (in `<root>`)",
        f"{loop} ran 3\u00d7 in A, 1\u00d7 in B \u2192 10 ops only in A (in `<root>`)"]
    for h, m in zip(ab.hunks, ba.hunks):
        assert [n.id for n in h.only_a] == [n.id for n in m.only_b]
        assert [n.id for n in h.only_b] == [n.id for n in m.only_a]
    assert (ab.only_a, ab.only_b) == (ba.only_b, ba.only_a)


class EarlyExit(nn.Module):
    """Stops after the first layer whose check passes: the `if` reads the same
    line again each layer, but it is a branch, not a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(4)])

    def forward(self, x):
        score = x.sum()
        for i, layer in enumerate(self.layers):  # LINE:layers
            x = torch.tanh(layer(x))
            if score > (3.0, 2.0, 1.0, -1e9)[i]:  # LINE:exit
                return x
        return x


def test_an_early_exit_is_explained_by_the_read_and_the_loop_it_ended():
    """It said "`if` at ... ran 0x in A, 3x in B"; then only the read. The `if`
    returns from the loop: the loop it ended is named, with its iterations."""
    m = EarlyExit()
    a = record(m, torch.full((1, 4), 2.0))  # exits after layer 0 (read True at once)
    b = record(m, torch.full((1, 4), 0.1))  # reads False 3 times, exits after layer 3
    [h] = torchtrace.diff(a, b).hunks
    assert (h.loop.keyword, h.loop.line, h.loop.a, h.loop.b) == ("for", line_of("layers"), 1, 4)
    assert (h.witness.line, h.witness.a.value, h.witness.b.value) == (line_of("exit"), True, False)
    assert h.explanation.startswith(f"`for` at `{FILE}:{line_of('layers')}` ran 1\u00d7 in A, 4\u00d7 in B; "
                                    f"`{FILE}:{line_of('exit')}` read True in A, False in B")


def test_a_loop_that_runs_3_vs_5_times_is_a_loop_count_difference(model):
    a = record(model, POS, torch.tensor(3))
    b = record(model, POS, torch.tensor(5))
    d = torchtrace.diff(a, b)
    [h] = d.hunks
    assert h.loop is not None and h.loop.via == "witness" and h.loop.keyword == "while"
    assert (h.loop.line, h.loop.a, h.loop.b) == (line_of("while"), 3, 5)
    # the read that differs: A's 4th read of the condition (the exit) against B's 4th
    assert (h.witness.a.value, h.witness.b.value) == (False, True)
    iteration = ["gt.Scalar", "_local_scalar_dense", "mul.Tensor", "add.Tensor", "sub.Tensor"]
    assert sorted(n.short_op for n in h.only_b) == sorted(iteration * 2)
    assert not h.only_a and d.changed == 0
    assert h.explanation == (f"`while` at `{FILE}:{line_of('while')}` ran 3\u00d7 in A, 5\u00d7 in B "
                             "\u2192 10 ops only in B (in `<root>`)")
    # every read of the loop condition is paired with a read of the same value
    assert not d.witnesses
    assert torchtrace.diff(b, a).hunks[0].loop.describe().endswith("ran 5\u00d7 in A, 3\u00d7 in B")


def test_a_loop_that_did_not_run_at_all(model):
    d = torchtrace.diff(record(model, POS, torch.tensor(0)), record(model, POS, torch.tensor(2)))
    [h] = d.hunks
    assert (h.loop.a, h.loop.b) == (0, 2) and len(h.only_b) == 10


def test_branch_and_loop_change_together_give_two_explained_hunks(model):
    d = torchtrace.diff(record(model, NEG, torch.tensor(3)), record(model, POS, torch.tensor(5)))
    assert [h.kind for h in d.hunks] == ["structural", "structural"]
    first, second = d.hunks
    assert first.witness.line == line_of("branch") and first.loop is None
    assert (second.loop.line, second.loop.a, second.loop.b) == (line_of("while"), 3, 5)
    assert d.why() == [first.explanation, second.explanation]


class LoopBranch(nn.Module):
    """A `while` on a tensor counter with an `if` on tensor data inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(4, 4)
        self.down = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, k: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        i = 0
        while k > 0:  # LINE:outer
            if flips[i] > 0:  # LINE:inner
                x = self.up(x)
            else:
                x = self.down(x)
            k = k - 1
            i += 1
        return x.sum()


def test_a_loop_that_ran_once_more_with_an_if_inside_names_both():
    m = LoopBranch()
    x = torch.ones(1, 4)
    a = record(m, x, torch.tensor(3), torch.tensor([1, 1, 1, 1]))
    b = record(m, x, torch.tensor(4), torch.tensor([1, -1, 1, 1]))  # one more iteration, and it went down
    [h] = torchtrace.diff(a, b).structural_hunks
    assert (h.loop.line, h.loop.keyword, h.loop.a, h.loop.b) == (line_of("outer"), "while", 3, 4)
    assert (h.witness.line, h.witness.a.value, h.witness.b.value) == (line_of("inner"), True, False)
    assert h.cause == (f"`while` at `{FILE}:{line_of('outer')}` ran 3\u00d7 in A, 4\u00d7 in B; "
                       f"`{FILE}:{line_of('inner')}` read True in A, False in B")
    assert "down" in {b.module_path(n.module) for n in h.only_b}
    [h] = torchtrace.diff(b, a).structural_hunks
    assert (h.loop.a, h.loop.b, h.witness.a.value) == (4, 3, False)
    # two iterations whose `if` went down instead of up: one cause, one count, two hunks
    d = torchtrace.diff(a, record(m, x, torch.tensor(2), torch.tensor([-1, -1, 1, 1])))
    inner = f"`{FILE}:{line_of('inner')}` read True in A, False in B"
    assert d.why()[0] == f"{inner} \u2192 2 hunks, each 2 ops only in A, 2 ops only in B (in `<root>`)"


ANY = zoo.marked_line(zoo.__file__, "experts_any")  # zoo.Experts' `if mask.any():`


def test_shape_reads_at_one_line_are_not_a_loop():
    m = zoo.Experts().eval()
    eye = torch.eye(3)
    d = torchtrace.diff(record(m, eye[[0, 1]]), record(m, eye[[1, 1]]))  # experts {0, 1} vs {1, 1}
    first = d.structural_hunks[0]
    assert "experts.0" in {d.a.module_path(n.module) for n in first.only_a}
    assert first.loop is None  # was "the loop at :index ran 2x in A, 0x in B"
    assert (first.witness.line, first.witness.a.value, first.witness.b.value) == (ANY, True, False)
    assert all(h.loop is None for h in d.hunks)


def test_a_loop_over_items_pairs_each_iteration_with_its_own():
    m = zoo.Experts().eval()
    eye = torch.eye(3)
    any_line = ANY
    for sa, sb in (([0, 1], [0, 2]), ([0, 1], [1, 2])):  # the experts each token is routed to
        d = torchtrace.diff(record(m, eye[sa]), record(m, eye[sb]))
        hunks = d.structural_hunks
        only_a = [e for e in (0, 1, 2) if e in sa and e not in sb]
        only_b = [e for e in (0, 1, 2) if e in sb and e not in sa]
        assert len(hunks) == len(only_a) + len(only_b), d.why()
        for h in hunks:  # each hunk: one expert's iteration, blamed on that iteration's own read
            paths = {d.a.module_path(n.module) for n in h.only_a} | {d.b.module_path(n.module) for n in h.only_b}
            [path] = paths - {""}
            e = int(path.rsplit(".", 1)[1])
            assert h.witness.line == any_line
            assert (h.witness.a.value, h.witness.b.value) == (e in sa, e in sb)
            assert bool(h.only_a) == (e in only_a) and bool(h.only_b) == (e in only_b)
            assert len(h.only_a or h.only_b) == 5  # index, t, addmm, view, index_put
        assert d.why() == [f"`zoo.py:{any_line}` read {e in sa} in A, {e in sb} in B \u2192 5 ops only in "
                           f"{'A' if e in sa else 'B'} (in `<root>`)" for e in sorted(only_a + only_b)]


class PerClass(nn.Module):
    """A Python loop over the classes ``torch.unique`` finds, indexing each."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(3, 3)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.emb(feats)
        out = []
        for c in torch.unique(labels):  # LINE:unique
            out.append(h[labels == c].mean(0))  # LINE:per-class
        return torch.stack(out).sum()


def test_a_loop_over_unique_values_is_blamed_on_the_read_before_it():
    torch.manual_seed(0)
    m, f = PerClass(), torch.randn(6, 3)
    a = record(m, f, torch.tensor([0, 0, 1, 1, 2, 2]))
    b = record(m, f, torch.tensor([0, 0, 0, 1, 1, 1]))
    [h] = torchtrace.diff(a, b).structural_hunks
    assert (h.loop.via, h.loop.a, h.loop.b, h.loop.line) == ("repeat", 3, 2, line_of("per-class"))
    # not the index read of the earlier passes (shape [2,3] in A, [3,3] in B): the unique that set the count
    assert (h.witness.line, h.witness.a.shape, h.witness.b.shape) == (line_of("unique"), (3,), (2,))
    [h] = torchtrace.diff(b, a).structural_hunks
    assert (h.witness.line, h.loop.a, h.loop.b) == (line_of("unique"), 2, 3)


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.extra = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # LINE:gate
            x = self.extra(x)
        return self.fc(x)


class Siamese(nn.Module):
    """One submodule called twice per pass."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return (self.gate(x1) - self.gate(x2)).sum()


def test_a_read_in_a_module_called_twice_says_which_call():
    torch.manual_seed(0)
    m = Siamese()
    pos, neg = torch.ones(1, 4), -torch.ones(1, 4)
    d = torchtrace.diff(record(m, pos, neg), record(m, neg, pos))
    first, second = d.hunks
    assert (first.witness.call, second.witness.call) == (("gate", 0, 0), ("gate", 1, 1))
    at = f"`{FILE}:{line_of('gate')}`"
    assert d.why() == [f"{at} (1st call of `gate`) read True in A, False in B \u2192 2 ops only in A (in `gate.extra`)",
                       f"{at} (2nd call of `gate`) read False in A, True in B \u2192 2 ops only in B (in `gate.extra`)"]
    # a module called once says nothing more
    [h] = torchtrace.diff(record(m.gate, pos), record(m.gate, neg)).hunks
    assert h.witness.call is None and h.explanation.startswith(f"{at} read True in A")


def _before_after(make: type, **change: object):
    """Graphs of a seeded ``make()`` on the same input before and after setting ``change``."""
    torch.manual_seed(0)
    model = make()
    a = record(model, torch.ones(2, 4))
    for name, value in change.items():
        setattr(model, name, value)
    return a, record(model, torch.ones(2, 4))


def test_a_python_level_loop_is_reported_as_a_repeated_block():
    a, b = _before_after(Repeat, times=4)
    [h] = torchtrace.diff(a, b).hunks
    assert h.witness is None
    assert (h.loop.via, h.loop.a, h.loop.b, h.loop.period) == ("repeat", 2, 4, 2)
    assert [n.short_op for n in h.only_b] == ["sigmoid", "mul.Tensor"] * 2
    assert "ran 2\u00d7 in A, 4\u00d7 in B" in h.explanation and "no tensor read decided it" in h.explanation


class Blocks(nn.Module):
    """``for block in self.blocks[:depth]``: each pass of the loop is a call of
    another ModuleList item, so its ops repeat under ``blocks.0``, ``blocks.1``..."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(5))
        self.depth = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[:self.depth]:
            x = x + block(x)
        return x


def test_a_loop_over_modulelist_items_is_reported_as_a_repeated_block():
    a, b = _before_after(Blocks, depth=3)
    [h] = torchtrace.diff(a, b).hunks
    assert (h.loop.via, h.loop.a, h.loop.b) == ("repeat", 2, 3), h.explanation
    assert {b.module_path(n.module) for n in h.only_b} == {"", "blocks.2.0", "blocks.2.1"}  # the add is the root's
    assert "ran 2\u00d7 in A, 3\u00d7 in B" in h.explanation
    [h] = torchtrace.diff(b, a).hunks
    assert (h.loop.a, h.loop.b) == (3, 2)


def test_an_item_read_that_steers_a_python_loop_is_named_with_the_loop():
    torch.manual_seed(0)
    m = zoo.Branchy()
    x = torch.full((2, 4), 0.5)  # sum |x| = 4 -> the int loop runs once, 2x -> twice
    d = torchtrace.diff(record(m, x), record(m, 2 * x))
    loops = [h for h in d.structural_hunks if h.loop is not None]
    assert loops, str(d)
    h = loops[-1]
    assert h.witness.line == zoo.marker_line("item") and (h.witness.a.value, h.witness.b.value) == (4.0, 8.0)
    assert (h.loop.via, h.loop.a, h.loop.b) == ("repeat", 1, 2)
    assert h.explanation.startswith(f"`zoo.py:{zoo.marker_line('item')}` read 4.0 in A, 8.0 in B; the block at")


class Logged(nn.Module):
    """A bool read on the input's sign, a logged float read, then the branch the
    bool decides and one a Python flag decides."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.extra = False
        self.log = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        positive = bool(x.sum() > 0)  # LINE:decisive
        self.log.append(h.mean().item())  # LINE:logged
        if positive:
            h = h + 1
        if self.extra:
            h = torch.tanh(h)
        return h


def test_a_float_read_is_blamed_only_when_nothing_decisive_differs():
    torch.manual_seed(0)
    m = Logged()
    a = record(m, torch.ones(2, 4))
    m.extra = True
    # same branch, other logged value: the float read is named, marked as a guess
    [h] = torchtrace.diff(a, record(m, 2 * torch.ones(2, 4))).hunks
    assert h.witness.line == line_of("logged") and h.witness.weak
    assert "(a float: the nearest read that differs, maybe not the cause)" in h.explanation
    # the bool read differs too, and nothing came of it before the float read: it explains
    # the branch after the logged value, though the float read is nearer
    [h] = torchtrace.diff(a, record(m, -torch.ones(2, 4))).hunks
    assert h.witness.line == line_of("decisive") and not h.witness.weak
    assert [n.short_op for n in h.only_a] == ["add.Tensor"] and [n.short_op for n in h.only_b] == ["tanh"]


class TwoBranches(nn.Module):
    """A branch on a bool read, then one on a float read compared in Python."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # LINE:sign
            x = x + 1
        h = self.fc(x)
        peak = h.abs().max().item()  # LINE:peak
        if peak > 1.5:
            h = torch.tanh(h)
        return h


def test_a_float_read_after_an_earlier_branch_is_blamed_for_the_next_one():
    torch.manual_seed(0)
    m = TwoBranches()
    a, b = torch.full((1, 4), -0.05), torch.full((1, 4), 2.0)
    assert m(a).abs().max() <= 1.5 < (m.fc(b + 1)).abs().max()
    d = torchtrace.diff(record(m, a), record(m, b))
    sign, peak = d.hunks
    assert (sign.witness.line, sign.witness.weak) == (line_of("sign"), False)
    assert [n.short_op for n in sign.only_b] == ["add.Tensor"]
    # the bool read's branch showed already (the add): the float read right before the tanh decides it
    # (kept in the name the `if` around the tanh tests; a float compared: still a guess)
    assert (peak.witness.line, peak.witness.weak, peak.witness.named) == (line_of("peak"), True, True)
    assert [n.short_op for n in peak.only_b] == ["tanh"]
    assert [h.witness.line for h in torchtrace.diff(record(m, b), record(m, a)).hunks] == [line_of("sign"),
                                                                                           line_of("peak")]


class Checked(nn.Module):
    """An ``assert`` on the activations, and a Python flag that raises."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        assert torch.isfinite(h).all()  # LINE:assert
        if self.fail:
            raise ValueError("stop")
        return self.out(h).relu()


def _raising(m: nn.Module, *x: torch.Tensor) -> Graph:
    with pytest.raises(Exception) as e, torchtrace.trace(m) as t:
        m(*x)  # LINE:raising
    assert t.graph.meta["error"] == e.type.__name__
    return t.graph


def test_a_pass_that_raised_is_said_first():
    torch.manual_seed(0)
    m = Checked()
    ok, bad = record(m, torch.ones(2, 4)), _raising(m, torch.full((2, 4), float("nan")))
    d = torchtrace.diff(ok, bad)
    [h] = d.hunks
    assert d.errors == ("B's pass ended with AssertionError",)
    assert d.why() == ["B's pass ended with AssertionError: the ops after the raise are missing", h.explanation]
    assert h.witness.line == line_of("assert") and (h.witness.a.value, h.witness.b.value) == (True, False)
    assert d.why(errors=False) == [h.explanation]
    assert torchtrace.diff(bad, ok).why()[0] == "A's pass ended with AssertionError: the ops after the raise are missing"
    # no read differs: the ops B never ran are explained by its exception, not by Python state
    m.fail = True
    d = torchtrace.diff(ok, _raising(m, torch.ones(2, 4)))
    [h] = d.hunks
    assert h.witness is None and h.stopped == "B's pass ended with ValueError"
    assert [n.short_op for n in h.only_a] == ["t", "addmm", "relu"]
    assert d.why() == ["B's pass ended with ValueError before them \u2192 3 ops only in A (in `<root>`)"]
    assert torchtrace.diff(d.b, ok).to_dict() == d.mirror().to_dict()


def test_every_op_after_the_raise_is_put_down_to_it():
    """The raise came after the model call: the loss (forward) and its backward
    are two hunks, and the first was put down to "Python state"."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    x = torch.randn(3, 4)
    with torchtrace.trace(m) as t:
        m(x).pow(2).mean().backward()
    with pytest.raises(AssertionError), torchtrace.trace(m) as bad:
        m(x)
        raise AssertionError("stop")
    d = torchtrace.diff(t.graph, bad.graph)
    assert len(d.hunks) == 2 and all(h.stopped == "B's pass ended with AssertionError" for h in d.hunks)
    assert d.why() == ["B's pass ended with AssertionError before them \u2192 23 ops only in A in 2 hunks "
                       "(in `<root>`)"]


def test_a_pass_an_op_ended_names_the_op_and_its_error():
    """A shape error: the failing op is recorded (meta.raised), and the diff says
    which op, where, and the error's text."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    ok = record(m, torch.ones(2, 4))
    bad = _raising(m, torch.ones(2, 5))
    d = torchtrace.diff(ok, bad)
    err = bad.meta["raised"][-1]["error"]
    assert err.startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 4x6)")
    assert d.errors == (f"B's pass ended with RuntimeError in `addmm` at `test_diff.py:{line_of('raising')}` "
                        f"({err[len('RuntimeError: '):]})",)
    assert d.why()[0] == d.errors[0] + ": the ops after the raise are missing"


class Picks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = self.a(x)[:, idx]  # LINE:picks
        return self.b(h).relu()


def test_an_op_that_raised_is_said_to_have_raised_not_to_return_less():
    """The op that raised is aligned with the one that ran: it has no outputs
    because it raised, which is no "A returns one more output" type change."""
    torch.manual_seed(0)
    m, x = Picks(), torch.randn(2, 4)
    ok = record(m, x, torch.tensor([0, 1, 2, 3]))
    bad = _raising(m, x, torch.tensor([0, 1, 2, 9]))
    d = torchtrace.diff(ok, bad)
    assert not [t for t in d.types if t.kind == "output"], d.types
    [changed] = [h for h in d.hunks if h.kind == "changed"]
    [pair] = changed.changed
    assert pair.a.short_op == "index.Tensor" and pair.raised == ("B", bad.meta["raised"][-1]["error"])
    assert changed.explanation.startswith("`index.Tensor` raised in B: IndexError: index 9 is out of bounds")
    assert "returns" not in changed.explanation and "one more" not in str(d)
    mirrored = [p for h in torchtrace.diff(bad, ok).hunks for p in h.changed]
    assert [p.raised[0] for p in mirrored] == ["A"]
    assert [p["raised"]["side"] for p in d.to_dict()["ops"] if "raised" in p] == ["B"]


class Jittered(nn.Module):
    """Cholesky of a kernel matrix; a singular one is retried with jitter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.exp(-torch.cdist(x, x) ** 2)
        if bool(k.sum() > 4.5):  # a read before the try that differs too: not what decided the fallback
            k = k * 1.0  # LINE:scaled
        try:
            chol = torch.linalg.cholesky(k)
        except torch.linalg.LinAlgError:
            chol = torch.linalg.cholesky(k + 1e-2 * torch.eye(k.shape[0]))  # LINE:jitter
        return chol.sum()


def test_ops_an_except_ran_are_put_down_to_the_op_that_raised():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    ok = record(Jittered(), x)
    singular = record(Jittered(), torch.cat([x, x[:1]]))  # a duplicate point: not positive-definite
    d = torchtrace.diff(ok, singular)
    scaled, fallback = [h for h in d.hunks if h.kind == "structural"]
    assert {n.source.line for n in scaled.only_b} == {line_of("scaled")} and scaled.witness is not None
    assert {n.source.line for n in fallback.only_b} == {line_of("jitter")} and not fallback.only_a
    assert fallback.caught is not None and fallback.caught.a.short_op == "_linalg_check_errors"
    assert fallback.witness is None
    assert fallback.explanation.startswith("`_linalg_check_errors` raised in B: _LinAlgError: linalg.cholesky:")
    assert "(caught: the program went on, down another path) \u2192 5 ops only in B" in fallback.explanation
    mirrored = [h for h in torchtrace.diff(singular, ok).hunks if h.kind == "structural"][-1]
    assert "raised in A" in mirrored.explanation and mirrored.to_dict()["caught"]["raised"]["side"] == "A"
    assert fallback.explanation in str(torchtrace.variants([ok, singular]))


class Retried(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor, fail: bool) -> torch.Tensor:
        h = self.lin(x)
        try:
            h = h.view(5, 5) if fail else h.view(2, 6)  # LINE:view
            h = h.exp()
        except RuntimeError:
            h = h.flatten(1).abs()  # LINE:handler
            h = h.exp()  # (both passes run an exp)
            h = h.sigmoid()  # LINE:handler-end
        return h.sum()


def test_every_op_an_except_ran_is_put_down_to_the_raise():
    """Ops of the `except` body after an op both passes ran are the raise's doing
    too (found by the `except` clause's lines)."""
    m, x = Retried(), torch.randn(2, 4)
    a = record(m, x, False)
    b = record(m, x, True)
    hunks = [h for h in torchtrace.diff(a, b).hunks if h.kind == "structural"]
    lines = [{n.source.line for n in h.only_b} for h in hunks]
    assert {line_of("handler"), line_of("handler-end")} <= set().union(*lines)
    assert all(h.caught is not None for h in hunks), [h.explanation for h in hunks]


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if scale.item() == 0:  # LINE:scale
            return x
        return self.fc(x) * scale


def test_a_whole_float_read_is_said_as_a_float():
    m = Scaled()
    d = torchtrace.diff(record(m, torch.ones(2, 4), torch.tensor(1.0)), record(m, torch.ones(2, 4), torch.tensor(0.0)))
    assert d.why()[0].startswith(f"`test_diff.py:{line_of('scale')}` read 1.0 in A, 0.0 in B")
    assert [read_str(Witness(value=v)) for v in (-3.0, 2.5e-7, 1e20, 0.333333333, float("inf"), 7, True)] == \
        ["-3.0", "2.5e-07", "1e+20", "0.333333", "inf", "7", "True"]


class TopK(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.fix = nn.Linear(4, 6), nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k = int(mask.sum())  # LINE:k
        h = self.enc(x)
        if (x.abs() > 5).any():  # LINE:outliers
            h = self.fix(h)
        return h.topk(k, dim=-1).values * k


def test_a_changed_argument_is_put_down_to_the_read_that_returned_its_values():
    """``topk(k)``'s k=3 -> 2 is the read of k, not the `if` read nearer to it
    (whose branch made the tensor topk reads): the read's values are the args'."""
    torch.manual_seed(0)
    m, x = TopK(), torch.randn(2, 4)
    outlier = x.clone()
    outlier[0, 0] = 9.0
    a, b = record(m, x, torch.tensor([1, 1, 1, 0])), record(m, outlier, torch.tensor([1, 1, 0, 0]))
    d = torchtrace.diff(a, b)
    branch, changed = d.hunks
    assert branch.kind == "structural" and branch.witness.line == line_of("outliers")
    assert [p.a.short_op for p in changed.changed] == ["topk", "mul.Tensor"]
    assert (changed.witness.line, changed.witness.passed) == (line_of("k"), "`topk`'s k")
    assert changed.explanation.startswith(f"`test_diff.py:{line_of('k')}` read 3 in A, 2 in B (passed on as "
                                          "`topk`'s k); size 3 \u2192 2")
    assert torchtrace.diff(b, a).hunks[-1].explanation.startswith(
        f"`test_diff.py:{line_of('k')}` read 2 in A, 3 in B (passed on as `topk`'s k); size 2 \u2192 3")


class Flags(nn.Module):
    """Two flags read up front, tested later in the other order."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.pad_fix, self.big_fix = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        has_pad = bool((~mask).any())  # LINE:has_pad
        is_big = bool(x.abs().max() > 3)  # LINE:is_big
        h = self.enc(x)
        if is_big:
            h = self.big_fix(h)
        h = torch.relu(h)
        if has_pad:
            h = self.pad_fix(h) * mask[..., None]
        return h


def test_a_read_kept_in_a_name_is_named_for_the_if_that_tests_the_name():
    torch.manual_seed(0)
    m = Flags()
    x = torch.randn(3, 4).clamp(-1, 1)
    big = x.clone()
    big[0, 0] = 10.0
    with torch.no_grad():
        d = torchtrace.diff(record(m, x, torch.ones(3, dtype=torch.bool)),
                            record(m, big, torch.tensor([True, True, False])))
    big_fix, pad_fix = d.structural_hunks
    assert (big_fix.module, big_fix.witness.line, big_fix.witness.also) == ("big_fix", line_of("is_big"), ())
    assert (pad_fix.witness.line, pad_fix.witness.weak) == (line_of("has_pad"), False)
    assert d.why() == [f"`test_diff.py:{line_of(k)}` read False in A, True in B \u2192 {n} ops only in B (in `{w}`)"
                       for k, n, w in (("is_big", 2, "big_fix"), ("has_pad", 4, "<root>"))]


def test_an_inserted_block_is_one_hunk_and_the_rest_aligns():
    torch.manual_seed(0)
    m = Stack()
    a = record(m, torch.ones(2, 4))
    m.use_extra = True
    b = record(m, torch.ones(2, 4))
    d = torchtrace.diff(a, b)
    [h] = d.hunks
    assert not h.only_a and [n.short_op for n in h.only_b] == ["t", "addmm", "tanh"]
    assert {b.module_path(n.module) for n in h.only_b} == {"extra.0", "extra.1"}
    assert h.module == "extra"
    assert h.witness is None and h.loop is None
    assert h.explanation.startswith("no tensor read differs before it")
    assert d.only_b == 3 and d.changed == 0 and d.ops[-1].status == "same"
    assert sum(p.status == "same" for p in d.ops) == len(a.nodes)
    removed = torchtrace.diff(b, a)
    assert [n.id for n in removed.hunks[0].only_a] == [n.id for n in h.only_b]


def test_a_different_batch_size_is_a_shapes_only_diff(model):
    d = torchtrace.diff(record(model, torch.ones(2, 4), torch.tensor(1)),
                        record(model, torch.ones(3, 4), torch.tensor(1)))
    assert d.kind == "shapes" and d.structure_equal and not d.shapes_equal
    assert not d.structural_hunks and d.changed > 0
    assert TypeChange("size", 2, 3, d.types[0].count) == d.types[0]
    assert d.inputs == (InputChange("x", "f32[2,4]", "f32[3,4]"),)
    assert all(set(p.what) <= {"shape", "args"} for p in d.ops if p.status == "changed")
    assert d.why()[0].startswith(f"same ops, other shapes ({d.changed} ops changed): input `x` f32[2,4] \u2192 "
                                 "f32[3,4]; size 2 \u2192 3 in")
    assert d.summary().startswith("same structure, shapes differ")


def test_a_data_dependent_shape_explains_a_shapes_only_diff():
    class Picker(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            idx = (x > 0).nonzero()  # LINE:nonzero
            return self.fc(idx.float()).sum()

    m = Picker()
    d = torchtrace.diff(record(m, torch.tensor([[1.0, -1.0], [1.0, 1.0]])),
                        record(m, torch.tensor([[1.0, -1.0], [-1.0, -1.0]])))
    assert d.kind == "shapes" and not d.inputs
    [h] = d.changed_hunks
    assert (h.witness.line, h.witness.a.shape, h.witness.b.shape) == (line_of("nonzero"), (3, 2), (1, 2))
    assert h.explanation.startswith(f"`{FILE}:{line_of('nonzero')}` read shape [3,2] in A, shape [1,2] in B; "
                                    "size 3 \u2192 1 in")
    assert "read shape [3,2] in A, shape [1,2] in B; size 3" in d.why()[0]


def test_a_different_dtype_is_reported_as_a_dtype_change():
    torch.manual_seed(0)
    m = Repeat()
    a = record(m, torch.ones(2, 4))
    b = record(m.double(), torch.ones(2, 4, dtype=torch.float64))
    d = torchtrace.diff(a, b)
    assert d.kind == "shapes"
    assert d.types[0].kind == "dtype" and (d.types[0].a, d.types[0].b) == ("float32", "float64")
    assert "f32 \u2192 f64 in" in d.types[0].describe()
    assert all("dtype" in p.what for p in d.ops if p.status == "changed")


class ByBatch(nn.Module):
    """``if x.shape[0] > 4`` and ``for _ in range(x.shape[1])``: Python tests
    the input's type, no tensor data is read."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.big = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x[:, :4])
        if x.shape[0] > 4:
            h = self.big(h)
        for _ in range(x.shape[1] - 3):
            h = torch.sigmoid(h) * h
        return h.sum()


def test_a_branch_on_the_input_shape_names_the_input_change():
    torch.manual_seed(0)
    m = ByBatch().eval()
    d = torchtrace.diff(record(m, torch.ones(2, 4)), record(m, torch.ones(8, 4)))
    [h] = d.structural_hunks
    assert h.witness is None and h.loop is None and h.inputs == d.inputs
    at = f"the `if` at `test_diff.py:{h.only_b[0].source.line - 1}` tests a shape"
    assert h.cause == f"{at}; input `x` f32[2,4] \u2192 f32[8,4] (Python saw another shape or dtype)"
    assert d.why() == [f"{h.cause} \u2192 5 ops only in B (in `big`)"]
    assert torchtrace.diff(record(m, torch.ones(8, 4)), record(m, torch.ones(2, 4))).why() == [
        f"{at}; input `x` f32[8,4] \u2192 f32[2,4] (Python saw another shape or dtype) \u2192 5 ops only in A "
        "(in `big`)"]
    # a Python loop whose count comes from the shape: the block count, and the input
    [h] = torchtrace.diff(record(m, torch.ones(2, 5)), record(m, torch.ones(2, 7))).structural_hunks
    assert (h.loop.via, h.loop.a, h.loop.b) == ("repeat", 2, 4)
    assert h.cause.endswith("ran 2\u00d7 in A, 4\u00d7 in B (no tensor read decided it; input `x` f32[2,5] "
                            "\u2192 f32[2,7]: Python saw another shape or dtype)")


def test_a_python_flag_with_the_same_inputs_is_still_python_state():
    torch.manual_seed(0)
    m = Stack()
    a = record(m, torch.ones(2, 4))
    m.use_extra = True
    [h] = torchtrace.diff(a, record(m, torch.ones(2, 4))).hunks
    assert not h.inputs and "decided by Python state" in h.cause


def test_swapped_inputs_are_a_wiring_change():
    class Sub(nn.Module):
        swap = False

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (y - x if self.swap else x - y) * 2

    m = Sub()
    a = record(m, torch.ones(3), torch.zeros(3))
    m.swap = True
    b = record(m, torch.ones(3), torch.zeros(3))
    d = torchtrace.diff(a, b)
    assert a.fingerprints["structure"] != b.fingerprints["structure"]
    assert d.kind == "structural" and not d.structural_hunks
    [h] = d.hunks
    assert [p.what for p in h.changed] == [("wiring",)] and h.changed[0].a.short_op == "sub.Tensor"
    assert h.explanation == "`sub.Tensor` reads `x`, `y` in A, `y`, `x` in B \u2192 1 op changed (in `<root>`)"
    assert d.why() == [h.explanation]


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return (self.fc(x1) - self.fc(x2)).pow(2).sum()


def test_one_tensor_passed_as_two_arguments_is_explained():
    m, x = Pair(), torch.ones(1, 4)
    a, b = record(m, x, x), record(m, x, x.clone())
    d = torchtrace.diff(a, b)
    assert d.kind == "structural" and not d.structural_hunks and not d.is_empty
    assert d.summary() == "structure differs: same ops, other dataflow: 1 op changed"
    why = ("A passed one tensor as both `x1` and `x2`, B passed two: `addmm` reads `x1` in A, `x2` in B "
           "\u2192 1 op changed (in `fc`)")
    assert d.why() == [why]
    assert torchtrace.diff(b, a).why() == [
        "B passed one tensor as both `x1` and `x2`, A passed two: `addmm` reads `x2` in A, `x1` in B "
        "\u2192 1 op changed (in `fc`)"]
    assert torchtrace.variants([a, b])[1].why == why


class Tree(nn.Module):
    """A recursive net over a nested tuple of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.leaf = nn.Linear(4, 4)
        self.comb = nn.Linear(8, 4)

    def node(self, t):
        if isinstance(t, torch.Tensor):
            return torch.tanh(self.leaf(t))
        left, right = t
        return torch.tanh(self.comb(torch.cat([self.node(left), self.node(right)], -1)))

    def forward(self, tree):
        return self.node(tree)


def test_inputs_nested_otherwise_are_not_one_tensor_passed_twice():
    """A's input `tree[0][1]` is B's `tree[0][0][1]`'s place: the names differ
    because the nesting does, and A passed no tensor twice."""
    m, xs = Tree(), [torch.randn(1, 4) for _ in range(4)]
    a = record(m, ((xs[0], xs[1]), xs[2]))
    b = record(m, (((xs[0], xs[1]), xs[2]), xs[3]))
    d = torchtrace.diff(a, b)
    rewired = [r for h in d.changed_hunks for r in h.rewires]
    assert rewired and all(r.shared is None for r in rewired)
    assert not any("passed one tensor as both" in w for w in d.why())


class FlagList(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.alt = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x, flags):
        for f in flags:
            if f.item():
                x = self.alt(x)
            x = torch.tanh(self.lin(x))
        return x


def test_a_longer_list_of_inputs_is_not_one_tensor_passed_twice():
    """3 flags in A, 4 in B: "A passed one tensor as both `flags[2]` and
    `flags[3]`" -- A has no `flags[3]`, and its three flags are three tensors."""
    torch.manual_seed(0)
    m, x = FlagList(), torch.randn(1, 3)
    a, b = (record(m, x, [torch.tensor(v) for v in flags]) for flags in ([0, 0, 0], [0, 1, 0, 0]))
    d = torchtrace.diff(a, b)
    rewired = [r for h in d.changed_hunks for r in h.rewires]
    assert ("_local_scalar_dense", ("flags[2]",), ("flags[3]",)) in [(r.op, r.a, r.b) for r in rewired]
    assert all(r.shared is None for r in rewired) and "passed one tensor as both" not in str(d)
    same = torch.tensor(0)  # (a list that holds one tensor twice: said, from the pass's own record)
    a, b = (record(m, x, flags) for flags in ([same, same, same], [same, torch.tensor(0), same]))
    assert a.meta["input_aliases"] == {"flags[1]": "flags[0]", "flags[2]": "flags[0]"}
    assert {r.shared for h in torchtrace.diff(a, b).changed_hunks for r in h.rewires} == {"A"}
    pair, u, v = Pair(), torch.ones(1, 4), torch.zeros(1, 4)
    with torchtrace.trace(pair) as t:  # (a review) two calls, each with its own tensors: no alias
        pair(u, v)
        pair(v, u)
    assert t.graph.meta["input_aliases"] == {}


def test_a_witness_that_read_other_data_without_effect_keeps_the_diff_empty():
    class Same(nn.Module):
        positive = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.positive = bool(x.sum() > 0)  # LINE:noop
            return x * 2

    m = Same()
    d = torchtrace.diff(record(m, torch.ones(3)), record(m, -torch.ones(3)))
    assert d.is_empty and d.kind == "identical"
    [w] = d.witnesses
    assert (w.line, w.a.value, w.b.value) == (line_of("noop"), True, False)
    assert d.summary() == "identical (1 witness read other data)"
    assert f"other reads that differ: `{FILE}:{line_of('noop')}` read True in A, False in B" in str(d)


def test_bookkeeping_ops_do_not_create_noise(model):
    a = record(model, POS, torch.tensor(1), train=True)
    internal = [n for n in a.nodes if "autograd_internal" in n.tags]
    assert internal, "expected autograd bookkeeping (detach) in a train-mode graph"
    used = {v for n in a.nodes for v in n.inputs} | set(a.outputs)
    assert not any(v in used for n in internal for v in n.outputs)
    b = Graph(meta=a.meta, modules=a.modules, values=a.values,
              nodes=tuple(n for n in a.nodes if n not in internal), outputs=a.outputs)
    assert b.fingerprints == a.fingerprints
    d = torchtrace.diff(a, b)
    assert d.is_empty and d.ignored == (len(internal), 0)


def test_code_edited_between_runs_pairs_ops_at_other_lines(model):
    a = record(model, POS, torch.tensor(1))
    shifted = tuple(n if n.source is None else
                    type(n)(**{**{f: getattr(n, f) for f in n.__slots__},
                               "source": type(n.source)(n.source.file, n.source.line + 3, n.source.function)})
                    for n in a.nodes)
    b = Graph(meta=a.meta, modules=a.modules, values=a.values, nodes=shifted, outputs=a.outputs)
    d = torchtrace.diff(a, b)
    assert d.is_empty and d.moved == len(a.nodes)
    assert d.summary() == f"identical ({len(a.nodes)} ops at other source lines)"


def test_gpt2_prefill_vs_decode_is_a_structural_diff(gpt2_kv_graphs):
    prefill, decode = gpt2_kv_graphs[0], gpt2_kv_graphs[1]
    d = torchtrace.diff(prefill, decode)
    assert d.kind == "structural" and not d.structure_equal
    assert d.structural_hunks and all(h.module.startswith("transformer.h.") for h in d.structural_hunks)
    assert d.only_a > 0 and d.changed > 0
    assert any(t.kind == "size" and (t.a, t.b) == (8, 1) for t in d.types)
    assert InputChange("input_ids", "i64[1,8]", "i64[1,1]") in d.inputs
    # prefill runs causal attention, decode attends to the whole cache
    assert any(x.key == "is_causal" and x.a is True for x in d.args)
    assert torchtrace.diff(decode, prefill).to_dict() == d.mirror().to_dict()


def test_gpt2_decode_steps_at_different_cache_lengths_differ_only_in_shapes(gpt2_kv_graphs):
    d1, d2, d3 = gpt2_kv_graphs[1:]
    for a, b, length in ((d1, d2, 9), (d2, d3, 10)):
        d = torchtrace.diff(a, b)
        assert d.kind == "shapes" and d.structure_equal and not d.shapes_equal
        assert not d.structural_hunks and not d.only_a and not d.only_b
        assert TypeChange("size", length, length + 1, 4) in d.types  # the cat of k and v, 2 layers
        # the cache reaches the pass inside a Cache object: its tensors are inputs named by their path
        names = [f"{k}.layers[{i}].{kv}" for i in range(2) for kv in ("keys", "values")
                 for k in ("cache", "past_key_values")]
        got = [i for i in d.inputs if i.name in names]
        assert [(i.a, i.b, i.role) for i in got] == [(f"f32[1,2,{length - 1},16]", f"f32[1,2,{length},16]", "input")] * 4
        assert all(set(p.what) <= {"shape", "args"} for p in d.ops if p.status == "changed")


def test_train_and_eval_without_dropout_are_identical_and_the_summary_says_so():
    """(An audit.) A model with no dropout or BatchNorm runs the same ops in train() and
    eval(): "identical", with nothing said of the modes."""
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(2, 4)
    graphs = []
    for train in (True, False):
        m.train(train)
        with torchtrace.trace(m) as t:
            m(x)
        graphs.append(t.graph)
    assert torchtrace.diff(*graphs).summary() == "identical (modules in training mode in A, eval mode in B)"
    assert torchtrace.diff(graphs[1], graphs[0]).summary() == \
        "identical (modules in training mode in B, eval mode in A)"
    assert torchtrace.diff(graphs[1], graphs[1]).summary() == "identical"
    modes = []
    for linear, relu in ((True, False), (False, True)):  # (the Linear in one mode, the ReLU in the other)
        m[0].train(linear)
        m[1].train(relu)
        with torchtrace.trace(m) as t:
            m(x)
        modes.append(t.graph)
    assert "modules in training mode in A, eval mode in B)" in torchtrace.diff(modes[0], graphs[1]).summary()
    assert "modules in other training modes)" in torchtrace.diff(*modes).summary()


def test_grad_modes_give_the_same_ops_and_the_summary_says_so():
    """train, no_grad and inference_mode record the same ops: identical, and the
    summary names the grad modes (the autograd graph is what differs)."""
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(2, 4)
    graphs = []
    for mode in (torch.enable_grad, torch.no_grad):
        with mode(), torchtrace.trace(m) as t:
            m(x)
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    assert d.is_empty and d.summary() == "identical (grad mode train in A, no_grad in B)"
    assert torchtrace.diff(graphs[0], graphs[0]).summary() == "identical"
    with torchtrace.trace(m) as t:  # a training pass against the validation pass: said first
        m(x).sum().backward()
    d = torchtrace.diff(t.graph, graphs[1])
    assert d.why()[0] == "grad mode train in A, no_grad in B: backward and optimizer ops run only under train"


def test_diff_accepts_saved_files_and_dicts(model, tmp_path):
    a = record(model, NEG, torch.tensor(1))
    b = record(model, POS, torch.tensor(1))
    pa = torchtrace.save(a, tmp_path / "a.json")
    expected = torchtrace.diff(a, b).to_dict()
    assert torchtrace.diff(pa, b.to_dict()).to_dict() == expected
    assert torchtrace.diff(str(pa), b).to_dict() == expected
    assert isinstance(torchtrace.diff(a, b), torchtrace.GraphDiff) and torchtrace.GraphDiff is GraphDiff
    with pytest.raises(UsageError, match="diff\\(\\) got int"):
        torchtrace.diff(a, 3)


def test_the_diff_is_deterministic(model):
    a = record(model, NEG, torch.tensor(1))
    b = record(model, POS, torch.tensor(4))
    assert str(torchtrace.diff(a, b)) == str(torchtrace.diff(a, b))
    assert torchtrace.diff(a, b).to_dict() == torchtrace.diff(Graph.from_dict(a.to_dict()), b).to_dict()


def test_alignment_is_an_optimal_lcs_and_stays_fast_on_long_loops():
    import random
    import time

    from torchtrace.align import align, lcs

    def lcs_length(a, b):  # the textbook table, as the oracle
        row = [0] * (len(b) + 1)
        for x in a:
            prev, row = row, [0]
            for j, y in enumerate(b):
                row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        return row[-1]

    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randint(0, 3) for _ in range(rng.randint(0, 150))]
        b = [rng.randint(0, 3) for _ in range(rng.randint(0, 150))]
        pairs = lcs(a, b)
        assert len(pairs) == lcs_length(a, b)
        assert all(a[i] == b[j] for i, j in pairs)
        assert all(p < q for (p, _), (q, _) in zip(pairs, pairs[1:]))
        assert all(p < q for (_, p), (_, q) in zip(pairs, pairs[1:]))
    # a loop body that gained an op, 2000 iterations against 1500: quadratic in difflib
    start = time.perf_counter()
    pairs = align(["x", "y", "z"] * 2000, ["x", "y", "w", "z"] * 1500)
    assert time.perf_counter() - start < 5
    assert sum(i is not None and j is not None for i, j in pairs) == 4500


def test_steps_whose_floats_differ_are_an_args_difference():
    """Adam's bias correction is a float argument that changes every step: the
    shapes fingerprint differs, and the diff says args, not shapes."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = torch.randn(3, 4)
    m(x).pow(2).mean().backward()
    opt.step()  # the first step makes the optimizer's state: another structure
    graphs = []
    for _ in range(2):
        with torchtrace.trace(m) as t:
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    assert d.kind == "shapes" and not d.types and d.args
    assert d.summary().startswith("same structure, args differ:")
    assert d.why()[0].startswith("same ops, other args (")



class ThreeArgs(nn.Module):
    def forward(self, x: torch.Tensor, slope: float, e: int, top: float) -> torch.Tensor:
        return torch.clamp(F.leaky_relu(x, slope).pow(e), max=top)


def test_an_args_summary_lists_changes_in_the_order_they_ran_and_counts_the_rest():
    """Three ops with other args: the summary and the why named two, sorted by
    op name (clamp before leaky_relu), and said nothing of the third."""
    m, x = ThreeArgs(), torch.randn(3, 4)
    a, b = (record(m, x, *args) for args in ((0.1, 2, 1.0), (0.2, 3, 2.0)))
    d = torchtrace.diff(a, b)
    said = "aten.leaky_relu negative_slope=0.1 \u2192 0.2 (1 op); aten.pow.Tensor_Scalar exponent=2 \u2192 3 (1 op); " \
           "1 more arg change"
    assert d.summary() == f"same structure, args differ: 3 ops changed ({said})"
    assert d.why() == [f"same ops, other args (3 ops changed): {said}"]
    assert [x.op for x in d.args] == ["aten.leaky_relu.default", "aten.pow.Tensor_Scalar", "aten.clamp.default"]


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_pass_of_no_op_with_another_input_shape_says_which_input():
    """An identity called with f32[2] and f32[3]: "0 ops changed ()" and "the
    returned values differ"; it is the input that changed."""
    a, b = (record(Identity(), torch.randn(n)) for n in (2, 3))
    d = torchtrace.diff(a, b)
    assert d.summary() == "same structure, shapes differ: 0 ops changed (input `x` f32[2] \u2192 f32[3])"
    assert "returned values differ" not in str(d)


def test_a_pass_of_no_op_with_another_input_dtype_says_dtypes():
    """(A review.) f32[3] against f64[3] read "shapes differ"."""
    a, b = (record(Identity(), torch.zeros(3, dtype=dt)) for dt in (torch.float32, torch.float64))
    d = torchtrace.diff(a, b)
    assert d.summary() == "same structure, dtypes differ: 0 ops changed (input `x` f32[3] \u2192 f64[3])"
    assert d.why() == ["same ops, other dtypes (0 ops changed): input `x` f32[3] \u2192 f64[3]"]
