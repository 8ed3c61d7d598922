"""torchtrace.diff: loops ended by a read in their body (a done flag, a number
compared and kept, a helper with ``break``), as in transformers' ``generate``."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchtrace
import zoo
from torchtrace.ir import Graph


def line_of(marker: str) -> int:
    return zoo.marked_line(__file__, marker)


def stop(c: torch.Tensor) -> bool:
    return bool(c <= 0)  # LINE:helper_read


class Loops(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, cnt: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "flag":
            done = False
            while not done:  # LINE:flag_while
                x = self.l(x)
                cnt = cnt - 1
                done = bool(cnt <= 0)  # LINE:flag_read
        elif kind == "number":
            go = True
            while go:  # LINE:number_while
                x = self.l(x)
                cnt = cnt - 1
                go = cnt.item() > 0  # LINE:number_read
        elif kind == "break":
            while True:  # LINE:break_while
                x = self.l(x)
                cnt = cnt - 1
                if cnt.item() <= 0:  # LINE:break_read
                    break
        elif kind == "helper":
            for _ in range(10):  # LINE:helper_for
                x = self.l(x)
                cnt = cnt - 1
                if stop(cnt):
                    break
        else:  # a read in the body that decides no count: each iteration's own `if`
            for i in range(4):
                v = bool(cnt[i] > 0)  # LINE:per_item
                if v:
                    x = self.l(x)
        return x


def _run(m: nn.Module, n, kind: str, x: torch.Tensor) -> Graph:
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(x, torch.tensor(n), kind)
    return t.graph


@pytest.mark.parametrize("kind, loop, read, values", [
    ("flag", "`while` at `test_diff_loops.py:{flag_while}`", "flag_read", ("True", "False", "False", "True")),
    ("number", "`while` at `test_diff_loops.py:{number_while}`", "number_read", ("2", "4", "4", "0")),
    ("helper", "`for` at `test_diff_loops.py:{helper_for}`", "helper_read", ("True", "False", "False", "True")),
    ("break", "`while` at `test_diff_loops.py:{break_while}`", "break_read", ("2", "4", "4", "0")),
])
def test_a_loop_ended_by_a_read_in_its_body_is_named_with_its_iterations(kind, loop, read, values):
    """The loop used to be "the loop at" the read's line (a helper's `return`),
    with a count one short (2x for 3 iterations), or 0x/1x for a number read."""
    torch.manual_seed(0)
    m, x = Loops(), torch.randn(2, 4)
    head = loop.format(**{k: line_of(k) for k in ("flag_while", "number_while", "helper_for", "break_while")})
    at = f"`test_diff_loops.py:{line_of(read)}`"
    three, five, one = _run(m, 3, kind, x), _run(m, 5, kind, x), _run(m, 1, kind, x)
    per = 5 if kind not in ("number", "break") else 4  # ops per iteration (a number read's compare is Python's)
    assert torchtrace.diff(three, five).why() == [
        f"{head} ran 3\u00d7 in A, 5\u00d7 in B; {at} read {values[0]} in A, {values[1]} in B "
        f"\u2192 {2 * per} ops only in B (in `<root>`)"]
    assert torchtrace.diff(five, one).why() == [
        f"{head} ran 5\u00d7 in A, 1\u00d7 in B; {at} read {values[2]} in A, {values[3]} in B "
        f"\u2192 {4 * per} ops only in A (in `<root>`)"]


def test_a_read_that_each_iteration_branches_on_is_still_no_loop_count():
    torch.manual_seed(0)
    m = Loops()
    x = torch.randn(2, 4)
    why = " ".join(torchtrace.diff(_run(m, [1, -1, 1, 1], "items", x), _run(m, [1, 1, -1, 1], "items", x)).why())
    assert f"test_diff_loops.py:{line_of('per_item')}` read" in why
    assert "\u00d7 in A" not in why  # no loop ran more times


def test_generate_names_its_decode_loop_and_its_iterations():
    """transformers' `generate` ends its `while` by a read in a stopping
    criterion it calls from the loop's body: the loop was "the loop at
    utils.py:396", 2x for 3 steps, and 5x against 0x for an eos at the first
    step (6 steps against 1)."""
    import inspect

    from transformers.generation import utils

    m, ids = zoo.gpt2(n_layer=1), torch.tensor([[1, 2, 3]])

    def generate(**kw):
        with torchtrace.trace(m) as t:
            out = m.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, do_sample=False, **kw)
        return t.graph, out

    def loop_of(d):
        (h,) = d.structural_hunks
        return h.loop.keyword, h.loop.file, h.loop.a, h.loop.b

    three, out = generate(max_new_tokens=3, eos_token_id=None)
    five, _ = generate(max_new_tokens=5, eos_token_id=None)
    src = inspect.getsourcefile(utils)
    assert loop_of(torchtrace.diff(three, five)) == ("while", src, 3, 5)
    first = int(out[0, 3])  # greedy: the first new token, made the eos
    (ended, o1), (ran, o6) = (generate(max_new_tokens=6, eos_token_id=e) for e in (first, (first + 1) % 100))
    assert o1.shape[1] == 4 and o6.shape[1] == 9
    assert loop_of(torchtrace.diff(ran, ended)) == ("while", src, 6, 1)
    d = torchtrace.diff(ran, ended)
    line = d.structural_hunks[0].loop.line
    assert inspect.getsource(utils).splitlines()[0] and open(src).read().splitlines()[line - 1].strip().startswith(
        "while ")


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, reps: list) -> torch.Tensor:
        for r in reps:
            n = torch.tensor(r)
            while n > 0:  # LINE:nested_while
                x = torch.tanh(self.l(x))
                n = n - 1
        return x


def _nested(reps: list):
    torch.manual_seed(0)
    m, x = Nested(), torch.randn(2, 4)
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(x, reps)
    return t.graph


@pytest.mark.parametrize("a, b, changed", [([3, 1], [1, 3], [0, 1]), ([3, 1], [2, 2], [0, 1]),
                                           ([1, 0], [0, 1], [0, 1]), ([2, 0, 1], [0, 2, 1], [0, 1])])
def test_runs_of_a_while_whose_counts_swap_name_each_run_s_counts(a, b, changed):
    """With as many iterations in all, the alignment pairs the bodies across the
    runs' ends: a hunk holds one run's exit read and the next run's start. It
    said "ran 0x in A, 1x in B" and "1x in A, 0x in B". Runs of 0 iterations
    read the exit value most: [1, 0] against [0, 1] read "0x in A, 1x in B"
    and "2x in A, 1x in B" (the runs were split at the wrong value). (Each
    hunk's ops can still pair across runs: README, Limits.)"""
    head = f"`while` at `test_diff_loops.py:{line_of('nested_while')}`"
    whys = torchtrace.diff(_nested(a), _nested(b)).why()
    assert [w.split(" \u2192 ")[0] for w in whys] == [
        f"{head} ran {a[k]}\u00d7 in A, {b[k]}\u00d7 in B (the {['1st', '2nd', '3rd'][k]} of its {len(a)} runs)"
        for k in changed]


with torch.random.fork_rng():  # (the same weights in every process: counts below depend on them)
    torch.manual_seed(4)
    L4 = nn.Linear(4, 4)
    W4 = torch.randn(4, 4) * 0.3


def step_until(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    while True:  # LINE:helper_while
        x = L4(x)
        n = n - 1
        if n.item() <= 0:  # LINE:helper_break
            break
    return x


def calls_per_run(x: torch.Tensor, ns: torch.Tensor) -> torch.Tensor:
    for i in range(3):
        x = step_until(x, ns[i]) * 2
    return x


def nested_return(x: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    for i in range(3):
        x = x * 2
        for j in range(3):
            x = torch.tanh(x)
            if stop[i, j] > 0:  # LINE:nested_return
                return x
    return x


def per_item_named(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    for i in range(4):
        ok = bool(m[i] > 0)  # LINE:per_item_named
        if ok:
            x = torch.tanh(x)
    return x


def _traced(fn, *args) -> Graph:
    with torch.no_grad(), torchtrace.trace() as t:
        fn(*args)
    return t.graph


def test_review_a_helper_s_loop_per_call_an_inner_loop_s_return_and_a_named_last_item_branch():
    """(A review of the fixes above.) A helper's `while` called from a loop was
    counted over all its calls (6x against 8x) with the same value read on both
    sides; a `return` from a nested `for` summed the inner loop's runs (2x against
    8x); a per-item branch kept in a name that differs at the last item was "the
    loop at" its line."""
    x = torch.randn(2, 4)
    d = torchtrace.diff(_traced(calls_per_run, x, torch.tensor([2, 2, 2])),
                        _traced(calls_per_run, x, torch.tensor([2, 4, 2])))
    assert d.why() == [f"`while` at `test_diff_loops.py:{line_of('helper_while')}` ran 2\u00d7 in A, 4\u00d7 in B "
                       f"(the 2nd of its 3 runs); `test_diff_loops.py:{line_of('helper_break')}` read 1 in A, 3 in B "
                       "\u2192 8 ops only in B (in `<root>`)"]

    def stop_at(i, j):
        s = torch.zeros(3, 3)
        s[i, j] = 1
        return _traced(nested_return, torch.ones(2), s)

    [why] = torchtrace.diff(stop_at(0, 1), stop_at(2, 1)).why()
    assert why.startswith(f"`test_diff_loops.py:{line_of('nested_return')}` read True in A, False in B"), why
    [why] = torchtrace.diff(_traced(per_item_named, torch.ones(2), torch.tensor([1, 1, 1, 1])),
                            _traced(per_item_named, torch.ones(2), torch.tensor([1, 1, 1, -1]))).why()
    assert why == f"`test_diff_loops.py:{line_of('per_item_named')}` read True in A, False in B " \
                  "\u2192 1 op only in A (in `<root>`)"


def each_at_once(x: torch.Tensor, ns: list) -> torch.Tensor:
    for n in ns:  # (no op of this function between the helper's calls)
        x = step_until(x, n)
    return x


def test_a_helper_s_loop_called_again_at_once_names_the_read_that_differs():
    """(A third review.) With no op of the caller between the calls, the runs of
    the helper's loop cannot be told apart: it said "ran 6x in A, 7x in B" with a
    read of 1 on both sides as the cause. The read that differs is named."""
    x, t = torch.randn(2, 4), torch.tensor
    [why] = torchtrace.diff(_traced(each_at_once, x, [t(2), t(2), t(2)]),
                            _traced(each_at_once, x, [t(2), t(2), t(3)])).why()
    assert why.startswith(f"`test_diff_loops.py:{line_of('helper_break')}` read 1 in A, 2 in B"), why


def steps(x: torch.Tensor, n: torch.Tensor):
    while True:  # LINE:gen_while
        x = L4(x)
        n = n - 1
        yield x
        if n.item() <= 0:  # LINE:gen_read
            break


def consume(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    out = x
    for y in steps(x, n):
        out = out + y  # (the caller runs between two iterations)
    return torch.tanh(out)


def test_a_generator_s_loop_is_not_ended_by_its_caller_s_ops_between_yields():
    """(A fourth review.) The caller's op at each `yield` was taken for the
    helper having returned: the loop count was lost."""
    x = torch.randn(2, 4)
    [why] = torchtrace.diff(_traced(consume, x, torch.tensor(3)), _traced(consume, x, torch.tensor(5))).why()
    assert why.startswith(f"`while` at `test_diff_loops.py:{line_of('gen_while')}` ran 3\u00d7 in A, 5\u00d7 in B; "
                          f"`test_diff_loops.py:{line_of('gen_read')}` read 2 in A, 4 in B"), why


def step_until_logged(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    while True:  # LINE:logged_while
        x = L4(x)
        n = n - 1
        note = "yield"  # (text, not a generator)
        if n.item() <= 0:
            break
    return x if note else x


def calls_logged(x: torch.Tensor, ns: list) -> torch.Tensor:
    out = x
    for n in ns:
        out = out + step_until_logged(x, n)
    return out


def test_a_yield_in_text_does_not_make_a_helper_a_generator():
    x, t = torch.randn(2, 4), torch.tensor
    [why] = torchtrace.diff(_traced(calls_logged, x, [t(2), t(2), t(2)]),
                            _traced(calls_logged, x, [t(2), t(4), t(2)])).why()
    assert why.startswith(f"`while` at `test_diff_loops.py:{line_of('logged_while')}` ran 2\u00d7 in A, 4\u00d7 in B "
                          "(the 2nd of its 3 runs)"), why


def two_capped_loops(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    for i in range(10):  # LINE:cap_a_for
        x = L4(x)
        if i >= a.item():  # LINE:cap_a
            break
    for j in range(10):  # LINE:cap_b_for
        x = torch.relu(x)
        if j >= b.item():  # LINE:cap_b
            break
    return x


def test_two_loops_in_a_row_each_ended_by_its_own_read_are_both_named():
    """Both loops ran one more iteration in B. Their extra ops were one hunk,
    named by the second loop only; and where the second loop alone ran longer,
    its hunk named the first loop's read (the nearest before its first pass)."""
    x, t = torch.randn(2, 4), torch.tensor
    at = {k: f"`test_diff_loops.py:{line_of(k)}`" for k in ("cap_a", "cap_b", "cap_a_for", "cap_b_for")}
    first = f"`for` at {at['cap_a_for']} ran 2\u00d7 in A, 3\u00d7 in B; {at['cap_a']} read 1 in A, 2 in B"
    second = f"`for` at {at['cap_b_for']} ran 2\u00d7 in A, 3\u00d7 in B; {at['cap_b']} read 1 in A, 2 in B"
    both = torchtrace.diff(_traced(two_capped_loops, x, t(1), t(1)), _traced(two_capped_loops, x, t(2), t(2)))
    assert both.why() == [f"{first} \u2192 3 ops only in B (in `<root>`)",
                          f"{second} \u2192 2 ops only in B (in `<root>`)"]
    [one] = torchtrace.diff(_traced(two_capped_loops, x, t(2), t(1)), _traced(two_capped_loops, x, t(2), t(2))).why()
    assert one == f"{second} \u2192 2 ops only in B (in `<root>`)"


def converge(x: torch.Tensor, scale: float, kind: str) -> torch.Tensor:
    h = x
    if kind == "if":
        for _ in range(20):  # LINE:conv_for
            nh = torch.tanh(L4(h)) * scale + h * (1 - scale)
            delta = (nh - h).abs().max().item()  # LINE:conv_read
            h = nh
            if delta < 0.05:
                break
    else:
        delta = 1e9
        while delta >= 0.05:  # LINE:conv_while
            nh = torch.tanh(L4(h)) * scale + h * (1 - scale)
            delta = (nh - h).abs().max().item()  # LINE:conv_read_while
            h = nh
    return h


def diverge(x: torch.Tensor, scale: float) -> torch.Tensor:
    h, delta = x, 0.0
    while delta <= 3.0:  # LINE:diverge_while
        h = h * scale + 0.1
        delta = h.abs().max().item()  # LINE:diverge_read
    return h


def test_a_float_loop_one_pass_leaves_after_its_first_iteration_is_named():
    """(A review.) A: 1 iteration (3.85 ends it), B: 2 (2.85 went on, 3.235 ends
    it): the read that went on in B at A's exit was left out of the comparison."""
    x = torch.full((2, 4), 2.5)
    [why] = torchtrace.diff(_traced(diverge, x, 1.5), _traced(diverge, x, 1.1)).why()
    assert why.startswith(f"`while` at `test_diff_loops.py:{line_of('diverge_while')}` ran 1\u00d7 in A, 2\u00d7 in B; "
                          f"`test_diff_loops.py:{line_of('diverge_read')}` read 3.85 in A, 2.85 in B"), why


@pytest.mark.parametrize("kind, loop, read", [("if", "`for` at {conv_for}", "conv_read"),
                                              ("while", "`while` at {conv_while}", "conv_read_while")])
def test_a_convergence_loop_ended_by_a_float_is_named_without_a_hedge(kind, loop, read):
    """`delta = d.item()` ... `if delta < tol: break` (or `while delta >= tol:`):
    it was "read 0.09 in A, 0.1 in B (a float: the nearest read that differs,
    maybe not the cause); the block at ... ran 4x in A, 5x in B"."""
    torch.manual_seed(0)
    x = torch.randn(2, 4)
    graphs = {s: _traced(converge, x, s, kind) for s in (0.3, 0.2)}
    count = {s: sum(n.op == "aten.tanh.default" for n in g.nodes) for s, g in graphs.items()}
    assert count[0.3] < count[0.2]  # (a slower step converges later)
    [why] = torchtrace.diff(graphs[0.3], graphs[0.2]).why()
    head = loop.format(**{k: f"`test_diff_loops.py:{line_of(k)}`" for k in ("conv_for", "conv_while")})
    assert why.startswith(f"{head} ran {count[0.3]}\u00d7 in A, {count[0.2]}\u00d7 in B; "
                          f"`test_diff_loops.py:{line_of(read)}` read "), why
    assert "maybe not the cause" not in why


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.l(x))


class EarlyExit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(4)])

    def forward(self, x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:  # LINE:exit_for
            x = b(x)
            if x.mean() > threshold:  # LINE:exit_read
                break
        return x


def test_an_early_exit_that_one_pass_never_takes_names_the_loop_not_the_block_s_line():
    """The body is a submodule call: the loop was "the block at" a line of
    Block.forward, 1x in A, 4x in B."""
    torch.manual_seed(0)
    m, x = EarlyExit().eval(), torch.randn(2, 4)
    graphs = []
    for threshold in (-9.0, 9.0):  # breaks after the first block; never breaks
        with torch.no_grad(), torchtrace.trace(m) as t:
            m(x, torch.tensor(threshold))
        graphs.append(t.graph)
    [why] = torchtrace.diff(*graphs).why()
    assert why.startswith(f"`for` at `test_diff_loops.py:{line_of('exit_for')}` ran 1\u00d7 in A, 4\u00d7 in B; "
                          f"`test_diff_loops.py:{line_of('exit_read')}` read True in A, False in B"), why


def test_a_block_that_is_one_module_call_is_named_by_the_call_not_a_line_inside_it():
    """GPT-2 with 2 layers against 3: "the block at `modeling_gpt2.py:...`" named
    the first op's line, deep inside the block, not what repeated."""
    ids = torch.randint(0, 100, (1, 6))
    a, b = (zoo.record(zoo.gpt2(n_layer=n), ids) for n in (2, 3))
    per_block = sum(1 for n in b.nodes if (b.module(n.module).path if n.module else "").startswith("transformer.h.2"))
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith(f"`transformer.h.*` (GPT2Block, {per_block} ops) ran 2\u00d7 in A, 3\u00d7 in B"), why


def test_a_list_whose_first_block_differs_counts_every_block_of_it():
    """T5's first block computes the position bias the others reuse, so only
    blocks 1.. repeat: 2 blocks against 3 read "ran 1x in A, 2x in B"."""
    ids = torch.randint(0, 100, (1, 6))
    kw = dict(input_ids=ids, decoder_input_ids=ids[:, :4])
    a, b = (zoo.record(zoo.t5(n_layer=n), **kw) for n in (2, 3))
    whys = torchtrace.diff(a, b).why()
    per_block = {s: sum(1 for n in b.nodes if n.module and b.module(n.module).path.startswith(s + ".block.2"))
                 for s in ("encoder", "decoder")}
    assert [w.split(" ran ")[0] + " ran " + w.split(" ran ")[1].split(" (")[0] for w in whys] == [
        f"`{s}.block.*` (T5Block, {k} ops) ran 2\u00d7 in A, 3\u00d7 in B" for s, k in per_block.items()], whys


class SharedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU())])

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(n):
            x = self.blocks[0](x)
        return x


def test_one_module_called_again_is_named_by_its_own_path():
    """``self.blocks[0]`` called n times was "`blocks.*`", as if other blocks ran."""
    torch.manual_seed(0)
    m, x = SharedBlock(), torch.randn(2, 4)
    a, b = (zoo.record(m, x, n) for n in (2, 3))
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith("`blocks.0` (Sequential, 3 ops) ran 2\u00d7 in A, 3\u00d7 in B"), why


class FirstBlockLooped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(3)])

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(n):
            x = self.blocks[0](x)
        for b in self.blocks[1:]:
            x = b(x)
        return x


class PrefixTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(3)])

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(2):
            for b in self.blocks[:n]:
                x = b(x)
        return x


class Group(nn.Module):
    def __init__(self, layers: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block() for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SharedGroups(nn.Module):
    """ALBERT's layout: groups of one layer each, group k % groups called in turn."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = nn.ModuleList([Group() for _ in range(groups)])

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for k in range(n):
            x = self.groups[k % len(self.groups)](x)
        return x


def test_shared_groups_and_a_list_run_twice_count_the_calls_that_ran():
    """(A review.) ALBERT's one group called 2x against 3x read "`groups.0.layers.0`
    ran 0x in A, 1x in B": each layer call has another group call as parent, and
    the list's count took the parent call's (absent in A). With a group per layer,
    the layer is named with the group's index starred. A list's first n blocks
    run twice is the list's count, not the count of a block one side never called."""
    torch.manual_seed(0)
    x = torch.randn(2, 4)
    one, three = SharedGroups(1), SharedGroups(3)
    [why] = torchtrace.diff(zoo.record(one, x, 2), zoo.record(one, x, 3)).why()
    assert why.startswith("`groups.0.layers.0` (Block, 3 ops) ran 2\u00d7 in A, 3\u00d7 in B"), why
    [why] = torchtrace.diff(zoo.record(three, x, 2), zoo.record(three, x, 3)).why()
    assert why.startswith("`groups.*.layers.0` (Block, 3 ops) ran 2\u00d7 in A, 3\u00d7 in B"), why
    m = PrefixTwice()
    [why] = torchtrace.diff(zoo.record(m, x, 2), zoo.record(m, x, 3)).why()
    assert why.startswith("`blocks.*` (Block, 3 ops) ran 4\u00d7 in A, 6\u00d7 in B"), why


class PairGroups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.groups = nn.ModuleList([Group(2) for _ in range(3)])

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for g in self.groups[:n]:
            x = g(x)
        return x


class Repeats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.mlp = Block(), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, reps: int) -> torch.Tensor:
        for _ in range(reps):
            x = self.attn(x)
        return self.mlp(x)


class RepeatLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Repeats() for _ in range(3)])

    def forward(self, x: torch.Tensor, reps: tuple) -> torch.Tensor:
        for layer, r in zip(self.layers, reps):
            x = layer(x, r)
        return x


def test_a_block_s_name_stars_the_indices_its_counted_calls_differ_in():
    """(A review.) Groups of two layers, 2 against 3 groups: "`groups.2.layers.*`
    ran 4x in A, 6x in B" named the group only B ran for every group's layers; and
    layer 1's block run 0x against 2x was "`layers.*.attn`", though the other
    layers' ran alike on both sides."""
    torch.manual_seed(0)
    x = torch.randn(2, 4)
    m = PairGroups()
    [why] = torchtrace.diff(zoo.record(m, x, 2), zoo.record(m, x, 3)).why()
    assert why.startswith("`groups.*.layers.*` (Block, 3 ops) ran 4\u00d7 in A, 6\u00d7 in B"), why
    m = RepeatLayers()
    [why] = torchtrace.diff(zoo.record(m, x, (1, 0, 1)), zoo.record(m, x, (1, 2, 1))).why()
    assert why.startswith("`layers.1.attn` (Block, 3 ops) ran 0\u00d7 in A, 2\u00d7 in B"), why


def test_a_block_called_again_before_its_siblings_is_named_by_its_own_count():
    """``blocks[0]`` called n times, then ``blocks[1]`` and ``blocks[2]``: the
    diff read "`blocks.*` ran 4x in A, 5x in B", the list's calls, where the
    loop that ran more is blocks.0's (2x against 3x). Its siblings' calls are
    no loop: 0 against 1 call of blocks.0 stays the list's count."""
    torch.manual_seed(0)
    m, x = FirstBlockLooped(), torch.randn(2, 4)
    a, b, none = (zoo.record(m, x, n) for n in (2, 3, 0))
    [why] = torchtrace.diff(a, b).why()
    assert why.startswith("`blocks.0` (Block, 3 ops) ran 2\u00d7 in A, 3\u00d7 in B"), why
    [why] = torchtrace.diff(none, zoo.record(m, x, 1)).why()
    assert why.startswith("`blocks.*` (Block, 3 ops) ran 2\u00d7 in A, 3\u00d7 in B"), why




def counted_with_a_float_exit(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    for _ in range(int(n.item())):  # LINE:count_read
        x = torch.tanh(x @ W4)
        if x.abs().max().item() > 1e6:  # (never true)
            break
    return x


def inner_exit(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    for _ in range(int(n.item())):  # LINE:outer_count
        for _ in range(5):
            x = torch.tanh(x @ W4)
            if x.abs().max().item() > 1e6:  # (never true: each inner loop runs 5x)
                break
        x = x * 2
    return x


def break_of_a_nested_loop(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    for _ in range(int(n.item())):  # LINE:nested_count
        x = torch.tanh(x @ W4)
        if x.abs().max().item() > 0:
            for _ in range(2):
                x = x + 1
                break  # (leaves the inner loop, not this one)
    return x


@pytest.mark.parametrize("fn, marker", [(counted_with_a_float_exit, "count_read"), (inner_exit, "outer_count"),
                                        (break_of_a_nested_loop, "nested_count")])
def test_a_count_read_before_the_loop_is_not_taken_by_a_read_in_its_body(fn, marker):
    """(A review.) A differing float in the loop's body, at an `if` that breaks,
    took the blame from the count read before the loop: that `if` never went the
    exit way, an inner loop's `break` was taken for the outer loop's, and a `break`
    of a loop inside the `if` for a `break` of the loop around it."""
    torch.manual_seed(0)
    xa, xb = torch.randn(2, 4), torch.randn(2, 4)
    [why] = torchtrace.diff(_traced(fn, xa, torch.tensor(2)), _traced(fn, xb, torch.tensor(3))).why()
    assert why.startswith(f"`test_diff_loops.py:{line_of(marker)}` read 2 in A, 3 in B; the block at "), why


class Refine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.dec = Block(), Block()

    def forward(self, x: torch.Tensor, refine: bool) -> torch.Tensor:
        x = self.enc(x)
        if refine:  # no loop anywhere: the repeated calls are straight-line code
            x = self.enc(x)
            x = self.dec(x)
        return self.dec(x)


def test_straight_line_code_that_calls_modules_again_is_not_split_into_two_loops():
    """(A review.) The split of two loops in a row fired on an `if` around two
    module calls: "`enc` (Block, 3 ops) ran 1x in A, 2x in B" and the same for `dec`."""
    m = Refine()
    graphs = []
    for refine in (False, True):
        with torch.no_grad(), torchtrace.trace(m) as t:
            m(torch.ones(2, 4), refine)
        graphs.append(t.graph)
    [why] = torchtrace.diff(*graphs).why()
    assert why.startswith("no tensor read differs before it: decided by Python state"), why


def bounded_by_a_read(h: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    k = 0
    while k < n.item():  # LINE:bound_read
        h = torch.sin(h) * 2
        k += 1
    return h


def test_a_while_that_reads_its_bound_each_time_is_named_by_its_header():
    """`while k < n.item():` reads 3 (or 5) every time: no read's value ends it, so
    it was "the block at" the body's line, its read counted in the block's ops."""
    x, graphs = torch.randn(2, 4), []
    for n in (3, 5):
        with torchtrace.trace() as t:
            bounded_by_a_read(x, torch.tensor(n))
        graphs.append(t.graph)
    [why] = torchtrace.diff(*graphs).why()
    at = f"`test_diff_loops.py:{line_of('bound_read')}`"
    assert why.startswith(f"{at} read 3 in A, 5 in B; `while` at {at} ran 3\u00d7 in A, 5\u00d7 in B "
                          "\u2192 6 ops only in B"), why


class ForWhile(nn.Module):
    def forward(self, x: torch.Tensor, counts: list) -> torch.Tensor:
        for c in counts:
            n = c.clone()  # LINE:for_body
            while n.item() > 0:  # LINE:inner_while
                x = x + 1
                n = n - 1
            x = x * 2
        return x


def test_a_for_whose_body_holds_a_while_is_not_named_as_that_while():
    """(A review.) The `for` ran 2x against 3x, the `while` twice in every run:
    "`while` at ... ran 2x in A, 3x in B" was false."""
    m = ForWhile()
    a, b = (zoo.record(m, torch.zeros(2), [torch.tensor(2) for _ in range(k)]) for k in (2, 3))
    [why] = torchtrace.diff(a, b).why()
    assert f"`while` at `test_diff_loops.py:{line_of('inner_while')}`" not in why, why
    assert why.startswith(f"the block at `test_diff_loops.py:{line_of('for_body')}` (9 ops) ran 2\u00d7 in A, "
                          "3\u00d7 in B"), why


class Newton(nn.Module):
    def forward(self, x: torch.Tensor, tol: float) -> torch.Tensor:
        d = torch.tensor(1.0)
        while d.item() > tol:  # LINE:newton_while
            x2 = 0.5 * (x + 2.0 / x)
            d = (x2 - x).abs().max()
            x = x2
        return x


def test_a_convergence_loop_with_another_tolerance_is_not_said_to_read_nothing():
    """(A review.) The tolerance is a Python float, each pass's reads converge
    alike: the `while` was said to run "(no tensor read decided it)", though its
    condition reads a tensor at each test."""
    m, x = Newton(), torch.full((2,), 5.0)
    a, b = (zoo.record(m, x, tol) for tol in (1e-1, 1e-6))
    [why] = torchtrace.diff(a, b).why()
    assert f"`while` at `test_diff_loops.py:{line_of('newton_while')}` ran" in why, why
    assert "no tensor read decided it" not in why, why


class Flagged(nn.Module):
    """A `while` whose first test reads no tensor data: the step module returns
    the flag (`done = False` ... `while not done:`), or a Python count
    short-circuits it (`k < 1 or ...`); and, as controls, a `while` that reads
    before its first iteration, and a step peeled before the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def step(self, x: torch.Tensor, thr: float):
        x = torch.tanh(self.l(x)) + x
        return x, x.norm() > thr

    def forward(self, x: torch.Tensor, thr: float, kind: str, reps: int = 1) -> torch.Tensor:
        if kind == "flag":
            done = False
            while not done:  # LINE:flag_tensor_while
                x, done = self.step(x, thr)
        elif kind == "short":
            k = 0
            while k < 1 or x.norm() <= thr:  # LINE:short_while
                x, _ = self.step(x, thr)
                k += 1
        elif kind == "reads":
            while x.norm() <= thr:  # LINE:reads_while
                x, _ = self.step(x, thr)
        elif kind == "peeled":
            x, done = self.step(x, thr)
            while not done:  # LINE:peeled_while
                x, done = self.step(x, thr)
        else:
            for _ in range(reps):
                done = False
                while not done:  # LINE:inner_flag_while
                    x, done = self.step(x, thr)
                x = x / x.norm()
        return x


def _flagged(kind: str, thr: float, reps: int = 1):
    torch.manual_seed(0)
    m = Flagged()
    calls = []
    hook = m.l.register_forward_hook(lambda *a: calls.append(1))
    x = torch.zeros(1, 4)
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(x, thr, kind, reps)
    hook.remove()
    return t.graph, len(calls)


def _thresholds() -> tuple:
    """Thresholds between the norms after 2 and 3 steps, and after 4 and 5."""
    torch.manual_seed(0)
    m, h, norms = Flagged(), torch.zeros(1, 4), []
    with torch.no_grad():
        for _ in range(6):
            h, _ = m.step(h, 0.0)
            norms.append(h.norm().item())
    assert all(a < b for a, b in zip(norms, norms[1:])), norms
    return (norms[1] + norms[2]) / 2, (norms[3] + norms[4]) / 2


@pytest.mark.parametrize("kind, marker, peeled", [("flag", "flag_tensor_while", 0), ("short", "short_while", 0),
                                                  ("reads", "reads_while", 0), ("peeled", "peeled_while", 1)])
def test_a_while_whose_first_test_reads_nothing_is_counted_by_its_iterations(kind, marker, peeled):
    """`done = False` ... `while not done: x, done = step(x)` reads `done` once per
    iteration, after it: the count was one short ("ran 2x in A, 4x in B" for 3 and
    5 steps). The same when `k < 1 or x.norm() <= t` short-circuits the first test.
    A `while` that reads before every iteration, and one after a peeled first step,
    keep reads - 1."""
    (a, na), (b, nb) = (_flagged(kind, thr) for thr in _thresholds())
    if kind != "reads":  # (that one reads before the first step: one step fewer)
        assert (na, nb) == (3, 5)
    why = torchtrace.diff(a, b).why()
    assert why[0].startswith(f"`while` at `test_diff_loops.py:{line_of(marker)}` "
                             f"ran {na - peeled}\u00d7 in A, {nb - peeled}\u00d7 in B"), why


def test_the_runs_of_a_flagged_while_in_a_for_are_counted_by_their_iterations():
    """The same `while not done:` run once per item of a `for`: each run's count."""
    lo, hi = _thresholds()
    (a, na), (b, nb) = _flagged("inner", lo, 2), _flagged("inner", hi, 2)
    assert (na, nb) == (4, 8)  # 3 + 1 steps against 5 + 3
    head = f"`while` at `test_diff_loops.py:{line_of('inner_flag_while')}`"
    assert [w.split(" \u2192 ")[0] for w in torchtrace.diff(a, b).why()] == [
        f"{head} ran 3\u00d7 in A, 5\u00d7 in B (the 1st of its 2 runs)",
        f"{head} ran 1\u00d7 in A, 3\u00d7 in B (the 2nd of its 2 runs)"]


_EARLY_EXIT = '''
import torch, torch.nn as nn


class ACT(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(5)])
        self.halt = nn.Linear(4, 1)

    def forward(self, x, thr, reps, count=0):
        c = torch.tensor(count)
        while c.item() > 0:  # LINE:gone_count
            x = torch.tanh(self.layers[1](x))
            c = c - 1
        for r in reps:
            n = torch.tensor(r)
            while n > 0:  # LINE:gone_while
                x = torch.tanh(self.layers[0](x))
                n = n - 1
        for i, layer in enumerate(self.layers):
            x = torch.tanh(layer(x))
            if torch.sigmoid(self.halt(x)).mean() > thr[i]:  # LINE:gone_exit
                break
        return x
'''


def test_a_loop_whose_source_is_not_readable_here_is_counted_by_its_reads(tmp_path, monkeypatch):
    """A diff made where the model's file is gone (another machine, another
    checkout) cannot tell a `while` header's reads (one more than its
    iterations) from a `break` in its body (as many): it said "the loop at
    `m.py:11` ran 2x in A, 4x in B" for 3 and 5 iterations, and dropped the read.
    It now counts the reads, says why, and names the read."""
    import importlib
    import linecache
    (tmp_path / "gone_model.py").write_text(_EARLY_EXIT)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("gone_model")
    torch.manual_seed(0)
    m, x = mod.ACT(), torch.randn(2, 4)

    def run(thr, reps):
        with torch.no_grad(), torchtrace.trace(m) as t:
            m(x, torch.tensor(thr), reps)
        return t.graph
    a, b = run([1., 1., 0., 1., 1.], [2, 1]), run([1., 1., 1., 1., 0.], [2, 3])
    line = zoo.marked_line(str(tmp_path / "gone_model.py"), "gone_exit")
    loop = zoo.marked_line(str(tmp_path / "gone_model.py"), "gone_while")
    count = zoo.marked_line(str(tmp_path / "gone_model.py"), "gone_count")
    assert [w.split(";")[0] for w in torchtrace.diff(a, b).why()] == [
        f"`while` at `gone_model.py:{loop}` ran 1\u00d7 in A, 3\u00d7 in B (the 2nd of its 2 runs) "
        f"\u2192 12 ops only in B (in `<root>`)", f"`for` at `gone_model.py:{line - 2}` ran 3\u00d7 in A, 5\u00d7 in B"]
    (tmp_path / "gone_model.py").unlink()
    linecache.clearcache()
    assert [w.split(" \u2192 ")[0] for w in torchtrace.diff(a, b).why()] == [
        f"`gone_model.py:{loop}` read False in A, True in B; in a loop whose source is not readable here, "
        f"it read 2\u00d7 in A, 4\u00d7 in B (the 2nd of its 2 runs)",
        f"`gone_model.py:{line}` read True in A, False in B; in a loop whose source is not readable here, "
        f"it read 3\u00d7 in A, 5\u00d7 in B"]
    # (a number read, `while c.item() > 0`: 3, 2, 1, 0 against 5, ..., 0; no count is said for it)
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(x, torch.tensor([1., 1., 1., 1., 0.]), [], 3)
    three = t.graph
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(x, torch.tensor([1., 1., 1., 1., 0.]), [], 5)
    [why] = torchtrace.diff(three, t.graph).why()
    assert why.startswith(f"`gone_model.py:{count}` read 3 in A, 5 in B; in a loop whose source is not readable "
                          "here \u2192"), why


class Ponder(nn.Module):
    """Halts after `thr + 1` iterations."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
        for i in range(6):  # LINE:ponder_for
            x = torch.tanh(self.cell(x))
            if x.mean() * 0 + i >= thr:  # LINE:ponder_read
                break
        return x


class TwoPonders(nn.Module):
    def __init__(self, shared: bool) -> None:
        super().__init__()
        self.enc = Ponder()
        self.dec = self.enc if shared else Ponder()
        self.shared = shared

    def forward(self, x: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        if self.shared:  # one module called twice, an op between the calls
            return self.enc(torch.relu(self.enc(x, t1)), t2)
        return self.dec(self.enc(x, t1), t2)  # two modules, no op between their calls


@pytest.mark.parametrize("shared", [False, True])
def test_one_loop_in_two_module_calls_is_counted_per_call(shared):
    """(An audit.) Two `Ponder`s called one after the other, their loops run
    2x/2x in A and 4x/5x in B: one hunk of 40 ops named one count ("2x in A,
    5x in B"), A's second loop paired with B's first one's extra iterations. One
    module called twice: its first call's count was not named (the loop's run
    was not seen to end at the next call)."""
    torch.manual_seed(0)
    m, x, t = TwoPonders(shared), torch.randn(2, 4), torch.tensor

    def run(t1: float, t2: float) -> Graph:
        with torch.no_grad(), torchtrace.trace(m) as tr:
            m(x, t(t1), t(t2))
        return tr.graph
    d = torchtrace.diff(run(1, 1), run(3, 4))
    head = f"`for` at `test_diff_loops.py:{line_of('ponder_for')}`"
    read = f"`test_diff_loops.py:{line_of('ponder_read')}`"
    runs = [" (the 1st of its 2 runs)", " (the 2nd of its 2 runs)"] if shared else ["", ""]
    calls = [" (1st call of `enc`)", " (2nd call of `enc`)"] if shared else ["", ""]
    where = ["enc", "enc"] if shared else ["enc", "dec"]
    assert d.why() == [f"{head} ran 2\u00d7 in A, 4\u00d7 in B{runs[0]}; {read}{calls[0]} read True in A, False in B "
                       f"\u2192 16 ops only in B (in `{where[0]}`)",
                       f"{head} ran 2\u00d7 in A, 5\u00d7 in B{runs[1]}; {read}{calls[1]} read True in A, False in B "
                       f"\u2192 24 ops only in B (in `{where[1]}`)"]
    assert not any(p.status == "changed" for p in d.ops)  # (each iteration paired with its own)


class NestedPonders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Ponder()

    def forward(self, x: torch.Tensor, t_out: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        for i in range(8):  # LINE:outer_for
            x = self.inner(x, t_in)
            if x.mean() * 0 + i >= t_out:  # LINE:outer_read
                break
        return x


def test_a_hunk_with_an_iteration_more_of_an_outer_loop_names_that_loop():
    """(A review.) The outer loop ran 3x in A, 4x in B, the inner loop of each call
    1x against 3x: the hunk that holds the outer loop's extra iteration (and the
    first call's extra inner iterations) named the inner loop, and the outer
    loop's count was said nowhere."""
    torch.manual_seed(0)
    m, x, t = NestedPonders(), torch.randn(2, 4), torch.tensor

    def run(t_out: float, t_in: float) -> Graph:
        with torch.no_grad(), torchtrace.trace(m) as tr:
            m(x, t(t_out), t(t_in))
        return tr.graph
    whys = [w.split(";")[0] for w in torchtrace.diff(run(2, 0), run(3, 2)).why()]
    outer, inner = (f"`for` at `test_diff_loops.py:{line_of(k)}`" for k in ("outer_for", "ponder_for"))
    assert whys == [f"{outer} ran 3\u00d7 in A, 4\u00d7 in B", f"{inner} ran 1\u00d7 in A, 3\u00d7 in B",
                    f"{inner} ran 1\u00d7 in A, 3\u00d7 in B"], whys


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        for _ in range(k):
            x = torch.relu(self.l(x))  # LINE:inner_body
        return x


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Inner()
        self.o = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, n: int, k: int) -> torch.Tensor:
        for _ in range(n):  # LINE:outer_loop
            x = self.o(self.inner(x, k))
        return x


def test_an_outer_loop_s_extra_iteration_is_named_by_its_own_loop():
    """(A review.) An extra iteration of a loop whose body starts in a submodule
    (which loops itself) was "the block at `m.py:6` (11 ops) ran 2x in A, 3x in
    B": the inner loop's line with the outer loop's count."""
    torch.manual_seed(0)
    m, x = _Outer(), torch.randn(2, 4)

    def run(n: int, k: int) -> Graph:
        with torch.no_grad(), torchtrace.trace(m) as t:
            m(x, n, k)
        return t.graph
    [why] = torchtrace.diff(run(2, 3), run(3, 3)).why()
    assert why.startswith(f"`for` at `test_diff_loops.py:{line_of('outer_loop')}` ran 2\u00d7 in A, 3\u00d7 in B"), why
    whys = torchtrace.diff(run(2, 3), run(2, 4)).why()
    assert whys[0].startswith(f"the block at `test_diff_loops.py:{line_of('inner_body')}` (3 ops) ran 3\u00d7 in A, "
                              "4\u00d7 in B"), whys


def test_a_model_of_torch_s_called_from_two_lines_counts_its_steps_on_both_sides():
    """An ``nn.GRU`` has no line of the user's inside it: its ops carry the line that
    called it. Called from two lines over 6 and 4 time steps, B's steps at its own
    line are still the same block (they read "6× in A, 0× in B")."""
    torch.manual_seed(0)
    m = nn.GRU(4, 5)
    xa, xb = torch.randn(6, 2, 4), torch.randn(4, 2, 4)
    with torchtrace.trace(m) as ta:
        m(xa)  # LINE:gru_a
    with torchtrace.trace(m) as tb:
        m(xb)  # LINE:gru_b
    steps = [sum(n.op == "aten.addmm.default" for n in t.graph.nodes) for t in (ta, tb)]
    assert steps == [7, 5]  # (one per time step, and one for the input projection)
    lines = [{n.source.line for n in t.graph.nodes if n.module is not None} for t in (ta, tb)]
    assert lines == [{line_of("gru_a")}, {line_of("gru_b")}]
    for d, (a, b) in ((torchtrace.diff(ta.graph, tb.graph), (6, 4)), (torchtrace.diff(tb.graph, ta.graph), (4, 6))):
        why = d.why()
        assert len(why) == 1 and f"ran {a}× in A, {b}× in B" in why[0], why
        assert "input `input` f32[" in why[0], why
    same = [torchtrace.trace(m) for _ in range(2)]
    with same[0]:
        m(xa)
    with same[1]:
        m(xa)
    assert torchtrace.diff(same[0].graph, same[1].graph).why() == []


class Recurrence(nn.Module):
    """transformers' RWKV CPU recurrence: a parameter and each step's input read twice per step."""

    def __init__(self) -> None:
        super().__init__()
        self.decay, self.first = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(k)
        num, den, mx = torch.zeros_like(k[:, 0]), torch.zeros_like(k[:, 0]), torch.zeros_like(k[:, 0]) - 1e38
        decay = -torch.exp(self.decay)
        for t in range(k.shape[1]):
            ck, cv = k[:, t], v[:, t]  # LINE:recurrence_body
            m = torch.maximum(mx, ck + self.first)  # LINE:recurrence_max
            e1 = torch.exp(mx - m)
            e2 = torch.exp(ck + self.first - m)
            numerator = e1 * num + e2 * cv
            denominator = e1 * den + e2
            out[:, t] = numerator / denominator
            ms = torch.maximum(mx + decay, ck)
            e1 = torch.exp(mx + decay - ms)
            e2 = torch.exp(ck - ms)
            num = e1 * num + e2 * cv
            den = e1 * den + e2
            mx = ms
        return out


def test_the_engines_gradient_sums_in_a_longer_loops_backward_are_that_loops_not_a_block_of_their_own():
    """(Audit: RWKV at sequence 8 against 12: the autograd engine's `add` of a step's two
    gradients of `ck` was "the block at `m.py:19` (1 op) ran 1x in A, 2x in B", a plain
    statement in the loop's body.)"""
    torch.manual_seed(0)
    m = Recurrence()
    graphs = []
    for steps in (8, 12):
        k, v = torch.randn(2, steps, 4), torch.randn(2, steps, 4)
        m.zero_grad(set_to_none=True)
        with torchtrace.trace(m) as t:
            m(k, v).sum().backward()
        graphs.append(t.graph)
    d = torchtrace.diff(*graphs)
    loop_line = line_of("recurrence_body")  # ("the block at": its first line)
    assert all(f"test_diff_loops.py:{line_of('recurrence_max')}`" not in w for w in d.why()), d.why()
    for h in d.structural_hunks:
        assert h.loop is not None and (h.loop.line, h.loop.a, h.loop.b) == (loop_line, 8, 12), h.explanation
    ours = sum(len(h.only_b) for h in d.structural_hunks if all(n.phase == "backward" for n in h.only_b))
    backward = [len([n for n in g.nodes if n.phase == "backward" and "autograd_internal" not in n.tags])
                for g in graphs]
    assert ours == backward[1] - backward[0] and not any(h.only_a for h in d.structural_hunks)
