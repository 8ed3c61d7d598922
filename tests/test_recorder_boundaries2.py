"""Pass boundaries set by hand (a 2026-11-27 audit): `cut="step"` with
`rec.step(i)` at the top and `mark_step()` at the end of a DataLoader loop (the
next batch's fetch between them), and plain tensor code under
`cut="step"`. Each was wrong before its fix; the tests say how.

Each step multiplies by `100 + i`: the `mul` a stored pass holds says which
step's ops it holds, whatever its label or step says."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import torchtrace
import zoo
from torchtrace.store import Store


_held, _stored = zoo.held_steps, zoo.stored_steps


@pytest.mark.parametrize("every", [1, 2])
def test_cut_step_leaves_a_dataloader_fetch_between_a_mark_and_the_next_step_out(tmp_path, every):
    """`cut="step"`, `rec.step(i)` at the top and `mark_step()` at the end of a
    DataLoader loop: the next batch's fetch runs between the two cuts, and was
    stored as a pass of its own (20 ops of the `for` line: `select`s, `stack`s),
    one per step, and one more at the end (the exhausted iterator's `randperm`).
    It is data loading: no pass, and no op of a step's pass."""
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8, shuffle=True)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db", cut="step", every=every) as rec:
        for i, (x, y) in enumerate(loader):  # LINE:fetch
            rec.step(i)
            loss = nn.functional.mse_loss(model(x), y).mul(100 + i)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.mark_step()
    fetch = zoo.marked_line(__file__, "fetch")
    with Store(tmp_path / "t.db", readonly=True) as st:
        passes = list(st.passes())
        graphs = [g for _, g in st.graphs()]
    sampled = list(range(0, 4, every))
    assert [(p.step, p.root, _held(g)) for p, g in zip(passes, graphs)] == [(i, "Linear", [i]) for i in sampled]
    assert len({p.structure_fp for p in passes}) == 1
    for g in graphs:
        ops = {n.short_op for n in g.nodes}
        assert {"addmm", "mse_loss", "mse_loss_backward", "add_.Tensor"} <= ops
        assert not ops & {"randperm.generator", "stack", "select.int"}
        assert not any(n.source is not None and n.source.line == fetch for n in g.nodes)


@pytest.mark.parametrize("where", ["step_at_top", "mark_at_end"])
def test_cut_step_keeps_the_first_step_of_plain_tensor_code(tmp_path, where):
    """`cut="step"`, plain tensor code (no model call): with `rec.step(i)` at the
    top, what came before step 0 is setup and step 0 a pass; with `mark_step()` at
    the end of each step, what came before the first mark was taken for setup and
    dropped, step 0's ops with it. It is kept as the first pass (the setup with
    it), as the default cut keeps it."""
    lr = 0.1
    with torchtrace.Recorder(tmp_path / "t.db", cut="step") as rec:
        w = torch.randn(4, requires_grad=True)
        x = torch.randn(8, 4)
        for i in range(4):
            if where == "step_at_top":
                rec.step(i)
            g, = torch.autograd.grad((x @ w).pow(2).mean(), w)
            w = (w - lr * g.mul(100 + i)).detach().requires_grad_()
            if where == "mark_at_end":
                rec.mark_step()
    stored = _stored(tmp_path / "t.db")
    assert [held for _, held, _ in stored] == [[0], [1], [2], [3]]
    assert [step for step, _, _ in stored] == ([0, 1, 2, 3] if where == "step_at_top" else [None] * 4)
    body = stored[1][2]
    assert {"mv", "pow.Tensor_Scalar", "mean", "mul.Tensor", "sub.Tensor"} <= set(body)
    # the first pass holds step 0's ops as every other holds its step's (and, marked at the end, the setup)
    first = stored[0][2]
    assert first[-len(body):] == body and first[:-len(body)] == ([] if where == "step_at_top" else ["randn", "randn"])


def test_cut_step_with_a_step_and_a_mark_at_the_top_keeps_every_step(tmp_path):
    """(A review: a first version of the fix above took the ops between a `mark_step()`
    and the next `rec.step(i)` for loading between two steps, and dropped them: with both
    at the top of the step, that is the whole step.)"""
    with torchtrace.Recorder(tmp_path / "t.db", cut="step") as rec:
        w = torch.randn(4, 4)
        for i in range(4):
            x = torch.randn(2, 4)
            rec.step(i)
            torchtrace.mark_step()
            (x @ w).mul(100 + i).sum()
    stored = [(step, held) for step, held, _ in _stored(tmp_path / "t.db") if held]
    assert stored == [(i, [i]) for i in range(4)], stored
