"""Passes cut by hand in plain tensor code (no model call decides the schedule):
`mark_step()` at the end, at the top, or both, `rec.step(i)` with the default cut
and with `cut="step"`, a DataLoader's fetch, and `every=K`.

Each step multiplies by `100 + i`: the `mul` a stored pass holds says which step's
ops it holds, whatever its label says. Before the fix (2026-11-28 audit list in
README Limits): marks only at the end with `every=2` stored steps 0, 1, 3, 5; marks
at the top and the end stored every step; `cut="step"` with `rec.step(i)` and
`mark_step()` stored only step 0; the default cut labelled each pass with the step
before; a DataLoader loop cut at the end began each pass with its batch's fetch."""
from __future__ import annotations


import pytest
import torch
from torch.utils.data import DataLoader

import torchtrace
import zoo
from torchtrace.store import Store

STEPS = 6


_held, _stored = zoo.held_steps, zoo.stored_steps


def _loop(path, every: int, top: bool, end: bool, step: bool, cut: str = "root", loader: bool = False,
          setup: bool = False) -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 4, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    data = torch.randn(STEPS, 3, 4)
    batches = DataLoader(data, batch_size=None) if loader else list(data)
    with torchtrace.Recorder(path, every=every, cut=cut) as rec:
        if setup:
            torch.zeros(4).exp()
        for i, x in enumerate(batches):
            if step:
                rec.step(i)
            if top:
                torchtrace.mark_step()
            opt.zero_grad()
            (x @ w).relu().mul(100 + i).sum().backward()
            opt.step()
            if end:
                torchtrace.mark_step()


PATTERNS = {  # name -> (top, end, step, cut)
    "mark at the end": (False, True, False, "root"),
    "mark at the top": (True, False, False, "root"),
    "marks at the top and the end": (True, True, False, "root"),
    "step(i), mark at the end": (False, True, True, "root"),
    "cut=step, step(i) and mark at the top": (True, False, True, "step"),
    "cut=step, step(i), mark at the end": (False, True, True, "step"),
    "cut=step, step(i) and marks at the top and the end": (True, True, True, "step"),
    "step(i) and marks at the top and the end": (True, True, True, "root"),
}


@pytest.mark.parametrize("every", [1, 2, 3])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_every_samples_the_same_steps_wherever_the_marks_are(tmp_path, pattern, every):
    top, end, step, cut = PATTERNS[pattern]
    _loop(tmp_path / "t.db", every, top, end, step, cut)
    sampled = list(range(0, STEPS, every))
    stored = _stored(tmp_path / "t.db")
    assert [held for _, held, _ in stored] == [[i] for i in sampled]
    if step:  # each pass has the step of the ops it holds
        assert [s for s, _, _ in stored] == sampled


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("pattern", ["mark at the end", "marks at the top and the end", "step(i), mark at the end",
                                     "cut=step, step(i), mark at the end"])
def test_a_dataloader_fetch_that_begins_a_pass_is_left_out(tmp_path, pattern, every):
    """A mark at the end of each step: the next batch is fetched after it, at the
    top of the next pass (and `iter()` of the loader before the first). It is data
    loading: no op of any pass, and the batch is the pass's input `x`."""
    top, end, step, cut = PATTERNS[pattern]
    _loop(tmp_path / "t.db", every, top, end, step, cut, loader=True)
    stored = _stored(tmp_path / "t.db")
    assert [held for _, held, _ in stored] == [[i] for i in range(0, STEPS, every)]
    plain = ["matmul", "relu", "mul.Tensor"]
    for _, _, ops in stored:
        assert "select.int" not in ops and "randperm" not in ops, ops
        assert [op for op in ops if op in plain or op.startswith("mm")][:2] == ["mm", "relu"], ops
    with Store(tmp_path / "t.db", readonly=True) as st:
        for _, g in st.graphs():
            names = [v.name for v in g.values if v.role == "input"]
            assert names.count("x") == 1 and not any(n.startswith("input") for n in names), names


def test_setup_before_a_mark_at_the_top_is_still_its_own_first_pass(tmp_path):
    """Plain code with setup before the loop and a mark at the top: the setup is
    the first pass, outside the schedule; with marks at the end the first pass
    holds the setup and step 0, and counts as step 0."""
    _loop(tmp_path / "top.db", 2, True, False, False, setup=True)
    stored = _stored(tmp_path / "top.db")
    assert [held for _, held, _ in stored] == [[], [0], [2], [4]]
    assert stored[0][2] == ["zeros", "exp"]
    _loop(tmp_path / "end.db", 2, False, True, False, setup=True)
    assert [held for _, held, _ in _stored(tmp_path / "end.db")] == [[0], [2], [4]]


@pytest.mark.parametrize("every", [1, 2])
def test_a_batch_made_by_hand_before_step_i_belongs_to_that_step(tmp_path, every):
    """`x = torch.randn(...)` between a step's closing `mark_step()` and the next
    `rec.step(i)` (default cut): part of the step it feeds, labelled with that step
    (the pass was labelled with the step before)."""
    w = torch.randn(4, 4, requires_grad=True)
    with torchtrace.Recorder(tmp_path / "t.db", every=every) as rec:
        for i in range(4):
            x = torch.randn(3, 4)
            rec.step(i)
            (x @ w).relu().mul(100 + i).sum().backward()
            torchtrace.mark_step()
    stored = _stored(tmp_path / "t.db")
    assert [(s, held, ops[0]) for s, held, ops in stored] == [(i, [i], "randn") for i in range(0, 4, every)]


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("evaluate", ["model", "plain"])
def test_cut_step_an_evaluation_after_the_closing_mark_is_a_pass_of_its_own(tmp_path, evaluate, every):
    """`cut="step"`: `rec.step(i)`, training, `mark_step()`, then an evaluation. What
    runs between a step's closing mark and the next `step(i)` is a pass of its own,
    labelled with the step before it, recorded where that step is, and not counted
    by `every` (a review found a first version merging it into the next step's
    training pass, or dropping it)."""
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db", cut="step", every=every) as rec:
        for i in range(4):
            rec.step(i)
            m(torch.randn(3, 4)).mul(100 + i).sum().backward()
            opt.step()
            opt.zero_grad()
            torchtrace.mark_step()
            with torch.no_grad():
                if evaluate == "plain":
                    (torch.ones(3, 4) @ m.weight).mul(900 + i + 100)
                else:
                    m(torch.ones(3, 4)).mul(900 + i + 100)
    stored = _stored(tmp_path / "t.db")
    want = [(i, held) for i in range(0, 4, every) for held in ([i], [i + 900])]
    assert [(s, held) for s, held, _ in stored] == want
    trains = {tuple(ops) for _, held, ops in stored if held[0] < 100}
    assert len(trains) == 1  # (every training pass alike)


def test_a_mark_at_the_top_after_code_the_steps_also_run_keeps_the_setup_apart(tmp_path):
    """A batch made by hand above a mark at the top (the same statement runs in every
    step): the code before the first mark is still setup, outside the schedule. A
    first version took it for step 0 and recorded steps 1, 3, 5 (a review)."""
    w = torch.randn(4, 4, requires_grad=True)
    with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
        for i in range(6):
            x = torch.randn(3, 4)
            rec.step(i)
            torchtrace.mark_step()
            (x @ w).relu().mul(100 + i).sum().backward()
    stored = _stored(tmp_path / "t.db")
    assert [(s, held) for s, held, _ in stored] == [(None, []), (0, [0]), (2, [2]), (4, [4])]


def test_cut_step_gradient_accumulation_keeps_both_fetches_alike(tmp_path):
    """Two micro-batches fetched from a DataLoader inside one step: both fetches stay
    (dropping only the one a pass begins with left a step half loaded, half not)."""
    torch.manual_seed(0)
    loader = DataLoader(torch.randn(16, 4), batch_size=2)
    w = torch.randn(4, 4, requires_grad=True)
    it = iter(loader)
    with torchtrace.Recorder(tmp_path / "t.db", cut="step"):
        for i in range(3):
            for _ in range(2):
                x = next(it)
                (x @ w).relu().mul(100 + i).sum().backward()
            torchtrace.mark_step()
    stored = _stored(tmp_path / "t.db")
    assert [held for _, held, _ in stored] == [[i, i] for i in range(3)]
    assert len({ops.count("select.int") for _, _, ops in stored} | {0}) == 2  # (the same count in every pass)


@pytest.mark.parametrize("layout", ["break", "log", "with", "helper"])
def test_a_mark_at_the_end_followed_by_more_code_still_ends_step_0(tmp_path, layout):
    """Plain code, `every=2`, a mark at the end of each step with code after it (a
    `break` guard, a logging `if`, the body in a `with`, the mark in a helper of the
    user's): the first pass is step 0 (a review found a first version recording steps
    0, 1, 3, 5 for these)."""
    import contextlib

    def end_step():
        torchtrace.mark_step()

    w = torch.randn(4, 4, requires_grad=True)
    with torchtrace.Recorder(tmp_path / "t.db", every=2):
        for i in range(6):
            with contextlib.nullcontext() if layout == "with" else contextlib.nullcontext():
                (torch.ones(3, 4) @ w).relu().mul(100 + i).sum().backward()
                if layout == "helper":
                    end_step()
                else:
                    torchtrace.mark_step()
            if layout == "break" and i == 99:
                break
            if layout == "log" and i % 50 == 49:
                print(i)
    assert [held for _, held, _ in _stored(tmp_path / "t.db")] == [[0], [2], [4]]


def test_a_mark_at_the_top_followed_only_by_operators_keeps_the_setup_apart(tmp_path):
    w = torch.randn(4, 4, requires_grad=True)
    b = torch.zeros(4)
    with torchtrace.Recorder(tmp_path / "t.db", every=2):
        torch.ones(2).mul(1)
        for i in range(6):
            torchtrace.mark_step()
            y = (torch.ones(3, 4) @ w) * (100 + i) + b
    assert [held for _, held, _ in _stored(tmp_path / "t.db")] == [[-99], [0], [2], [4]]  # (the setup's mul(1))
    del y


@pytest.mark.parametrize("every", [2, 3])
def test_cut_step_pass_numbers_count_steps_not_the_gaps_between_them(tmp_path, every):
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 4)
    with torchtrace.Recorder(tmp_path / "t.db", cut="step", every=every) as rec:
        for i in range(7):
            rec.step(i)
            m(torch.randn(3, 4)).sum().backward()
            torchtrace.mark_step()
    with Store(tmp_path / "t.db", readonly=True) as st:
        assert [(p.step, p.label) for p in st.passes()] == [(i, f"m (Linear) {i}") for i in range(0, 7, every)]
