"""torchtrace.diff: causes that are not a tensor read before the hunk --
autograd state (a .grad that existed), recursion, nested loops."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import torchtrace
import zoo
from zoo import record
from torchtrace.ir import Graph


def line_of(marker: str) -> int:
    return zoo.marked_line(__file__, marker)


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


class Tree(nn.Module):
    """Splits its rows in two while they are large: the recursion's shape is data-dependent."""

    def __init__(self) -> None:
        super().__init__()
        self.leaf = nn.Linear(2, 2)
        self.merge = nn.Linear(4, 2)

    def node(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 or x.abs().sum() < 3:  # LINE:stop
            return self.leaf(x).sum(0, keepdim=True)
        half = x.shape[0] // 2
        return self.merge(torch.cat([self.node(x[:half]), self.node(x[half:])], -1))  # LINE:merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.node(x)


_record = zoo.record


def test_recursion_that_ran_a_block_as_often_is_no_loop_count():
    torch.manual_seed(0)
    m = Tree()
    right, left = torch.full((4, 2), 0.1), torch.full((4, 2), 0.1)
    right[3], left[0] = 5.0, 5.0  # the right half splits again; the left one
    a, b = _record(m, right), _record(m, left)
    merges = [sum(g.module_path(n.module) == "merge" and n.short_op == "addmm" for n in g.nodes) for g in (a, b)]
    assert merges == [2, 2]  # both merged twice: in A one after the other, in B apart
    d = torchtrace.diff(a, b)
    assert d.structural_hunks and not d.loops
    stop = f"`test_diff_causes.py:{line_of('stop')}`"
    assert all(h.cause.startswith(stop) for h in d.structural_hunks)
    # a block that did run more often is still one
    flat = _record(m, torch.full((4, 2), 0.1))
    [loop] = torchtrace.diff(flat, a).loops
    assert (loop.line, loop.a, loop.b, loop.via) == (line_of("merge"), 0, 2, "repeat")


class PerLayer(nn.Module):
    """A `while` inside a `for`: each layer runs as many times as its budget says."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(2, 2, bias=False) for _ in range(2))

    def forward(self, x: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            n = budget[i]
            while n > 0:  # LINE:inner
                x = layer(x)
                n = n - 1
        return x


def test_a_nested_loop_names_the_run_whose_count_changed():
    m, x = PerLayer(), torch.ones(1, 2)
    a, b = _record(m, x, torch.tensor([2, 1])), _record(m, x, torch.tensor([1, 2]))
    d = torchtrace.diff(a, b)
    inner = f"`while` at `test_diff_causes.py:{line_of('inner')}`"
    assert [h.cause for h in d.structural_hunks] == [f"{inner} ran 2\u00d7 in A, 1\u00d7 in B (the 1st of its 2 runs)",
                                                     f"{inner} ran 1\u00d7 in A, 2\u00d7 in B (the 2nd of its 2 runs)"]
    assert [(loop.a, loop.b, loop.run) for loop in d.loops] == [(2, 1, (0, 2)), (1, 2, (1, 2))]
    assert [(loop.a, loop.b, loop.run) for loop in torchtrace.diff(b, a).loops] == [(1, 2, (0, 2)), (2, 1, (1, 2))]


class Blocks(nn.Module):
    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = checkpoint(b, x, use_reentrant=False) if self.checkpointed else b(x)
        return x


def test_activation_checkpointing_is_said_to_be_that_in_the_recomputed_modules():
    torch.manual_seed(0)
    plain = Blocks(False)
    ckpt = Blocks(True)
    ckpt.load_state_dict(plain.state_dict())
    graphs = []
    for m in (plain, ckpt):
        with torchtrace.trace(m) as t:
            m(torch.ones(2, 4, requires_grad=True)).sum().backward()
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    assert {n.phase for h in d.hunks for n in h.only_b} == {"recompute"}
    assert [h.module for h in d.hunks] == ["blocks.1", "blocks.0"]  # backward's order; no hunk of rewired ops
    assert d.why() == ["activation checkpointing in B recomputed the forward during backward (phase recompute; "
                       f"backward reads the recomputed tensors) \u2192 2 hunks, each {len(d.hunks[0].only_b)} ops "
                       "only in B (in `blocks.1`, `blocks.0`)"]


def _gate_open(h: torch.Tensor) -> bool:
    return bool(h.mean() > 0)  # LINE:gate


class TwoGates(nn.Module):
    """One helper reads the data at two call sites."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if _gate_open(h):  # LINE:first-gate
            h = torch.relu(h)
        h = self.b(h)
        if _gate_open(h):  # LINE:second-gate
            h = torch.tanh(h)
        return h


def test_a_helper_read_from_two_call_sites_names_the_call_site_and_is_no_loop(tmp_path):
    """The helper's line read twice is not a loop that ran once more: each read
    is told apart by the line that called the helper, and `why` names it."""
    torch.manual_seed(0)
    m = TwoGates()
    graphs = {}
    for _ in range(60):
        with torchtrace.trace(m) as t:
            m(torch.randn(2, 4))
        graphs.setdefault(tuple(w.value for w in (n.witness for n in t.graph.nodes) if w is not None), t.graph)
    a, b = graphs[(True, True)], graphs[(True, False)]
    reads = [n.witness for n in a.nodes if n.witness is not None]
    assert [(w.called_from[0].line, w.called_from[0].function) for w in reads] == [
        (line_of("first-gate"), "TwoGates.forward"), (line_of("second-gate"), "TwoGates.forward")]
    assert all(len(w.called_from) == 1 for w in reads)  # forward was called by Module.__call__: no caller
    gate, second = line_of("gate"), line_of("second-gate")
    assert torchtrace.diff(a, b).why() == [
        f"`test_diff_causes.py:{gate}` (called from `test_diff_causes.py:{second}`) read True in A, False in B "
        "\u2192 1 op only in A (in `<root>`)"]
    torchtrace.save(a, tmp_path / "a.json")
    back = torchtrace.load(tmp_path / "a.json")
    assert [n.witness for n in back.nodes if n.witness is not None] == reads
    assert torchtrace.diff(back, b).why() == torchtrace.diff(a, b).why()


def test_a_loop_explanation_never_gives_equal_counts():
    """The second backward of `for _ in range(n): net(x).sum().backward()` splits
    into several hunks; one was put down to "the block ... ran 1x in A, 1x in B"."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(6, 4)

    def step(n: int) -> Graph:
        net.zero_grad(set_to_none=True)
        with torchtrace.trace(net) as t:
            for _ in range(n):
                net(x).sum().backward()
        return t.graph

    d = torchtrace.diff(step(1), step(2))
    assert d.why() and not d.structure_equal
    for h in d.hunks:
        if h.loop is not None:
            assert h.loop.a != h.loop.b, h.loop.describe()


class Picks(nn.Module):
    """An `if` picks a Linear; a boolean mask read after it differs too."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x) if x.sum() > 0 else self.b(x)  # LINE:pick
        pos = h[h > 0]  # LINE:mask
        return h.sum() + pos.sum()


def test_a_backward_hunk_takes_the_cause_of_the_forward_ops_it_differentiates():
    """The backward of `a` against that of `b` was put down to the mask read just
    before backward (a mask cannot pick a Linear)."""
    m = Picks()
    graphs = []
    for sign in (1, -1):
        torch.manual_seed(0)
        with torchtrace.trace(m) as t:
            m(torch.rand(3, 4) * sign).backward()
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    pick = f"`test_diff_causes.py:{line_of('pick')}` read True in A, False in B"
    backward = [h for h in d.structural_hunks if all(n.phase == "backward" for n in (*h.only_a, *h.only_b))]
    assert backward and all(h.cause == pick and h.backward_of is not None for h in backward)
    assert {n.module and graphs[0].module(n.module).path for n in backward[0].only_a} == {"a"}
    assert [w.split(" \u2192 ")[0] for w in d.why()] == [pick, pick]
    assert "their backward: " in d.why()[1]
    assert torchtrace.diff(graphs[1], graphs[0]).why()[1].startswith(
        pick.replace("True in A, False in B", "False in A, True in B"))


def test_a_pass_cut_off_at_max_ops_says_so_in_diff_and_views():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 4)

    def record(**opts: object) -> object:
        with torchtrace.trace(m, **opts) as t:
            m(x)  # (one line for both passes)
        return t

    with pytest.warns(RuntimeWarning, match="max_ops=2"):
        t = record(max_ops=2)
    full = record()
    cut = "A's pass was cut off after 2 ops (max_ops)"
    d = torchtrace.diff(t.graph, full.graph)
    assert d.why()[0] == f"{cut}: the ops after it were not recorded"
    assert d.why()[1].startswith(f"{cut} before them \u2192 ")
    assert torchtrace.diff(full.graph, t.graph).why()[0].startswith("B's pass was cut off after 2 ops")
    assert "TRUNCATED: recording stopped after 2 ops" in torchtrace.render(t.graph, "text")
    assert "truncated: recording stopped after 2 ops" in torchtrace.render(t.graph, "terminal")
    assert "TRUNCATED" not in torchtrace.render(full.graph, "text")
    exact = record(max_ops=len(full.graph.nodes))  # room for every op: nothing was cut off
    assert not exact.graph.meta["truncated"] and len(exact.graph.nodes) == len(full.graph.nodes)


class Repeats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        for _ in range(int(n.item())):
            x = self.a(x)
        return self.b(x)


def test_their_backward_only_for_backward_ops_of_that_forward_hunk_on_its_side():
    """A backward hunk takes a forward hunk's cause only when every op of it is
    on the same side and differentiates ops of that hunk: with `a.bias` frozen
    in B, A's bias-gradient ops are not the backward of B's extra loop pass;
    they are there because `a.bias` requires grad in A."""
    def run(n: int, freeze: bool = False) -> Graph:
        torch.manual_seed(0)
        m = Repeats()
        m.a.bias.requires_grad_(not freeze)
        with torchtrace.trace(m) as t:
            m(torch.randn(2, 4), torch.tensor(n)).sum().backward()  # (one line for every pass)
        return t.graph

    plain = torchtrace.diff(run(1), run(2))
    assert [h.backward_of is not None for h in plain.structural_hunks if h.only_a or h.only_b] == [
        all(n.phase == "backward" for n in (*h.only_a, *h.only_b)) for h in plain.structural_hunks]
    frozen = torchtrace.diff(run(1), run(2, freeze=True))
    [bias] = [h for h in frozen.structural_hunks if h.only_a]  # A's bias-gradient ops: not B's loop's backward
    assert [n.short_op for n in bias.only_a] == ["sum.dim_IntList", "view"] and not bias.only_b
    assert bias.backward_of is None and bias.needs_grad == ("A", ("a.bias",))
    assert bias.explanation.startswith("`a.bias` requires grad only in A (`requires_grad_`)")
    assert all(h.backward_of is not None for h in frozen.structural_hunks
               if h.only_b and all(n.phase == "backward" for n in h.only_b))


class Beam(nn.Module):
    """Keeps the rows that beat a threshold until none is left: the `while` is on
    a Python int (the shape), the data read is the boolean index."""

    def __init__(self) -> None:
        super().__init__()
        self.step = nn.Linear(4, 4)
        self.score = nn.Linear(4, 1)

    def forward(self, h: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
        t = 0
        while h.shape[0] > 0 and t < 4:
            h = torch.tanh(self.step(h))
            h = h[self.score(h).squeeze(-1) > thr[t]]  # LINE:keep
            t += 1
        return h.sum()


def test_a_loop_ended_by_a_shape_read_names_that_read():
    """All rows die at the 3rd step in A, the 4th in B: the extra iteration was
    put down to no read at all ("no tensor read decided it")."""
    torch.manual_seed(0)
    m, h0 = Beam(), torch.randn(3, 4)

    def run(thr: list) -> Graph:
        with torchtrace.trace(m) as t:
            m(h0, torch.tensor(thr))  # (one line for both passes)
        return t.graph

    d = torchtrace.diff(run([-9., -9., 9., 9.]), run([-9., -9., -9., 9.]))
    keep = f"`test_diff_causes.py:{line_of('keep')}`"
    assert d.why()[0].startswith(f"{keep} read shape [0,4] in A, shape [3,4] in B"), d.why()
    assert "no tensor read decided it" not in d.why()[0]


class ScoredTree(nn.Module):
    """A node splits when its score is high; the left child sees its input rolled."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 1)
        self.leaf = nn.Linear(4, 4)
        self.merge = nn.Linear(8, 4)
        with torch.no_grad():
            self.score.weight.copy_(torch.tensor([[1., 0., 0., 0.]]))
            self.score.bias.zero_()

    def node(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        if depth < 3 and self.score(x).mean() > 0:  # LINE:split
            left = self.node(torch.roll(x, 1, -1), depth + 1)
            right = self.node(-x, depth + 1)
            return self.merge(torch.cat([left, right], -1))
        return torch.tanh(self.leaf(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.node(x, 0)


def test_an_if_at_each_level_of_a_recursion_is_no_loop_count():
    """The left child splits too in B: its extra `merge` was "`if` at ... ran 1x
    in A, 2x in B" (an `if` is no loop; it read False in A, True in B)."""
    m = ScoredTree()
    graphs = []
    for x in ([[1., 0., 0., -1.]], [[1., 0., 0., 1.]]):
        graphs.append(_record(m, torch.tensor(x)))
    why = torchtrace.diff(*graphs).why()
    split = f"`test_diff_causes.py:{line_of('split')}`"
    assert why and all(w.startswith(split) and "read False in A, True in B" in w for w in why), why
    assert not any("ran 1\u00d7" in w for w in why)


class SumTree(nn.Module):
    """A node's two children's results are added on the line that calls them."""

    def __init__(self) -> None:
        super().__init__()
        self.split, self.leaf, self.l, self.r = (nn.Linear(4, 1), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))

    def node(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        if depth < 3 and self.split(x).mean() > 0:  # LINE:sum-split
            return self.node(torch.tanh(self.l(x)), depth + 1) + self.node(torch.tanh(self.r(x)), depth + 1)
        return self.leaf(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.node(x, 0)  # LINE:sum-root


def test_the_op_joining_a_branch_s_results_takes_the_branch_s_read():
    """The `+` after B's extra split reads only what that split's ops made: it is
    the split's doing, not "Python state" (the reads since were paired alike)
    nor a read whose `if` had ended."""
    torch.manual_seed(0)
    m = SumTree()
    xs = [torch.randn(1, 4) for _ in range(24)]
    d = torchtrace.diff(_record(m, xs[1]), _record(m, xs[23]))
    split = f"`test_diff_causes.py:{line_of('sum-split')}`"
    [joined] = [h for h in d.structural_hunks if [n.short_op for n in h.only_b] == ["add.Tensor"]]
    assert joined.witness is not None and not joined.witness.weak
    assert all(h.witness.line == line_of("sum-split") for h in d.structural_hunks)
    called = f"`test_diff_causes.py:{line_of('sum-split') + 1}`, from `test_diff_causes.py:{line_of('sum-root')}`"
    assert d.why() == [f"{split} (called from {called}) read False in A, "
                       f"True in B \u2192 {d.only_b} ops only in B in 2 hunks (in `<root>`)"]


class Stale(nn.Module):
    """Decides first, counts overflows (Python only), then uses the decision."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(4, 4)
        self.small = nn.Linear(4, 4)
        self.overflows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_big = bool(x.mean() > 0)  # LINE:decide
        h = x * 2
        if h.abs().max() > 1.0:  # LINE:count
            self.overflows += 1
        return self.big(h) if use_big else self.small(h)


def test_two_reads_that_differ_just_before_a_hunk_are_both_named():
    """The branch used a decision read earlier; a Python-only `if` read between
    them differs too: the nearer one was named alone."""
    m = Stale()
    graphs = [_record(m, torch.full((1, 4), v)) for v in (0.6, -0.1)]
    [why] = torchtrace.diff(*graphs).why()
    count, decide = (f"`test_diff_causes.py:{line_of(k)}`" for k in ("count", "decide"))
    assert why.startswith(f"{count} read True in A, False in B (or, read earlier, {decide} read True in A, "
                          "False in B) \u2192 "), why
    [why] = torchtrace.diff(*reversed(graphs)).why()  # (computed the other way round, then mirrored)
    assert why.startswith(f"{count} read False in A, True in B (or, read earlier, {decide} read False in A, "
                          "True in B) \u2192 "), why


class Budgets(nn.Module):
    """A `while` per layer, its count read from the data."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))

    def forward(self, x: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            n = budget[i]
            while n > 0:  # LINE:budget
                x = torch.tanh(layer(x))
                n = n - 1
        return x


def test_a_while_inside_a_for_says_which_run_changed():
    """Only the 2nd layer's `while` ran more: the count alone did not say which of
    the loop's three runs changed."""
    m, x = Budgets(), torch.ones(1, 2)
    graphs = [_record(m, x, torch.tensor(b)) for b in ([1, 1, 1], [1, 3, 1])]
    [why] = torchtrace.diff(*graphs).why()
    at = f"`test_diff_causes.py:{line_of('budget')}`"
    assert why.startswith(f"`while` at {at} ran 1\u00d7 in A, 3\u00d7 in B (the 2nd of its 3 runs) \u2192 "), why


class DropNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.fc(x))).sum()


def _pass(m: nn.Module, x: torch.Tensor, train: bool, backward: bool = True) -> Graph:
    m.train(train)
    m.zero_grad(set_to_none=True)
    with torchtrace.trace(m) as t:
        loss = m(x)
        if backward:
            loss.backward()
    return t.graph


def test_module_training_flags_are_recorded_per_call():
    m = DropNorm()
    m.train()
    m.bn.eval()  # frozen batch norm in a training model
    with torchtrace.trace(m) as t:
        m(torch.randn(3, 4))
    flags = {c.path: c.training for c in t.graph.modules}
    assert flags == {"": True, "fc": True, "bn": False, "drop": True}
    assert {c["path"]: c["training"] for c in t.graph.to_dict()["modules"]} == flags
    old = t.graph.to_dict()  # an IR 1.0 file has no flags: it loads, with none known
    old["version"] = [1, 0]
    for c in old["modules"]:
        del c["training"]
    assert {c.training for c in torchtrace.Graph.from_dict(old).modules} == {None}


def test_train_against_eval_blames_the_modules_training_mode():
    torch.manual_seed(0)
    m, x = DropNorm(), torch.randn(3, 4)
    a, b = _pass(m, x, train=True), _pass(m, x, train=False)
    d = torchtrace.diff(a, b)
    one_sided = [(s, n) for h in d.structural_hunks for s, ops in (("A", h.only_a), ("B", h.only_b)) for n in ops]
    assert {g.module_path(n.module) for s, n in one_sided for g in [a if s == "A" else b]} == {"bn", "drop"}
    assert all(h.trained == "A" for h in d.structural_hunks)
    n_a = sum(s == "A" for s, _ in one_sided)
    n_b = len(one_sided) - n_a
    # dropout and its backward, batch norm's running-stat update: only in A; in B nothing extra
    assert {"aten.bernoulli_.float", "aten.add_.Tensor"} <= {n.op for s, n in one_sided if s == "A"} and not n_b
    hunks = len(d.structural_hunks)
    assert d.why() == [f"modules in training mode in A, eval mode in B (`.train()`/`.eval()`) \u2192 "
                       f"{n_a} ops only in A in {hunks} hunks (in `bn`, `drop`)"]
    assert torchtrace.diff(b, a).why()[0].startswith("modules in training mode in B, eval mode in A")


class Masked(nn.Module):
    """A mask argument used only when given (as transformers' attention_mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        h = self.fc(x)
        if mask is not None:
            h = h.masked_fill(mask == 0, 0.0)
        return h


def _train_then_eval_with_mask(m: nn.Module):
    """A pass in train mode without a mask against one in eval mode given one."""
    torch.manual_seed(0)
    x, mask = torch.randn(3, 4), torch.ones(3, 4)
    with torchtrace.trace(m) as ta:
        m(x)
    m.eval()
    with torchtrace.trace(m) as tb:
        m(x, mask=mask)
    return torchtrace.diff(ta.graph, tb.graph)


def test_ops_of_an_input_given_with_eval_are_put_down_to_the_input():
    """B passes a mask and runs in eval mode: the mask's ops ran in a module
    call that was in training mode in A only, and were blamed on `.eval()`."""
    [h] = _train_then_eval_with_mask(Masked()).structural_hunks
    assert [n.short_op for n in h.only_b] == ["eq.Scalar", "masked_fill.Scalar"] and h.trained is None
    assert h.explanation.startswith("input `mask` only in B (f32[3,4]) (ops computed from it)"), h.explanation


def _guarded_step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    loss = m(x).pow(2).mean()
    if torch.isnan(loss).any():  # LINE:nan
        return
    loss.backward()
    opt.step()


def _traced(step, *args) -> Graph:
    with torchtrace.trace(args[0]) as t:
        step(*args)
    return t.graph


def test_a_read_that_skipped_backward_is_said_with_it():
    """`if torch.isnan(loss).any(): return` skipped B's backward and optimizer
    step: the read was only a marked row of the hunk, not its cause."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, bad = torch.randn(8, 4), torch.randn(8, 4)
    bad[0, 0] = float("nan")
    a, b = _traced(_guarded_step, m, opt, x), _traced(_guarded_step, m, opt, bad)
    [h] = torchtrace.diff(a, b).structural_hunks
    assert h.ran == ("A", ("backward", "optimizer"))
    assert h.cause == f"`test_diff_causes.py:{line_of('nan')}` read False in A, True in B: " \
                      "only A's pass ran backward and an optimizer step"
    assert torchtrace.diff(b, a).structural_hunks[0].cause.startswith(
        f"`test_diff_causes.py:{line_of('nan')}` read True in A, False in B: only B's pass ran")


def test_batch_norm_run_with_batch_statistics_in_one_pass_is_put_down_to_the_mode():
    """The same `native_batch_norm` op with `training=True` in A, False in B: its
    changed hunk named only the arg and the sizes, not `.train()`/`.eval()`."""
    torch.manual_seed(0)
    m, x = DropNorm(), torch.randn(3, 4)
    d = torchtrace.diff(_pass(m, x, train=True), _pass(m, x, train=False))
    [bn] = [h for h in d.changed_hunks if any(a.key == "training" for a in h.args)]
    assert bn.trained == "A" and bn.cause.startswith("modules in training mode in A, eval mode in B"), bn.cause
    x2 = torch.randn(5, 4)  # other shapes alone, in one mode: no mode named
    assert all(h.trained is None for h in torchtrace.diff(_pass(m, x, train=True), _pass(m, x2, train=True)).hunks)


def test_a_backward_run_in_one_pass_only_is_said_to_be_that():
    torch.manual_seed(0)
    m, x = DropNorm().eval(), torch.randn(3, 4)
    a, b = _pass(m, x, train=False), _pass(m, x, train=False, backward=False)
    [h] = torchtrace.diff(a, b).structural_hunks
    backward = [n for n in a.nodes if n.phase == "backward" and "autograd_internal" not in n.tags]
    assert h.only_a == tuple(backward) and not h.only_b and h.ran == ("A", ("backward",))
    for d, side in ((torchtrace.diff(a, b), "A"), (torchtrace.diff(b, a), "B")):
        assert d.why() == [f"only {side}'s pass ran backward \u2192 {len(backward)} ops only in {side} (in `<root>`)"]


def _runs(x: torch.Tensor, ns) -> torch.Tensor:
    h = x
    for n in ns:
        k = torch.tensor(n)
        while k > 0:  # LINE:runs
            h = torch.tanh(h) * 2
            k = k - 1
        h = h + 1
    return h


def _refine(h: torch.Tensor, n: int) -> torch.Tensor:
    k = torch.tensor(n)
    while k > 0:  # LINE:refine
        h = torch.tanh(h) * 2
        k = k - 1
    return h


def _twice(x: torch.Tensor, ns) -> torch.Tensor:
    return _refine(_refine(x, ns[0]) + 1, ns[1])


@pytest.mark.parametrize("fn, marker", [(_runs, "runs"), (_twice, "refine")])
def test_runs_of_a_loop_that_swap_counts_are_each_their_own_change(fn, marker):
    """2 and 3 iterations in A, 3 and 2 in B: each run changed by one iteration (5 ops:
    the read, tanh, mul, sub, the next test), never "ran 1x in A, 0x in B", and the ops
    between the runs ran in both."""
    x = torch.randn(2, 2)
    graphs = []
    for ns in ([2, 3], [3, 2]):
        with torchtrace.trace() as t:
            fn(x, ns)
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    where = f"`while` at `test_diff_causes.py:{line_of(marker)}`"
    runs = (" (the 1st of its 2 runs)", " (the 2nd of its 2 runs)")
    assert d.why() == [f"{where} ran 2\u00d7 in A, 3\u00d7 in B{runs[0]} \u2192 5 ops only in B (in `<root>`)",
                       f"{where} ran 3\u00d7 in A, 2\u00d7 in B{runs[1]} \u2192 5 ops only in A (in `<root>`)"]
    for h in d.structural_hunks:
        assert sorted(n.short_op for n in h.only_a + h.only_b) == \
            ["_local_scalar_dense", "gt.Scalar", "mul.Tensor", "sub.Tensor", "tanh"]


def test_a_forward_called_from_another_line_is_the_same_ops():
    """A training step and a validation step call the model from two lines: the
    forward ran in both (only its line differs); backward and the optimizer step
    ran only in the training step."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(3, 4), torch.randn(3, 1)
    with torchtrace.trace(m) as ta:
        nn.functional.mse_loss(m(x), y).backward()  # LINE:train
        opt.step()
    with torch.no_grad(), torchtrace.trace(m) as tb:
        nn.functional.mse_loss(m(x), y)  # LINE:val
    d = torchtrace.diff(ta.graph, tb.graph)
    later = [n for n in ta.graph.nodes if n.phase in ("backward", "optimizer")
             and not {"autograd_internal", "annotation"} & set(n.tags)]
    assert d.only_b == 0 and d.only_a == len(later)
    assert d.moved == len(tb.graph.nodes)  # every op of B: the same op, another line
    assert d.why()[1:] == [f"only A's pass ran backward and an optimizer step \u2192 {len(later)} ops only in A "
                           "(in `<root>`)"]


def _halve(x: torch.Tensor) -> torch.Tensor:
    h = x * 2
    if h.sum() > 0:  # LINE:halve
        h = torch.tanh(h)
    return h + 1


def test_a_function_traced_from_two_lines_pairs_its_reads():
    neg, pos = -torch.ones(2), torch.ones(2)
    with torchtrace.trace() as ta:
        _halve(neg)  # LINE:first
    with torchtrace.trace() as tb:
        _halve(pos)  # LINE:second
    d = torchtrace.diff(ta.graph, tb.graph)
    assert d.why() == [f"`test_diff_causes.py:{line_of('halve')}` read False in A, True in B \u2192 1 op only in B "
                       "(in `<root>`)"]
    assert f"B called from test_diff_causes.py:{line_of('second')}" in str(d)


def test_a_frozen_layer_is_said_to_be_that_and_its_backward_is_aligned():
    """Layer 0 frozen in B: its gradient ops, the Tanh's backward before it and
    layer 2's grad-input ops run only in A; layer 2's grad-weight ops run in
    both and are paired with each other (not with A's grad-input ops, the same
    ops at the same line)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.__name__.split(".")[0] != "detach"
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(4, 8)
    graphs, counts = [], []
    for frozen in (False, True):
        m[0].requires_grad_(not frozen)
        loss = m(x).sum()
        with Count() as c:  # the oracle: backward ops that ran
            c.n = 0
            loss.backward()
        counts.append(c.n)
        m.zero_grad(set_to_none=True)
        with torchtrace.trace(m) as t:
            m(x).sum().backward()
        m.zero_grad(set_to_none=True)
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    assert not d.changed_hunks and d.only_b == 0 and d.only_a == counts[0] - counts[1] == 9
    assert d.why() == ["`0.weight`, `0.bias` require grad only in A (`requires_grad_`): backward computes the "
                       "gradients that reach them only there \u2192 9 ops only in A in 2 hunks (in `2`, `<root>`)"]
    [grad_input] = [h for h in d.structural_hunks if h.module == "2"]
    assert [(n.short_op, [graphs[0].value(v).alias_of is not None for v in n.inputs]) for n in grad_input.only_a] \
        == [("t", [True]), ("mm", [False, True])]  # t(weight), then grad @ weight.T


@pytest.mark.parametrize("make, per_param, updated", [
    (lambda p: torch.optim.Adam(p, lr=1e-2), 3, False),  # step, exp_avg, exp_avg_sq
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 2, True),  # momentum_buffer = clone(grad).detach()
])
def test_an_optimizers_first_step_is_said_to_make_its_state(make, per_param, updated):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = make(m.parameters())
    x, y = torch.randn(8, 8), torch.randn(8, 1)
    graphs = []
    for _ in range(2):
        with torchtrace.trace(m) as t:
            nn.functional.mse_loss(m(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    n_params = len(list(m.parameters()))
    assert d.only_a == per_param * n_params
    assert all(h.state is not None and h.state[0] == "A" for h in d.structural_hunks)
    [why] = d.why()
    assert why.startswith("the optimizer made its state in A (") and why.count(", B updated it") == updated
    if not updated:  # Adam reads its step count per parameter: one line, counted
        [other] = [line for line in str(d).splitlines() if line.startswith("other reads that differ: ")]
        assert other.endswith(f"read 1.0 in A, 2.0 in B ({n_params}\u00d7)"), other


def test_an_optimizer_step_only_one_pass_made_is_no_state():
    """Optimizer ops that are not all tensor-making (a whole step) are not the
    state. Without zero_grad, B's backward adds into the .grads A made: hunks of
    their own next to A's optimizer ops, in both orientations (each hunk's span
    holds its own ops)."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    graphs = []
    for step in (True, False):
        with torchtrace.trace(m) as t:
            m(torch.ones(2, 4)).sum().backward()
            if step:
                opt.step()
        graphs.append(t.graph)
    for d in (torchtrace.diff(*graphs), torchtrace.diff(*reversed(graphs))):
        for h in d.hunks:
            rows = d.ops[h.span[0]:h.span[1]]
            assert tuple(p.a for p in rows if p.status == "only_a") == h.only_a
            assert tuple(p.b for p in rows if p.status == "only_b") == h.only_b
    d = torchtrace.diff(*graphs)
    assert [h.state for h in d.structural_hunks] == [None] * 3
    assert d.why()[1] == "only A's pass ran an optimizer step \u2192 2 ops only in A (in `<root>`)"


def test_runs_of_one_loop_that_changed_alike_are_one_line():
    """An 8-layer halting loop gave 8 lines, one per run of the `while`."""
    x = torch.randn(2, 2)

    def graph(ns):
        with torchtrace.trace() as t:
            _runs(x, ns)
        return t.graph

    where = f"`while` at `test_diff_causes.py:{line_of('runs')}` ran 3\u00d7 in A, 2\u00d7 in B"
    assert torchtrace.diff(graph([3, 3, 3, 2]), graph([2, 2, 2, 2])).why() == [
        f"{where} (the 1st, 2nd and 3rd of its 4 runs) \u2192 3 hunks, each 5 ops only in A (in `<root>`)"]
    assert torchtrace.diff(graph([3] * 4), graph([2] * 4)).why() == [
        f"{where} (each of its 4 runs) \u2192 4 hunks, each 5 ops only in A (in `<root>`)"]
    assert torchtrace.diff(graph([2, 3, 2, 2]), graph([2] * 4)).why() == [
        f"{where} (the 2nd of its 4 runs) \u2192 5 ops only in A (in `<root>`)"]


def test_an_input_that_requires_grad_in_one_pass_is_said_to():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    graphs = []
    for rg in (True, False):
        x = torch.randn(3, 4, requires_grad=rg)
        with torchtrace.trace(m) as t:
            m(x).sum().backward()
        m.zero_grad(set_to_none=True)
        graphs.append(t.graph)
    [h] = torchtrace.diff(*graphs).structural_hunks
    assert [n.short_op for n in h.only_a] == ["t", "mm"] and not h.only_b  # the grad of x: g @ W0
    assert h.explanation == ("`input` requires grad only in A (`requires_grad_`): backward computes the gradients "
                             "that reach it only there \u2192 2 ops only in A (in `0`)")


class Arms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if x.mean() > 0:  # LINE:arms
            h = h.exp()
            h = h * 2
        else:
            h = h.sin()
            h = h * 3
        return self.out(h)


def test_the_two_arms_of_an_if_share_no_op():
    """`h * 2` in one arm and `h * 3` in the other are the same op of the same
    module at two lines: not the same op called from elsewhere."""
    torch.manual_seed(0)
    m, x = Arms(), torch.randn(4, 8)
    x = x - x.mean() + 1
    d = torchtrace.diff(zoo.record(m, x), zoo.record(m, -x))
    assert d.why() == [f"`test_diff_causes.py:{line_of('arms')}` read True in A, False in B \u2192 2 ops only in A, "
                       "2 ops only in B (in `<root>`)"]
    assert not d.changed_hunks


class WhileInFor(nn.Module):
    """A `for` with no op of its own at its head, around a `while`."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, thresholds) -> torch.Tensor:
        for t in thresholds:
            y = x
            while y.norm() < t:  # LINE:wif
                y = self.f(y) * 0 + y * 2
            x = y / y.norm() * 0.1
        return x


def test_runs_of_a_while_in_a_headless_for_are_paired_run_by_run():
    """Each run's extra iteration is a hunk of its own (8 ops: the test, the
    body); the ops after each run are paired with each other."""
    torch.manual_seed(0)
    m, x = WhileInFor(), torch.randn(2, 8)
    x = x / x.norm() * 0.1
    d = torchtrace.diff(zoo.record(m, x, [0.3, 0.7]), zoo.record(m, x, [0.7, 0.3]))
    where = f"`while` at `test_diff_causes.py:{line_of('wif')}`"
    assert d.why() == [f"{where} ran 2\u00d7 in A, 3\u00d7 in B (the 1st of its 2 runs) \u2192 8 ops only in B "
                       "(in `<root>`)",
                       f"{where} ran 3\u00d7 in A, 2\u00d7 in B (the 2nd of its 2 runs) \u2192 8 ops only in A "
                       "(in `<root>`)"]
    assert all(set(p.what) == {"args"} and p.a.short_op == "lt.Scalar" for h in d.changed_hunks for p in h.changed)


def test_an_optimizers_own_reads_explain_only_its_own_ops():
    """Adam reads its step count (1 in A, 2 in B) for arithmetic: an op run after
    `opt.step()` only in B is not its doing."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    graphs = []
    for extra in (False, True, False):
        with torchtrace.trace(m) as t:
            loss = nn.functional.mse_loss(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if extra:
                loss.item()
        graphs.append(t.graph)
    d = torchtrace.diff(graphs[1], graphs[2])  # steps 1 and 2: Adam's state exists in both
    assert any(w.a.value != w.b.value for w in d.witnesses)  # the step counts differ
    assert d.why() == ["no tensor read differs before it: decided by Python state (arguments, flags, caches) "
                       "\u2192 1 op only in A (in `<root>`)"]


def test_unfreezing_a_layer_names_it_for_its_backward_and_its_optimizer_steps():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(6, 4)
    graphs = []
    for frozen in (True, False):
        m[0].requires_grad_(not frozen)
        with torchtrace.trace(m) as t:
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    assert d.only_a == 0 and d.only_b > 0
    assert all(h.needs_grad == ("B", ("0.weight", "0.bias")) for h in d.structural_hunks)
    head = ("`0.weight`, `0.bias` require grad only in B (`requires_grad_`): backward computes the gradients that "
            "reach them")
    assert d.why() == [f"{head} only there \u2192 2 ops only in B (in `2`)",  # the grad of 2's input: t, mm
                       f"{head} and the optimizer steps them only there \u2192 9 ops only in B (in `<root>`)"]


def _train_step_then_validation(m: nn.Module, x: torch.Tensor, y: torch.Tensor, opt=None,
                                switch_modes: bool = False):
    """A training step's pass (backward, and a step of ``opt`` if given) against a
    validation pass under no_grad that also computes the accuracy; with
    ``switch_modes``, the model in train mode for the first, eval for the second."""
    if switch_modes:
        m.train()
    with torchtrace.trace(m) as ta:
        nn.functional.cross_entropy(m(x), y).backward()
        if opt is not None:
            opt.step()
    if switch_modes:
        m.eval()
    with torch.no_grad(), torchtrace.trace(m) as tb:
        out = m(x)
        nn.functional.cross_entropy(out, y)
        (out.argmax(-1) == y).float().mean()  # accuracy: only the validation pass computes it
    return torchtrace.diff(ta.graph, tb.graph)


def test_a_training_steps_backward_is_its_own_hunk_next_to_an_eval_passs_metrics():
    """The eval pass's metric ops sat in one hunk with the training step's
    backward and optimizer ops, and the whole hunk was put down to Python state."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    d = _train_step_then_validation(m, x, y, opt)
    later = [n for n in d.a.nodes if n.phase in ("backward", "optimizer")
             and not {"autograd_internal", "annotation"} & set(n.tags)]
    ran = "only A's pass ran backward and an optimizer step"
    assert f"{ran} \u2192 {len(later)} ops only in A (in `<root>`)" in d.why()
    metric = [h for h in d.structural_hunks if h.only_b]
    assert metric and all(not h.only_a and h.ran is None for h in metric)


def test_packed_sequence_lengths_are_a_read_of_the_data():
    """pack_padded_sequence reads the lengths in C++ (torch does not tag it as a
    data-dependent shape): a GRU over other lengths runs another number of steps,
    which was put down to Python state."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    gru, x = nn.GRU(3, 4, batch_first=True), torch.randn(2, 5, 3)
    graphs = []
    for lens in (torch.tensor([5, 3]), torch.tensor([4, 2])):
        with torchtrace.trace(gru) as t:
            gru(pack_padded_sequence(x, lens, batch_first=True))  # LINE:pack
        graphs.append(t.graph)
    [pack] = [n for n in graphs[0].nodes if n.short_op == "_pack_padded_sequence"]
    assert "witness" in pack.tags and pack.witness.shape == (8, 3)  # 5 + 3 rows
    [why] = torchtrace.diff(*graphs).why()
    assert why.startswith(f"`test_diff_causes.py:{line_of('pack')}` read shape [8,3] in A, shape [6,3] in B")


def test_a_validation_step_with_a_metric_pairs_its_forward_with_the_training_steps():
    """Dropout only in the training step, a metric only in the validation step,
    the forward called from two lines: the forward's ops pair up (they were 11 ops
    only in A, 11 only in B, put down to Python state)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    d = _train_step_then_validation(m, x, y, switch_modes=True)
    why = d.why()
    assert "modules in training mode in A, eval mode in B (`.train()`/`.eval()`) \u2192 4 ops only in A (in `1`)" in why
    metric = [h for h in d.structural_hunks if h.only_b]
    assert [len(h.only_b) for h in metric] == [4] and not metric[0].only_a  # argmax, eq, _to_copy, mean
    assert d.moved == 7  # t, addmm, relu, t, addmm, log_softmax, nll_loss: the same ops at another line


def test_autocast_casts_of_a_weight_keep_its_backward_aligned():
    """Under autocast a Linear's weight is cast first: the backward's `t(W)`
    read the cast, no longer the weight, and was paired with `t(grad)`: a
    made-up loop and shape changes. The cast carries the parameter's name."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    graphs = []
    for amp in (False, True):
        m.zero_grad(set_to_none=True)
        with torchtrace.trace(m) as t:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = m(x)
            nn.functional.cross_entropy(out.float(), y).backward()
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    casts = [n for n in graphs[1].nodes if n.short_op == "_to_copy"]
    assert d.only_a == 0 and d.only_b == len(casts) == 11
    [why] = d.why()
    assert why.startswith("dtype casts run only in B: ")
    assert all(set(p.what) <= {"dtype", "line"} for h in d.changed_hunks for p in h.changed)


def test_two_inputs_of_one_name_are_told_apart():
    """Two models' calls in one pass each name their argument `input`: the
    second one's was compared with the other pass's first."""
    torch.manual_seed(0)
    g_, d_ = nn.Sequential(nn.Linear(4, 2)), nn.Sequential(nn.Linear(2, 1))
    real, z = torch.randn(3, 2), torch.randn(3, 4)
    graphs = []
    for second in (real, z):
        with torchtrace.trace() as t:
            d_(real).sum()
            (d_ if second is real else g_)(second).sum()
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    changed = [(i.name, i.describe()) for i in d.inputs]
    assert [name for name, _ in changed] == ["input (2nd)"], changed


def test_train_against_eval_of_a_transformer_layer_names_the_mode():
    """nn.TransformerEncoderLayer: `if self.training` (and grad mode) picks the
    fused fast path or the submodules; the submodule calls exist on one side only,
    so their own flags cannot be compared: the enclosing layer's are."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 1,
                                  enable_nested_tensor=False)
    x = torch.randn(2, 5, 16)
    graphs = []
    for train, grad in ((True, False), (False, False), (False, True)):
        layer.train(train)
        with torch.set_grad_enabled(grad), torchtrace.trace(layer) as t:
            layer(x)
        graphs.append(t.graph)
    [why] = torchtrace.diff(graphs[0], graphs[1]).why()
    assert why.startswith("modules in training mode in A, eval mode in B (`.train()`/`.eval()`) \u2192 ")
    [why] = torchtrace.diff(graphs[2], graphs[1]).why()  # both eval: grad mode alone picks the path
    assert why.startswith("grad mode train in A, no_grad in B: torch takes other paths (fused kernels) where no "
                          "gradient is needed \u2192 ")


class LogsThenCounts(nn.Module):
    """A truth value read into a logging call, then a branch on a Python
    counter: the read differs between the passes but steers nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.calls = 0
        self.log = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.fc(x)
        self.log.append(bool(h.mean() > 0))  # LINE:logged
        if self.calls % 2 == 0:
            h = h * 2 + 1
        return h.sum()


def test_a_read_into_a_call_whose_result_is_unused_is_named_only_as_a_guess():
    """Without the hedge the logging read was said to be the branch's cause,
    with the certainty of an `if` on it."""
    torch.manual_seed(0)
    m = LogsThenCounts()
    with torch.no_grad():
        m.fc.weight.copy_(torch.eye(4))
        m.fc.bias.zero_()
    xa, xb = torch.ones(2, 4), -torch.ones(2, 4)
    with torchtrace.trace(m) as ta:
        m(xa)
    with torchtrace.trace(m) as tb:
        m(xb)
    assert m.log == [True, False]
    [h] = torchtrace.diff(ta.graph, tb.graph).hunks
    assert h.witness.line == line_of("logged") and h.witness.weak, h.explanation
    assert "read True in A, False in B (read into a call whose result is unused: the nearest read that differs, " \
           "maybe not the cause)" in h.explanation


class SameOpArms(nn.Module):
    """Both arms of an `if` run the same op with other args."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.sum() > 0:  # LINE:same-op
            h = h * 2.0
        else:
            h = h * 3.0
        return h


def test_two_arms_that_run_the_same_op_with_other_args_are_put_down_to_the_read():
    """The graphs' structure is the same (it leaves out lines and args): the op's
    other args were said as if a hyperparameter had changed, and the read that
    chose the arm was listed among the reads that explain nothing."""
    torch.manual_seed(0)
    m = SameOpArms()
    with torch.no_grad():
        m.fc.weight.copy_(torch.eye(4))
        m.fc.bias.zero_()
    xa, xb = -torch.ones(2, 4), torch.ones(2, 4)
    with torchtrace.trace(m) as ta:
        m(xa)
    with torchtrace.trace(m) as tb:
        m(xb)
    d = torchtrace.diff(ta.graph, tb.graph)
    [h] = d.changed_hunks
    assert h.witness.line == line_of("same-op") and (h.witness.a.value, h.witness.b.value) == (False, True)
    assert d.why() == [f"`test_diff_causes.py:{line_of('same-op')}` read False in A, True in B \u2192 the same ops, "
                       "from other lines, with other args (1 op changed): aten.mul.Tensor other=3.0 \u2192 2.0 (1 op)"]
    assert not d.other_reads()


class Prototypes(nn.Module):
    """One prototype per class present in the batch, stacked after the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        out = []
        for c in torch.unique(y):  # LINE:classes
            out.append(h[y == c].mean(0))
        return torch.stack(out)


def test_an_op_that_reads_a_loops_extra_results_follows_from_the_loop():
    """`torch.stack(out)` reads one tensor more in A because the loop ran once
    more: it was put down to the last iteration's `h[y == c]` shape read."""
    torch.manual_seed(0)
    m, x = Prototypes(), torch.randn(6, 4)
    ya, yb = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 1, 1, 1])
    with torchtrace.trace(m) as ta:
        m(x, ya)
    with torchtrace.trace(m) as tb:
        m(x, yb)
    d = torchtrace.diff(ta.graph, tb.graph)
    [loop] = d.structural_hunks
    [stack] = [h for h in d.changed_hunks if any(p.a.op == "aten.stack.default" for p in h.changed)]
    assert loop.witness.line == line_of("classes") and (loop.loop.a, loop.loop.b) == (3, 2)
    assert (stack.witness, stack.loop) == (loop.witness, loop.loop)
    assert stack.cause.startswith(loop.cause + "; A passes one more input, f32[4]"), stack.cause


class Reordered(nn.Module):
    """The same two ops at one line, in an order a flag decides."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.swap = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        fns = [torch.sin, torch.exp] if self.swap else [torch.exp, torch.sin]
        outs = [f(h) for f in fns]
        return outs[0] + outs[1]


def test_an_op_that_ran_in_another_order_is_said_to_have_moved():
    """Paired in order, the `exp` that moved after `sin` is one op only in A and
    one only in B: both hunks now say it ran in both passes."""
    torch.manual_seed(0)
    m, x = Reordered(), torch.randn(2, 4)
    with torchtrace.trace(m) as ta:
        m(x)
    m.swap = True
    with torchtrace.trace(m) as tb:
        m(x)
    d = torchtrace.diff(ta.graph, tb.graph)
    hunks = d.structural_hunks
    assert sorted((len(h.only_a), len(h.only_b)) for h in hunks) == [(0, 1), (1, 0)]
    assert all(h.moved == ("exp",) and h.cause.endswith("`exp` ran in both, in another order") for h in hunks)
    assert all(h.to_dict()["moved"] == ["exp"] for h in d.mirror().hunks)
    m.swap, x2 = False, 2 * x
    with torchtrace.trace(m) as tc:
        m(x2)
    assert not torchtrace.diff(ta.graph, tc.graph).structural_hunks


def _logged_step(x: torch.Tensor, flag: bool, log: list) -> torch.Tensor:
    h = x * 2
    log.append(bool(h.mean() > 0))  # LINE:logged-in-a-function
    if flag:
        h = h.exp()
    return h


def test_a_read_into_an_unused_call_in_a_plain_function_is_a_guess_too():
    """In a function called from user code (a training step) the read has a
    caller (`called_from`), which had kept it a sure cause."""
    log, graphs = [], []
    for x, flag in ((torch.ones(3), False), (-torch.ones(3), True)):
        with torchtrace.trace() as t:
            _logged_step(x, flag, log)
        graphs.append(t.graph)
    [h] = torchtrace.diff(*graphs).structural_hunks
    assert h.witness.line == line_of("logged-in-a-function") and h.witness.weak, h.explanation


def test_a_read_with_other_ops_before_a_skipped_step_is_not_its_cause():
    """Gradient accumulation steps every 2nd pass (Python state); a best-loss
    check right before it differs too, but ops ran between them: it was named
    as the reason the optimizer step ran."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    best, graphs = torch.tensor(float("inf")), []
    x = torch.randn(8, 4)
    xs = [x, 10 * x]  # the second loss is larger: the best-loss check reads True, then False
    for i in range(2):
        with torchtrace.trace(m) as t:
            loss = m(xs[i]).pow(2).mean()
            loss.backward()
            if loss < best:
                pass
            best = torch.minimum(best, loss.detach())
            if i % 2 == 1:
                opt.step()
                opt.zero_grad()
        graphs.append(t.graph)
    [h] = [h for h in torchtrace.diff(*graphs).structural_hunks if h.ran]
    assert h.witness is None and h.cause == "only B's pass ran an optimizer step", h.cause


class DropThenMask(nn.Module):
    """Dropout (train mode only), then a mask used only when given."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        h = self.drop(x)
        if mask is not None:
            h = h.masked_fill(mask == 0, 0.0)
        return self.fc(h)


def test_a_hunk_of_dropout_and_of_a_mask_given_with_eval_names_both():
    """A train pass against an eval pass given a mask: one hunk holds the
    dropout (A) and the mask's ops (B); it was put down to the mask alone."""
    d = _train_then_eval_with_mask(DropThenMask())
    [h] = [h for h in d.structural_hunks if h.only_a and h.only_b]
    assert h.trained == "A" and [i.name for i in h.fed] == ["mask"]
    assert h.cause == "modules in training mode in A, eval mode in B (`.train()`/`.eval()`); input `mask` only in " \
                      "B (f32[3,4]) (ops computed from it)", h.cause
    assert d.mirror().hunks[h.index].cause.startswith("modules in training mode in B, eval mode in A")


class Routed(nn.Module):
    """Two experts; a row goes to expert 0 when its first feature is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        route = (x[:, 0] <= 0).long()
        for e, expert in enumerate(self.experts):
            idx = (route == e).nonzero(as_tuple=True)[0]
            if idx.numel():
                out = out.index_add(0, idx, expert(x[idx]))
        return out


def test_optimizer_ops_for_parameters_without_a_gradient_say_so():
    """Expert 1 got no token in A, so no gradient, and Adam skipped it: its
    update was put down to a loop count or a shape read."""
    torch.manual_seed(0)
    m = Routed()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    both, first_only = torch.randn(6, 4), torch.randn(6, 4).abs()
    both[:3, 0], both[3:, 0] = 1.0, -1.0

    def step(x: torch.Tensor) -> Graph:
        with torchtrace.trace(m) as t:
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
        return t.graph

    step(both)  # Adam's state for every parameter
    a, b = step(first_only), step(both)
    assert set(a.autograd.no_grad_params) == {"experts.1.weight", "experts.1.bias"}
    [h] = [h for h in torchtrace.diff(a, b).structural_hunks if h.unused]
    assert h.unused == ("B", ("experts.1.weight", "experts.1.bias"))
    assert h.cause == "`experts.1.weight`, `experts.1.bias` got no gradient in A (no op of its pass used them): " \
                      "the optimizer steps them only in B"


class PackedGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 4, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, True, False)  # LINE:pack-lengths
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        return out[out != 0].sum()  # LINE:mask-read


def test_the_backward_of_a_packed_sequence_is_put_down_to_its_lengths():
    """`pack_padded_sequence` runs once; its backward loops over the time steps.
    That loop's count was put down to the nearest read before backward (a mask
    read after the forward), not to the lengths the pack read."""
    torch.manual_seed(0)
    m = PackedGRU()
    graphs = []
    for lengths in ([5, 3, 2], [3, 2, 2]):
        x = torch.randn(3, max(lengths), 4, requires_grad=True)  # (an embedding's output)
        m.zero_grad()
        with torchtrace.trace(m) as t:
            m(x, torch.tensor(lengths)).backward()
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    pack = [h for h in d.structural_hunks if (h.only_a or h.only_b)
            and all(n.phase == "backward" and n.source.line == line_of("pack-lengths") for n in (*h.only_a, *h.only_b))]
    assert pack and all(h.witness.line == line_of("pack-lengths") for h in pack), [h.explanation for h in pack]


class MeanGate(nn.Module):
    """A branch on the data; no module that behaves otherwise in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if x.mean() > 0:  # LINE:meangate
            h = h.relu()
        return h


def test_a_read_right_before_the_ops_is_said_before_train_and_eval():
    """A in training mode on a negative input, B in eval mode on a positive
    one: the relu only B ran follows the read right before it. Both modes
    differ too, and are named after it; with no read, the modes are the cause."""
    torch.manual_seed(0)
    m = MeanGate()
    a = zoo.record(m.train(), -torch.ones(3, 4))
    b = zoo.record(m.eval(), torch.ones(3, 4))
    [h] = torchtrace.diff(a, b).hunks
    assert h.trained == "A" and h.read_first and h.witness.line == line_of("meangate")
    assert h.explanation == (f"`test_diff_causes.py:{line_of('meangate')}` read False in A, True in B (modules also "
                             "in training mode in A, eval mode in B) \u2192 1 op only in B (in `<root>`)")
    assert torchtrace.diff(b, a).hunks[0].explanation.startswith(
        f"`test_diff_causes.py:{line_of('meangate')}` read True in A, False in B (modules also in training mode in B")
    drop = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    [h] = torchtrace.diff(zoo.record(drop.train(), torch.ones(3, 4)), zoo.record(drop.eval(), torch.ones(3, 4))).hunks
    assert not h.read_first and h.explanation.startswith("modules in training mode in A, eval mode in B")


class Deepens(nn.Module):
    """A Python flag picks a layer; an `if self.training:` picks a scale."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.deep = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if self.training:
            h = h * 2  # LINE:train_scale
        h = h - 1  # (both passes: two hunks)
        if self.deep:
            h = h + torch.relu(self.b(h))  # LINE:deep
        return h


def test_a_flag_flipped_with_train_is_not_put_down_to_the_mode():
    """Nothing `.train()` could decide ran in the deep branch: it was "modules in
    training mode in B" (the flag, flipped at the same time, is Python state)."""
    torch.manual_seed(0)
    m, x = Deepens(), torch.randn(4, 8)
    a = zoo.record(m.eval(), x)
    m.deep = True
    b = zoo.record(m.train(), x)
    hunks = torchtrace.diff(a, b).structural_hunks
    by_line = {h.only_b[0].source.line: h for h in hunks}
    assert set(by_line) == {line_of("train_scale"), line_of("deep")}
    assert by_line[line_of("train_scale")].trained == "B"
    assert by_line[line_of("deep")].trained is None
    assert "decided by Python state" in by_line[line_of("deep")].explanation


class NoisyInTraining(nn.Module):
    """`training` read through a name, or through a method."""

    def __init__(self, via_method: bool) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.via_method = via_method

    def use_aux(self) -> bool:
        return self.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.l(x)
        noisy = self.training and x.shape[0] > 0
        if self.via_method:
            if self.use_aux():
                x = torch.tanh(x) * 2
        elif noisy:
            x = x + 0.1 * torch.randn_like(x)
        return x


@pytest.mark.parametrize("via_method", [False, True])
def test_training_read_through_a_name_or_a_method_is_still_the_mode(via_method):
    """(A review of the fix above: these were put down to Python state.)"""
    m, x = NoisyInTraining(via_method), torch.randn(3, 4)
    a, b = zoo.record(m.train(), x), zoo.record(m.eval(), x)
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith("modules in training mode in A, eval mode in B"), why


def add_noise(x: torch.Tensor, train: bool) -> torch.Tensor:
    if train:
        x = x + 0.1 * torch.tanh(x)
    return x


class Jitter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            x = x + torch.tanh(x)
        return x


class TrainOnly(nn.Module):
    """`training` handed to a helper as `train`; a submodule called only in training."""

    def __init__(self, jitter: bool) -> None:
        super().__init__()
        self.l, self.jitter = nn.Linear(4, 4), Jitter() if jitter else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.l(x)
        if self.jitter is None:
            return add_noise(x, self.training)
        if self.training:
            x = self.jitter(x)
        return x


@pytest.mark.parametrize("jitter", [False, True])
def test_training_handed_on_or_deciding_a_submodule_call_is_the_mode(jitter):
    """(A second review: both were put down to Python state; the submodule's own
    `if self.enabled:` is a flag, but the call only training made is the decision.)"""
    m, x = TrainOnly(jitter), torch.randn(3, 4)
    a, b = zoo.record(m.train(), x), zoo.record(m.eval(), x)
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith("modules in training mode in A, eval mode in B"), why


class Flags(nn.Module):
    """Flags only: a submodule called in a flag's branch, a flag whose name holds
    "train" in another word; and (``drop``) a dropout called only in training
    next to `training` handed to a helper under another name."""

    def __init__(self, drop: bool) -> None:
        super().__init__()
        self.l, self.extra = nn.Linear(4, 4), nn.Linear(4, 4)
        self.drop = nn.Dropout(0.1) if drop else None
        self.deep = self.pretrained = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.l(x)
        if self.drop is not None:
            if self.training:
                x = self.drop(x)
            return add_noise_if(x, self.training)
        if self.deep:
            x = self.extra(x)
        x = x * 3
        if self.pretrained:
            x = torch.tanh(x)
        return x


def add_noise_if(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    if enabled:
        x = x + 0.1 * torch.tanh(x)
    return x


def test_third_review_flags_with_submodules_or_train_in_a_name_and_a_dropout_only_training_called():
    m, x = Flags(drop=False), torch.randn(3, 4)
    m.deep = m.pretrained = True
    a = zoo.record(m.train(), x)
    m.deep = m.pretrained = False
    b = zoo.record(m.eval(), x)
    assert torchtrace.diff(a, b).why() == [
        "no tensor read differs before it: decided by Python state (arguments, flags, caches) "
        "\u2192 3 ops only in A in 2 hunks (in `extra`, `<root>`)"]
    m = Flags(drop=True)
    [why] = torchtrace.diff(zoo.record(m.train(), x), zoo.record(m.eval(), x)).why()
    assert why.startswith("modules in training mode in A, eval mode in B"), why


class Adapted(nn.Module):
    """A flag's `if` calls a submodule whose own forward tests a flag; a string
    argument `mode == "train"` picks a branch."""

    def __init__(self, adapter: bool) -> None:
        super().__init__()
        self.l, self.adapter, self.use_adapter = nn.Linear(4, 4), Jitter(), adapter

    def forward(self, x: torch.Tensor, mode: str = "eval") -> torch.Tensor:
        x = self.l(x)
        if self.use_adapter:
            x = self.adapter(x)
        if mode == "train":
            x = torch.tanh(x)
        return x * 2


def test_fourth_review_a_flag_deciding_a_submodule_call_and_a_string_train_are_python_state():
    """Both were put down to the mode (the call only one pass made, whose own
    `if` is a flag, counted as the mode's; `"train"` matched as a word)."""
    x = torch.randn(3, 4)
    a = zoo.record(Adapted(adapter=True).train(), x)
    b = zoo.record(Adapted(adapter=False).eval(), x)
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith("no tensor read differs before it: decided by Python state"), why
    m = Adapted(adapter=False)
    a, b = zoo.record(m.train(), x, "train"), zoo.record(m.eval(), x, "eval")
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith("no tensor read differs before it: decided by Python state"), why


class TwoCallLines(nn.Module):
    """A submodule called at two lines (under a flag that stays off, and under
    `training`), and `training` handed on in keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.l, self.adapter, self.pre = nn.Linear(4, 4), Jitter(), False

    def forward(self, x: torch.Tensor, **kw: bool) -> torch.Tensor:
        if self.pre:
            x = self.adapter(x)
        x = self.l(x) * 2
        if self.training:
            x = self.adapter(x)
        if kw["training"]:
            x = torch.tanh(x)
        return x


def test_fifth_review_a_submodule_called_at_two_lines_and_training_as_a_key_are_the_mode():
    """The guard was read at the first line naming the submodule (a flag, off in
    both passes); `kw["training"]` lost its key to string stripping."""
    m, x = TwoCallLines(), torch.randn(3, 4)
    graphs = []
    for train in (True, False):
        m.train(train)
        with torch.no_grad(), torchtrace.trace(m) as t:
            m(x, training=train)
        graphs.append(t.graph)
    why = torchtrace.diff(*graphs).why()
    assert why and all(w.startswith("modules in training mode in A, eval mode in B") for w in why), why


def test_gpt2_train_against_eval_is_the_mode_alone():
    """With sdpa attention, training's dropout makes another layout: a `clone`
    per attention layer in a hunk of its own, which was put down to Python state."""
    m, ids = zoo.gpt2(n_layer=2), torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        a, b = zoo.record(m.train(), ids), zoo.record(m.eval(), ids)
    m.eval()
    why = torchtrace.diff(a, b).why()
    assert len(why) == 1 and why[0].startswith("modules in training mode in A, eval mode in B"), why


def test_gpt2_train_against_eval_with_backward_is_the_mode_alone():
    """The backward of a reshape both passes ran (`clone`, `_unsafe_view` against
    `view`: the layout training's attention made) is inside `if is_cross_attention:
    ... else:`; that plain flag took the blame away from the mode: "decided by
    Python state". The `if` went the same way in both passes: they ran that line."""
    m, ids = zoo.gpt2(n_layer=2), torch.randint(0, 100, (2, 8))
    graphs = []
    for train in (True, False):
        m.train(train).zero_grad(set_to_none=True)
        with torchtrace.trace(m) as t:
            m(ids).logits.sum().backward()
        graphs.append(t.graph)
    m.eval().zero_grad(set_to_none=True)
    why = torchtrace.diff(*graphs).why()
    assert len(why) == 1 and why[0].startswith("modules in training mode in A, eval mode in B"), why


class FollowsMode(nn.Module):
    """A layer whose `deep` flag follows `.train()` (or not)."""

    def __init__(self, follows: bool) -> None:
        super().__init__()
        self.l, self.deep, self.follows = nn.Linear(4, 4), True, follows

    def train(self, mode: bool = True) -> "FollowsMode":
        super().train(mode)
        self.deep = mode if self.follows else self.deep
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.l(x)
        if self.deep:
            x = torch.relu(x)
        return x


def test_a_flag_flipped_with_train_in_one_layer_is_python_state_though_another_layer_ran_its_line():
    """(A review.) The other pass ran the `if self.deep:` branch's line in another
    layer: that took the hunk from the flag and gave it to training mode."""
    m = nn.Sequential(FollowsMode(False), FollowsMode(True))
    graphs = []
    for train in (True, False):
        m.train(train)
        graphs.append(zoo.record(m, torch.ones(2, 4)))
    [why] = torchtrace.diff(*graphs).why()
    assert why.startswith("no tensor read differs before it: decided by Python state"), why


class TwoCauses(nn.Module):
    """A branch on the data, a layer both passes run, then a Python flag."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.extra = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.mean() > 0:  # LINE:twocauses
            h = h.exp()
        h = self.b(h)
        if self.extra:
            h = h.sigmoid()
        return h


def test_a_read_whose_branch_ended_before_the_hunk_is_only_a_guess():
    """The read's own branch (exp) ran, then both passes ran `self.b`: the
    sigmoid after it is not known to follow from that read (here a flag)."""
    torch.manual_seed(0)
    m = TwoCauses()
    with torch.no_grad():
        m.a.weight.copy_(torch.eye(4))
        m.a.bias.zero_()
    a = zoo.record(m, torch.ones(2, 4))
    m.extra = True
    b = zoo.record(m, -torch.ones(2, 4))
    first, second = torchtrace.diff(a, b).hunks
    read = f"`test_diff_causes.py:{line_of('twocauses')}` read True in A, False in B"
    assert [n.short_op for n in first.only_a] == ["exp"] and not first.witness.weak
    assert first.explanation == f"{read} \u2192 1 op only in A (in `<root>`)"
    assert [n.short_op for n in second.only_b] == ["sigmoid"]
    assert second.witness.weak and second.witness.merged
    assert second.explanation == (f"{read} (its `if` ended before these ops, and both passes ran the same ops since: the "
                                  "nearest read that differs, maybe not the cause) \u2192 1 op only in B (in `<root>`)")


class PadLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, h: torch.Tensor, pad: torch.Tensor, has_pad: bool) -> torch.Tensor:
        h = self.fc(h)
        if has_pad:
            h = h.masked_fill(pad[..., None], 0.0)
        return h


class PadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PadLayer() for _ in range(3))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        has_pad = bool(pad.any())  # LINE:haspad
        for layer in self.layers:
            x = layer(x, pad, has_pad)
        return x


def test_a_read_kept_in_a_name_decides_every_if_that_reads_the_name():
    """`has_pad = bool(...)`, read by an `if` in each layer: the layers' ops between
    the hunks do not make the read a guess (only an `if`'s own read has a branch
    that ends)."""
    torch.manual_seed(0)
    m, x = PadNet(), torch.randn(2, 5, 4)
    d = torchtrace.diff(zoo.record(m, x, torch.ones(2, 5, dtype=torch.long)),
                        zoo.record(m, x, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])))
    assert len(d.hunks) == 3 and not any(h.witness.weak for h in d.hunks)
    assert d.why() == [f"`test_diff_causes.py:{line_of('haspad')}` read False in A, True in B \u2192 3 hunks, each "
                       "2 ops only in B (in `layers.0`, `layers.1`, `layers.2`)"]


class Counting(nn.Module):
    """A bookkeeping read right before dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop, self.head = nn.Linear(8, 16), nn.Dropout(0.2), nn.Linear(16, 1)
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x).relu()
        self.active += int((h > 0).sum())
        return self.head(self.drop(h))


def test_dropout_only_in_training_is_the_mode_even_right_after_a_read():
    torch.manual_seed(0)
    m = Counting()
    a = zoo.record(m.train(), torch.randn(4, 8))
    b = zoo.record(m.eval(), torch.randn(4, 8))
    [h] = [h for h in torchtrace.diff(a, b).hunks if h.module == "drop"]
    assert h.trained == "A" and not h.read_first
    assert h.explanation.startswith("modules in training mode in A, eval mode in B")


def test_a_training_step_against_an_evaluation_from_another_line_pairs_the_model():
    """The model called from the training step's line and from an evaluation's,
    which counts hits after it: the model's ops pair (other lines), dropout is
    put down to train/eval. They were all 'only in A' and 'only in B', as Python
    state, when the evaluation's metric ops made half of its side."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    with torchtrace.trace(m) as t:
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    m.eval()
    with torch.no_grad(), torchtrace.trace(m) as e:
        hits = (m(x).argmax(1) == y).float().sum().item()
    assert 0 <= hits <= 8
    d = torchtrace.diff(t.graph, e.graph)
    paired = [p for p in d.ops if p.a is not None and p.b is not None and p.a.short_op == "addmm"]
    assert len(paired) == 2, [(p.status, p.a and p.a.short_op, p.b and p.b.short_op) for p in d.ops]
    [drop] = [h for h in d.hunks if h.module == "2"]
    assert drop.trained == "A" and drop.explanation.startswith("modules in training mode in A, eval mode in B")


class FcAtEitherEnd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # LINE:either
            return self.fc(x).relu().exp().sin()
        return self.fc(x.tanh().cos().abs())


def test_an_arm_split_by_a_call_both_arms_make_is_still_the_if_s():
    """The arms call `fc` at opposite ends; pairing the two calls splits A's arm,
    and its ops after `fc` were said to follow an `if` that had "ended before"
    (only ops paired across lines lay between: the passes never met again)."""
    torch.manual_seed(0)
    m = FcAtEitherEnd()
    d = torchtrace.diff(zoo.record(m, torch.ones(2, 4)), zoo.record(m, -torch.ones(2, 4)))
    read = f"`test_diff_causes.py:{line_of('either')}` read True in A, False in B"
    assert all(h.witness is not None and not h.witness.weak for h in d.hunks if h.only_a or h.only_b), d.why()
    assert any(w.startswith(read + " \u2192") for w in d.why()), d.why()


class ShapeGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(x.abs().mean())  # LINE:scale
        h = self.fc(x)
        if x.shape[0] > 2:  # LINE:shapeif
            h = h.relu()
        return h * scale


def test_an_if_that_tests_a_shape_is_put_down_to_the_inputs_not_to_a_float_read_before_it():
    """A float read before the hunk differs in every pass; the `if` around the
    hunk tests the input's shape, which differs: that is the cause."""
    torch.manual_seed(0)
    m = ShapeGate()
    graphs = []
    for n in (2, 5):
        x = torch.randn(n, 4)
        with torchtrace.trace(m) as t:
            m(x)
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    h = next(h for h in d.hunks if h.kind == "structural")
    assert h.witness is None and h.shape_if == f"test_diff_causes.py:{line_of('shapeif')}"
    assert h.explanation == (f"the `if` at `test_diff_causes.py:{line_of('shapeif')}` tests a shape; input `x` "
                             "f32[2,4] \u2192 f32[5,4] (Python saw another shape or dtype) \u2192 1 op only in B "
                             "(in `<root>`)")
    assert h.to_dict()["shape_if"] == h.shape_if
    # same shapes, other data: the float read is the only read that differs, named as a guess
    x = torch.randn(5, 4) * 3
    with torchtrace.trace(m) as t:
        m(x)
    d = torchtrace.diff(graphs[1], t.graph)
    assert d.hunks and all(h.kind == "changed" and not h.shape_if for h in d.hunks)


def _finite_prefix(fc: nn.Module, x: torch.Tensor) -> list:
    outs = []
    for c in x.chunk(4):
        h = fc(c)
        if not torch.isfinite(h).all():  # LINE:finite
            break
        outs.append(h.relu())
    return outs


def test_a_break_read_in_a_helper_called_from_another_line_in_each_pass_pairs_its_reads():
    """The read's call site differs (a training step's line, an evaluation's),
    one site in each pass: the reads still pair, and the loop's break is put
    down to the read that differs, not to a loop count without a read."""
    torch.manual_seed(0)
    fc = nn.Linear(4, 4)
    x = torch.randn(8, 4)
    y = x.clone()
    y[4, 0] = float("nan")  # the 3rd chunk: breaks there
    with torch.no_grad(), torchtrace.trace(fc) as t:
        _finite_prefix(fc, x)  # LINE:site_a
    a = t.graph
    with torch.no_grad(), torchtrace.trace(fc) as t:
        _finite_prefix(fc, y)  # LINE:site_b
    b = t.graph
    assert {n.witness.called_from[0].line for n in a.nodes if n.witness} == {line_of("site_a")}
    d = torchtrace.diff(a, b)
    read = f"`test_diff_causes.py:{line_of('finite')}`"
    assert d.why() == [f"{read} read True in A, False in B \u2192 10 ops only in A (in `<root>`)"]
    assert torchtrace.diff(b, a).why() == [f"{read} read False in A, True in B \u2192 10 ops only in B (in `<root>`)"]


def _refine_by_item(h: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    while budget.item() > 0:  # LINE:item_budget
        h = torch.tanh(h) + h
        budget = budget - 1
    return h


class TwoRefines(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.dec = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        h = _refine_by_item(self.enc(x), b1)  # LINE:first_refine
        return _refine_by_item(self.dec(h), b2)  # LINE:second_refine


def test_a_while_on_a_number_read_counts_its_iterations_and_names_the_helper_s_call_site():
    """`while budget.item() > 0` reads 3, 2, 1, 0: each value is new, yet the
    loop ran 3 times (not "1x in A, 0x in B", which pairing the equal values 1
    and 0 made); in a helper called from two lines, the call is named."""
    torch.manual_seed(0)
    m = TwoRefines().eval()
    x = torch.randn(2, 4)
    T = torch.tensor
    a, b, c = (record(m, x, T(b1), T(b2)) for b1, b2 in ((2, 3), (2, 1), (4, 3)))
    at = f"`while` at `test_diff_causes.py:{line_of('item_budget')}`"
    site = "(called from `test_diff_causes.py:{}`)"
    assert torchtrace.diff(a, b).why() == [
        f"{at} {site.format(line_of('second_refine'))} ran 3\u00d7 in A, 1\u00d7 in B \u2192 8 ops only in A "
        "(in `<root>`)"]
    assert torchtrace.diff(a, c).why() == [
        f"{at} {site.format(line_of('first_refine'))} ran 2\u00d7 in A, 4\u00d7 in B \u2192 8 ops only in B "
        "(in `<root>`)"]
    [h] = torchtrace.diff(c, a).hunks
    assert (h.loop.a, h.loop.b) == (4, 2) and (h.witness.a.value, h.witness.b.value) == (4, 2)


def _accumulating_step(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = nn.functional.mse_loss(m(x), y)
    if torch.isnan(loss):  # LINE:nan_skip
        return
    loss.backward()


def test_a_skipped_backward_is_one_cause_with_the_read_even_where_grads_would_accumulate():
    """A's backward adds into .grads that existed (gradient accumulation); B's
    pass skipped backward on a NaN loss. The AccumulateGrad ops were put down
    to "autograd state, not a branch", and the hunks after the first lost the read."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(4, 4), torch.randn(4, 1)
    _accumulating_step(m, x, y)  # the .grads exist from here on
    graphs = []
    for target in (y, y * float("nan")):
        with torchtrace.trace(m) as t:
            _accumulating_step(m, x, target)
        graphs.append(t.graph)
    a, b = graphs
    assert any("accumulate_grad" in n.tags for n in a.nodes)
    d = torchtrace.diff(a, b)
    backward = [n for n in a.nodes if n.phase == "backward" and "autograd_internal" not in n.tags]
    [why] = d.why()
    assert why.startswith(f"`test_diff_causes.py:{line_of('nan_skip')}` read False in A, True in B: only A's pass "
                          f"ran backward \u2192 {len(backward)} ops only in A in "), why
    assert not any(h.grads for h in d.hunks)


class Scatter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        h = self.lin(x)
        idx = mask.nonzero().squeeze(1)  # LINE:scatter_read
        out = torch.zeros_like(h)
        out[idx] = h[idx].view(len(idx), -1)  # one statement: two views when len(idx) == 1
        for _ in range(n):
            out = torch.tanh(out)  # LINE:one_op_loop
        return out


def test_one_op_twice_from_a_line_in_no_loop_is_no_loop_but_a_one_op_loop_is():
    torch.manual_seed(0)
    m = Scatter()
    x = torch.randn(8, 4)

    def run(sel, n):
        mask = torch.zeros(8, dtype=torch.bool)
        mask[sel] = True
        return record(m, x, mask, n)

    [h] = torchtrace.diff(run([2], 1), run([1, 2, 5], 1)).structural_hunks
    assert h.loop is None and h.explanation == (
        f"`test_diff_causes.py:{line_of('scatter_read')}` read shape [1,1] in A, shape [3,1] in B \u2192 1 op only "
        "in A (in `<root>`)")
    [h] = torchtrace.diff(run([1, 2], 2), run([1, 2], 3)).structural_hunks
    assert (h.loop.via, h.loop.line, h.loop.a, h.loop.b) == ("repeat", line_of("one_op_loop"), 2, 3)


class FloatCount(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, k: torch.Tensor, extra: int = 0) -> torch.Tensor:
        for _ in range(int(k.item()) + extra):  # LINE:float_count
            x = torch.relu(self.cell(x))
        return x


def test_a_float_read_whose_integer_part_is_the_loop_count_is_named_without_a_hedge():
    torch.manual_seed(0)
    m = FloatCount()
    x = torch.randn(2, 4)
    a, b = record(m, x, torch.tensor(1.5)), record(m, x, torch.tensor(2.75))
    [h] = torchtrace.diff(a, b).structural_hunks
    assert not h.witness.weak and (h.loop.a, h.loop.b) == (1, 2)
    assert h.explanation.startswith(f"`test_diff_causes.py:{line_of('float_count')}` read 1.5 in A, 2.75 in B; the "
                                    "block at "), h.explanation
    # a float whose integer parts are not the counts (3 and 5: Python added to them) stays a guess
    [h] = torchtrace.diff(record(m, x, torch.tensor(1.5), 2), record(m, x, torch.tensor(2.75), 3)).structural_hunks
    assert (h.loop.a, h.loop.b) == (3, 5) and h.witness.weak


class PadOrLog(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, log: bool = False) -> torch.Tensor:
        n = x.shape[0]
        h = self.fc(x)
        if n < 4:  # LINE:pad_by_name
            h = torch.cat([h, h.new_zeros(4 - n, 4)])
        if log:
            h = h * 1.0  # LINE:flag_logged
        return h


def test_a_shape_tested_through_a_name_is_named_and_no_shape_test_says_python_state():
    """`n = x.shape[0]` ... `if n < 4:` tests the shape; a flag's `if` with
    another input shape is Python state (the shape was named as the cause)."""
    torch.manual_seed(0)
    m = PadOrLog()
    at = f"the `if` at `test_diff_causes.py:{line_of('pad_by_name')}` tests a shape"
    [h] = torchtrace.diff(record(m, torch.randn(4, 4)), record(m, torch.randn(2, 4))).structural_hunks
    assert h.cause.startswith(f"{at}; input `x` f32[4,4] \u2192 f32[2,4]"), h.cause
    [h] = torchtrace.diff(record(m, torch.randn(4, 4)), record(m, torch.randn(5, 4), True)).structural_hunks
    assert h.only_b[0].source.line == line_of("flag_logged")
    assert h.cause == ("no tensor read differs before it: decided by Python state (no `if` around these ops tests "
                       "a shape); the inputs differ too: input `x` f32[4,4] \u2192 f32[5,4]"), h.cause


def _early_stop_step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, best: list) -> None:
    loss = m(x).square().mean()
    if loss > best[0]:  # LINE:plateau
        return
    best[0] = loss.item()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_a_skipped_backward_takes_the_read_that_skipped_the_ops_right_before_it():
    """`if loss > best: return` ... `best = loss.item()`, then backward: the
    backward hunk had no cause (the read was said only for `.item()`)."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    graphs = []
    for best in ([float("inf")], [-1.0]):
        with torchtrace.trace(m) as t:
            _early_stop_step(m, opt, x, best)
        graphs.append(t.graph)
    why = torchtrace.diff(*graphs).why()
    read = f"`test_diff_causes.py:{line_of('plateau')}` read False in A, True in B"
    assert len(why) == 2 and why[0].startswith(f"{read} \u2192 1 op only in A"), why
    assert why[1].startswith(f"{read}: only A's pass ran backward and an optimizer step"), why


def _skip_on_inf(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, scale: float) -> None:
    loss = m(x).mean()
    opt.zero_grad()
    (loss * scale).backward()
    if not torch.isfinite(m.weight.grad).all():  # LINE:inf_check
        return
    opt.step()
    loss.item()


def test_a_read_of_the_gradients_that_an_if_tests_is_a_cause_for_the_ops_after_the_step():
    """The read is computed from the gradients (phase optimizer), and reads of
    that phase were passed over for other phases' hunks: the `.item()` after
    the skipped step was put down to "Python state"."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    graphs = []
    for scale in (1.0, float("inf")):
        with torchtrace.trace(m) as t:
            _skip_on_inf(m, opt, x, scale)
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    read = f"`test_diff_causes.py:{line_of('inf_check')}` read True in A, False in B"
    assert d.why() and all(w.startswith(read) for w in d.why()), d.why()


class BudgetRuns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, budgets: list) -> torch.Tensor:
        h = self.fc(x)
        for b in budgets:
            while b.item() > 0:  # LINE:budget_runs
                h = torch.tanh(h) + h
                b = b - 1
        return h


def _act(h: torch.Tensor) -> torch.Tensor:
    return torch.tanh(h)


class ActLoop(nn.Module):
    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(n):
            x = _act(x)
        return x


def test_a_number_while_entered_anew_by_an_outer_loop_counts_each_run_and_a_helpers_op_repeats():
    """A review of the `while n.item() > 0` counting: an outer loop's next run
    reads the `while` at once (its exit read is no iteration), and one op a
    helper runs per call of a loop is still a loop."""
    torch.manual_seed(0)
    m = BudgetRuns().eval()
    x = torch.randn(2, 4)
    T = torch.tensor
    at = f"`while` at `test_diff_causes.py:{line_of('budget_runs')}`"
    why = torchtrace.diff(record(m, x, [T(0), T(2)]), record(m, x, [T(0), T(3)])).why()
    assert why == [f"{at} ran 2\u00d7 in A, 3\u00d7 in B (the 2nd of its 2 runs) \u2192 4 ops only in B (in `<root>`)"]
    why = torchtrace.diff(record(m, x, [T(2), T(3)]), record(m, x, [T(2), T(1)])).why()
    assert why == [f"{at} ran 3\u00d7 in A, 1\u00d7 in B (the 2nd of its 2 runs) \u2192 8 ops only in A (in `<root>`)"]
    [h] = torchtrace.diff(record(ActLoop(), x, 2), record(ActLoop(), x, 4)).structural_hunks
    assert (h.loop.via, h.loop.a, h.loop.b) == ("repeat", 2, 4)


class SameShapeTest(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(x.abs().mean())
        h = self.fc(x)
        if x.dim() == 2:
            h = h * 2
            h = h.relu() if scale > 1.0 else h
        return h * scale


def test_a_shape_if_that_went_the_same_way_in_both_passes_is_not_named():
    """`if x.dim() == 2` holds in both passes (the branch's other op ran in
    both); the op only B ran is decided on its own line: not the shape."""
    torch.manual_seed(0)
    m = SameShapeTest()
    [h] = torchtrace.diff(record(m, torch.randn(3, 4) * 0.1), record(m, torch.randn(5, 4) * 10)).structural_hunks
    assert not h.shape_if and h.witness is not None and h.witness.weak, h.explanation


class ShapeLayouts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.n, self.flag = 0, True

    def forward(self, x: torch.Tensor, layout: str, flag: bool = True) -> torch.Tensor:
        h = self.fc(x)
        if layout == "one-line":
            h = h + 1  # (the block ran in both passes: the `if` below did too)
            if x.shape[0] < 8: h = h * 2  # LINE:one_line_if
        elif layout == "black":
            h = h + 1
            if (  # LINE:black_if
                x.shape[0] < 8
                and flag
            ):
                h = h * 2
        elif layout == "with":
            h = h + 1
            if x.shape[0] < 8:  # LINE:with_in_if
                with torch.no_grad():
                    h = h * 2
        elif layout == "for":
            h = h + 1
            if x.shape[0] < 8:
                for _ in range(self.n):  # (Python state: 0 iterations, then 2)
                    h = h * 2
            self.n = 2
        elif layout == "flag":
            if self.flag:
                if x.dim() == 2: h = h.relu()  # (the outer flag decides: that `if` held in both)
            self.flag = False
        return h


def test_a_shape_if_is_found_on_one_line_over_several_and_around_a_loop_and_no_if_is_no_claim():
    """Reviews: `if c: stmt` on one line, a condition over several lines, a
    `with` inside the branch; not a shape `if` around a loop that Python state ran
    0 times, nor one inside a flag's `if` that held in one pass only; and an input
    shape that changes ops inside torch (nn.Linear of a 3-D input) with no `if`
    at all is no "Python state"."""
    torch.manual_seed(0)
    for layout, marker in (("one-line", "one_line_if"), ("black", "black_if"), ("with", "with_in_if"),
                           ("for", None), ("flag", None)):
        m = ShapeLayouts()
        rows = 6 if layout == "for" else 10  # (the `if` holds in both passes there)
        [h] = torchtrace.diff(record(m, torch.randn(4, 4), layout),
                              record(m, torch.randn(rows, 4), layout)).structural_hunks
        if marker is None:
            assert not h.shape_if and "tests a shape" not in h.cause, (layout, h.cause)
            continue
        at = f"the `if` at `test_diff_causes.py:{line_of(marker)}` tests a shape"
        assert h.cause.startswith(at), (layout, h.cause)
    lin = nn.Linear(4, 4)
    d = torchtrace.diff(record(lin, torch.randn(2, 4)), record(lin, torch.randn(3, 2, 4)))
    assert d.structural_hunks and all(h.cause.startswith("no tensor read differs before it; input `input`")
                                      for h in d.structural_hunks), d.why()


class ReadInShapeIf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if x.shape[0] > 2 and x.abs().mean().item() > 0.5:  # LINE:read_in_shape_if
            h = h * 2
        return h


def test_a_read_in_the_shape_if_s_own_test_stays_the_cause():
    torch.manual_seed(0)
    m = ReadInShapeIf()
    [h] = torchtrace.diff(record(m, torch.randn(4, 4) * 0.01), record(m, torch.randn(10, 4) * 10)).structural_hunks
    assert not h.shape_if and h.witness is not None and h.witness.line == line_of("read_in_shape_if"), h.cause


class LoggedThenLoop(nn.Module):
    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        x.abs().sum().item()  # a logged float whose integer part happens to be k
        for _ in range(k):
            x = torch.tanh(x)
        return x


def test_a_float_that_feeds_no_loop_stays_a_guess_even_when_its_integer_part_is_the_count():
    [h] = torchtrace.diff(record(LoggedThenLoop(), torch.full((2, 4), 2.2 / 8), 2),
                          record(LoggedThenLoop(), torch.full((2, 4), 3.1 / 8), 3)).structural_hunks
    assert (h.loop.a, h.loop.b) == (2, 3) and h.witness.weak, h.explanation


def _drain(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    while n.item() > 0:  # LINE:drain
        x = torch.tanh(x)
        n = n - 1
    return x


class DrainTwice(nn.Module):
    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = _drain(x, n)
            x = x + 1
        return x


class OneLineWhile(nn.Module):
    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        while n.item() > 0: x = torch.tanh(x); n = n - 1  # LINE:one_line_while
        return x


def test_a_number_while_in_a_helper_called_again_and_one_on_one_line_count_their_iterations():
    x, T = torch.randn(2, 4), torch.tensor
    why = torchtrace.diff(record(DrainTwice(), x, T(2)), record(DrainTwice(), x, T(3))).why()
    assert why == [f"`while` at `test_diff_causes.py:{line_of('drain')}` ran 2\u00d7 in A, 3\u00d7 in B (each of its 2 "
                   "runs) \u2192 2 hunks, each 3 ops only in B (in `<root>`)"], why
    why = torchtrace.diff(record(OneLineWhile(), x, T(2)), record(OneLineWhile(), x, T(4))).why()
    assert why == [f"`while` at `test_diff_causes.py:{line_of('one_line_while')}` ran 2\u00d7 in A, 4\u00d7 in B "
                   "\u2192 6 ops only in B (in `<root>`)"], why


class GuardThroughWith(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.abs().sum().item())
        h = x * 2
        if n > 0:
            with torch.autocast("cpu", enabled=False):
                ok = bool(h.mean() > 0)  # LINE:guard_ok
                if not ok:
                    return h
                h = h.relu()
        return h + 1


def _shrink(h: torch.Tensor, depth: int) -> torch.Tensor:
    if depth:
        h = _shrink(h, depth - 1)
    while h.abs().sum().item() > 1:  # LINE:shrink
        h = h * 0.5
    return h


class Shrunk(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _shrink(x * 2, 1) + 1


class CountMethod(nn.Module):
    def count(self, x: torch.Tensor) -> int:
        return int(x.mean().item())  # LINE:count_method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * 2
        for _ in range(self.count(x)):
            h = h.relu() + 1
        return h + 1


def test_third_review_an_outer_if_a_recursive_while_and_a_returned_count():
    """The read inside a `with` decides, not the outer `if`'s name; a recursive
    helper's `while` counts each call's run; a helper returning the count names it."""
    a, b = record(GuardThroughWith(), torch.arange(8.).reshape(2, 4)), \
        record(GuardThroughWith(), -torch.arange(8.).reshape(2, 4) * 3)
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith(f"`test_diff_causes.py:{line_of('guard_ok')}` read True in A, False in B"), why
    why = torchtrace.diff(record(Shrunk(), torch.ones(2, 4)), record(Shrunk(), torch.ones(2, 4) * 4)).why()
    at = f"`while` at `test_diff_causes.py:{line_of('shrink')}` (called from "
    assert len(why) == 1 and why[0].startswith(at), why
    assert "ran 4\u00d7 in A, 6\u00d7 in B" in why[0], why
    [h] = torchtrace.diff(record(CountMethod(), torch.ones(2, 4) * 2.3),
                          record(CountMethod(), torch.ones(2, 4) * 4.6)).structural_hunks
    assert h.witness.line == line_of("count_method") and not h.witness.weak, h.explanation


class PadGuardThroughWith(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple:
        has_pad = bool(x.min() < 0)  # LINE:has_pad_with
        big = bool(x.abs().max() > 2)
        h = x * 2
        if has_pad:
            with torch.autocast("cpu", enabled=False):
                h = h.relu()
        return h + 1, big


def _scale(h: torch.Tensor) -> float:
    return h.abs().mean().item()


class ScaledLoop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * _scale(x)
        for _ in range(x.shape[0]):
            h = h.relu() + 1
        return h


class WholeBodyIf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # LINE:whole_body_if
            return x.sum(0).relu()
        return x


def test_fourth_review_guards_through_blocks_returned_floats_and_a_forward_that_is_one_if():
    """The name an `if` tests decides the ops in a `with` inside it (an unused
    nearer read was named); a helper returning a float that is no count stays a
    guess; a forward whose whole body is a shape `if` ran in both passes."""
    [why] = torchtrace.diff(record(PadGuardThroughWith(), torch.randn(2, 4) - 3),
                            record(PadGuardThroughWith(), torch.rand(2, 4) + 1)).why()
    assert why.startswith(f"`test_diff_causes.py:{line_of('has_pad_with')}` read True in A, False in B"), why
    [h] = torchtrace.diff(record(ScaledLoop(), torch.ones(2, 4) * 2.3),
                          record(ScaledLoop(), torch.ones(3, 4) * 3.6)).structural_hunks
    assert h.witness is not None and h.witness.weak, h.explanation
    [h] = torchtrace.diff(record(WholeBodyIf(), torch.randn(2, 2, 4)), record(WholeBodyIf(), torch.randn(2, 4))).hunks
    assert h.shape_if == f"test_diff_causes.py:{line_of('whole_body_if')}", h.explanation


def test_the_same_ops_returning_more_values_names_the_values():
    """BERT with ``output_attentions`` runs the same ops and returns the attention
    probabilities too: the diff said "same ops, other dataflow: 0 ops changed"
    and, in its body, that "the returned values differ"."""
    m, ids = zoo.bert(), torch.randint(0, 100, (1, 6))
    m.set_attn_implementation("eager")
    a, b = (record(m, ids, output_attentions=flag) for flag in (False, True))
    probs = [n for n in b.nodes if n.op == "aten._softmax.default"]
    assert len(probs) == 2 and len(b.outputs) == len(a.outputs) + 2
    d = torchtrace.diff(a, b)
    assert d.summary() == "structure differs: same ops, other returned values: 0 ops changed"
    [why] = d.why()
    assert why == "only B returned 2 values: " + ", ".join(
        f"`_softmax` f32[1,2,6,6] in `{b.module(n.module).path}` (`modeling_bert.py:{n.source.line}`)"
        for n in probs) + f" ({len(a.outputs)} in A, {len(b.outputs)} in B)"
    assert "the returned values differ" not in str(d) and why in str(d)
    assert torchtrace.diff(b, a).why() == [why.replace("only B", "only A").replace(
        f"({len(a.outputs)} in A, {len(b.outputs)} in B)", f"({len(b.outputs)} in A, {len(a.outputs)} in B)")]


class SwapOrPick(nn.Module):
    def forward(self, x: torch.Tensor, how: str):
        y, z = torch.tanh(x), torch.sigmoid(x)  # LINE:swap
        return {"yz": (y, z), "zy": (z, y), "y": (y,), "z": (z,)}[how]


@pytest.mark.parametrize("how, want", [
    ("zy", "the same 2 values returned in another order"),
    ("z", "only B returned 1 value: `sigmoid` f32[3] ({where}); only A returned 1 value: `tanh` f32[3] ({where})"),
])
def test_the_same_ops_returning_other_values_says_which(how, want):
    x, m = torch.randn(3), SwapOrPick()
    first = "yz" if how == "zy" else "y"
    graphs = [record(m, x, h) for h in (first, how)]
    assert torchtrace.diff(*graphs).why() == [want.format(where=f"`test_diff_causes.py:{line_of('swap')}`")]


def _adam_step(m: nn.Module, oa, ob, second: bool) -> Graph:
    with torchtrace.trace(m) as t:
        m(torch.ones(8, 4)).pow(2).mean().backward()
        if second:
            ob.step()  # LINE:second_opt
        else:
            oa.step()  # LINE:first_opt
        oa.zero_grad()
    return t.graph


def test_a_read_paired_across_two_lines_is_no_read_that_differs():
    """(Audits.) Two Adams stepped on two lines: their step counts' reads pair up,
    and "`m.py:11` read 3.0 in A, 1.0 in B" named A's line for B's read, which
    line 11 never made; two arms of an `if` whose reads pair up were blamed on
    them. Reads of two statements are no read that went another way: each op's
    row names both lines, and no cause or "other reads" line names them."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    oa, ob = torch.optim.Adam(m.parameters()), torch.optim.Adam(m.parameters())
    for _ in range(2):
        _adam_step(m, oa, ob, False)
    a, b = _adam_step(m, oa, ob, False), _adam_step(m, oa, ob, True)
    first, second = (f"test_diff_causes.py:{line_of(k)}" for k in ("first_opt", "second_opt"))
    for d, (la, lb, va, vb) in ((torchtrace.diff(a, b), (first, second, "3.0", "1.0")),
                                (torchtrace.diff(b, a), (second, first, "1.0", "3.0"))):
        text = str(d)
        rows = [line for line in text.splitlines() if line.startswith("! ")]
        assert len(rows) == 2 and all(f"-> {va}" in r and f"# {la}" in r and f"B read {vb}, B at {lb}" in r
                                      for r in rows), rows
        assert "other reads that differ" not in text and all("read" not in w for w in d.why()), d.why()


class _TwoArms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.beams = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            if self.beams == 1:
                h = self.l(x)
                x = h.argmax(-1, keepdim=True).float().expand(-1, 4)
                done = bool(h.max() == 1e9)  # LINE:arm_a
            else:
                h = self.l(x.repeat(2, 1))
                x = h.topk(2, -1).values.sum(-1, keepdim=True)[:2].expand(-1, 4)
                done = not bool(h.max() != 1e9)  # LINE:arm_b
            if done:
                break
        return x


def test_two_arms_of_a_flag_whose_reads_pair_up_are_put_down_to_python_state():
    """(An audit: greedy against beam search in `generate`.) Each arm reads at its
    own line; the reads paired up and every iteration after the first was blamed
    on "`m.py:8` read False in A, `m.py:11` read True in B"."""
    torch.manual_seed(0)
    m, x = _TwoArms(), torch.randn(2, 4)
    with torchtrace.trace(m) as ta:
        m(x)
    m.beams = 2
    with torchtrace.trace(m) as tb:
        m(x)
    why = torchtrace.diff(ta.graph, tb.graph).why()
    assert len(why) == 1 and why[0].startswith("no tensor read differs before it: decided by Python state"), why


class _LossKinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 1)
        self.kind, self.n = "reg", 1

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.l(x)
        if self.kind == "reg":
            if self.n == 1:
                loss = nn.functional.mse_loss(out.squeeze(), y.squeeze())
            else:
                loss = nn.functional.mse_loss(out, y)
        else:
            loss = nn.functional.cross_entropy(out.view(-1, self.n), y.view(-1))
        return loss


def test_a_flag_s_arm_with_an_if_inside_is_python_state_though_an_input_s_dtype_differs():
    """(An audit: BERT's problem_type, regression against classification.) The
    first op only A ran sits in an `if` nested in the flag's arm, an `if` B never
    reached: the diff said the labels' dtype decided it ("Python saw another
    shape or dtype"); the `if` around it, on the flag, tests no shape."""
    torch.manual_seed(0)
    m, x = _LossKinds(), torch.randn(3, 4)
    y_reg, y_cls = torch.tensor([0.5, 1.0, 0.0]), torch.tensor([0, 0, 0])
    with torchtrace.trace(m) as ta:
        m(x, y_reg)
    m.kind = "cls"
    with torchtrace.trace(m) as tb:
        m(x, y_cls)
    [why] = torchtrace.diff(ta.graph, tb.graph).why()
    assert why.startswith("no tensor read differs before it: decided by Python state (no `if` around these ops "
                          "tests a shape); the inputs differ too: input `y` f32[3] \u2192 i64[3]"), why


_SKIPPED_LIB = '''
import torch, torch.nn as nn


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = self.b(h).relu()
        return h.mean()
'''


def _train_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)  # LINE:lib_train


def _eval_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)  # LINE:lib_eval


def test_a_skipped_library_s_read_named_by_two_callers_lines_is_still_the_cause(tmp_path, monkeypatch):
    """(A review of the rule that reads at two lines are two statements.) A read in
    a library the trace skips is named by the user's line that called it: a
    training and an evaluation step give two lines for one read, which must stay
    the cause."""
    import importlib
    (tmp_path / "skippedlib").mkdir()
    (tmp_path / "skippedlib" / "__init__.py").write_text("")
    (tmp_path / "skippedlib" / "m.py").write_text(_SKIPPED_LIB)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    model = importlib.import_module("skippedlib.m").M()
    x1, x2 = torch.full((2, 4), 1.0), torch.full((2, 4), -1.0)
    graphs = []
    for step, x in ((_train_step, x1), (_eval_step, x2)):
        with torchtrace.trace(model, skip=["skippedlib/"]) as t:
            step(model, x)
        graphs.append(t.graph)
    reads = [n.witness.value for g in graphs for n in g.nodes if n.witness is not None]
    assert len(reads) == 2 and reads[0] != reads[1]
    [why] = torchtrace.diff(*graphs).why()
    a, b = (f"`test_diff_causes.py:{line_of(k)}`" for k in ("lib_train", "lib_eval"))
    assert why.startswith(f"{a} read {reads[0]} in A, {b} read {reads[1]} in B \u2192"), why


class _ShapeThenFlag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, flag: bool) -> torch.Tensor:
        h = self.a(x)
        if x.shape[-1] == 4:  # LINE:outer_shape_if
            if flag:
                h = self.b(h)
        return h.sum()


def test_an_outer_if_on_a_shape_that_went_the_same_way_is_not_named():
    """(A review of the walk to the `if` around a nested one.) The outer `if` tests
    a shape and went the same way in both passes (B ran no op inside it): it was
    named ("the `if` at m.py:7 tests a shape"), where the inner flag decided."""
    torch.manual_seed(0)
    m, xa, xb = _ShapeThenFlag(), torch.randn(2, 4), torch.randn(3, 4)
    with torchtrace.trace(m) as ta:
        m(xa, True)
    with torchtrace.trace(m) as tb:
        m(xb, False)
    [why] = torchtrace.diff(ta.graph, tb.graph).why()
    assert f"test_diff_causes.py:{line_of('outer_shape_if')}" not in why and "tests a shape" not in why, why


def _moe_steps(m: nn.Module, routes, steps: int = 1):
    graphs = []
    for experts in routes:
        x = torch.zeros(len(experts), len(m.experts))
        x[range(len(experts)), experts] = 5.0
        m.zero_grad(set_to_none=True)
        with torchtrace.trace(m) as t:
            for _ in range(steps):
                m(x).sum().backward()
        graphs.append(t.graph)
    return graphs


def _owned_as_autograd_says(d) -> int:
    """Each backward hunk's ``backward_of`` against the oracle: its ops' autograd Nodes,
    the forward ops that made them, the hunks that hold those (None: an op both passes
    ran, the line's other ops decide). Returns how many."""
    held = {(side, n.id): h.index for h in d.hunks for side, ops in (("A", h.only_a), ("B", h.only_b)) for n in ops}
    theirs = [h for h in d.hunks if h.backward_of is not None]
    for h in theirs:
        owners = {held.get((side, g.autograd_node(n.autograd_node).op))
                  for side, g, ops in (("A", d.a, h.only_a), ("B", d.b, h.only_b)) for n in ops}
        assert owners - {None} == {h.backward_of} and h.backward_of < h.index, (h.index, owners, h.backward_of)
        assert d.hunks[h.backward_of].witness == h.witness
    return len(theirs)


def test_the_backward_of_experts_on_both_sides_is_cut_per_expert_and_step():
    """(A review.) Experts {0, 2, 4} in A, {1, 3} in B: the backward hunk (A's
    experts, then B's) is cut per expert; in a trace of two steps each step's
    backward takes its own step's reads (it took the first step's)."""
    torch.manual_seed(0)
    d = torchtrace.diff(*_moe_steps(zoo.Experts(5), ([0, 2, 4], [1, 3])))
    theirs = [h for h in d.hunks if h.backward_of is not None]
    assert {"experts.1", "experts.2", "experts.3", "experts.4"} <= {h.module for h in theirs}, d.why()
    _owned_as_autograd_says(d)
    assert not any(h.only_a and h.only_b for h in theirs)
    one_sided = torchtrace.diff(*_moe_steps(zoo.Experts(5), ([0, 1], [0, 0])))  # (no piece: expert 0's shape)
    assert _owned_as_autograd_says(one_sided) == 2  # expert 1's (its read) and expert 0's (the shape of x[mask])
    assert {h.witness.a.shape for h in one_sided.hunks if h.backward_of is not None} == {None, (1, 5)}
    d = torchtrace.diff(*_moe_steps(zoo.Experts(4), ([0, 1], [0, 2]), steps=2))
    theirs = [h for h in d.hunks if h.backward_of is not None]
    # (the root's k-th call read it: each step's backward, its own step's)
    calls = [h.witness.call[1] for h in theirs]
    assert calls[:2] == [0, 0] and set(calls[2:]) == {1}, d.why()
    assert all(d.hunks[h.backward_of].witness.call == h.witness.call for h in theirs)


def test_the_backward_of_two_experts_each_takes_its_own_read():
    """(An audit.) Experts {0, 1} in A, {0, 2} in B, with backward: the backward of
    expert 1 (only in A) and of expert 2 (only in B) were one hunk, put down to
    expert 2's read alone ("read False in A, True in B → 6 ops only in A, 6 only in B")."""
    torch.manual_seed(0)
    graphs = _moe_steps(zoo.Experts(4), ([0, 1, 1], [0, 2, 2]))
    at = f"`zoo.py:{zoo.marked_line(zoo.__file__, 'experts_any')}`"
    for d, (one, two) in ((torchtrace.diff(*graphs), ("1", "2")), (torchtrace.diff(*graphs[::-1]), ("2", "1"))):
        theirs = [h for h in d.hunks if h.backward_of is not None]
        assert [(h.module, bool(h.only_a), bool(h.only_b)) for h in theirs] == \
            [(f"experts.{one}", True, False), (f"experts.{two}", False, True)], d.why()
        for h in theirs:
            assert h.explanation.startswith(f"{at} read {'True in A, False' if h.only_a else 'False in A, True'} in B"
                                            f" \u2192 their backward: 6 ops only in {'A' if h.only_a else 'B'}"), \
                h.explanation
            owner = d.hunks[h.backward_of]  # the forward hunk of the same expert, on the same side
            assert bool(owner.only_a) == bool(h.only_a) and owner.witness == h.witness
        assert [h.index for h in d.hunks] == list(range(len(d.hunks)))
        assert "# 5." in str(d) and d.to_dict()["hunks"][-1]["index"] == len(d.hunks) - 1
        assert d.mirror().to_dict() == torchtrace.diff(d.b, d.a).to_dict()  # (cut again in the other order)


class MaskOrNot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        h = x.relu() if mask is None else x.masked_fill(mask == 0, 0.0)  # (no mask: another path)
        return self.fc(h)


def test_ops_run_because_an_input_was_not_given_are_not_computed_from_it():
    """(An audit.) GPT-2 without `attention_mask` against with one: A's own ops
    (transformers' checks when no mask is given) were said to be computed from
    the mask only B was given."""
    torch.manual_seed(0)
    m, x = MaskOrNot(), torch.randn(3, 4)
    graphs = []
    for kw in ({}, {"mask": torch.ones(3, 4)}):
        with torchtrace.trace(m) as t:
            m(x, **kw)
        graphs.append(t.graph)
    [h] = torchtrace.diff(*graphs).structural_hunks
    assert [n.short_op for n in h.only_a] == ["relu"] and [n.short_op for n in h.only_b] == [
        "eq.Scalar", "masked_fill.Scalar"]
    assert h.explanation.startswith("input `mask` only in B (f32[3,4]) (B's ops computed from it, A's run "
                                    "without it)"), h.explanation
    [h] = torchtrace.diff(*graphs[::-1]).structural_hunks
    assert "(A's ops computed from it, B's run without it)" in h.explanation, h.explanation
