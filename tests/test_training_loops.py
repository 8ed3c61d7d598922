"""Recorder in training loops as users write them (a 2026-11-28 audit):
`every=K` with `rec.step(i)` samples steps, whole; the step's own read of a
tensor counter is no op of the pass; a parameter outside any module gets its
gradient entry."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import torchtrace
from torchtrace.store import Store
from zoo import Tagged, held_steps


def _passes(path) -> list:
    """(step label, steps held, phases that ran, training?) of each pass stored at ``path``."""
    with Store(path, readonly=True) as st:
        return [(p.step, held_steps(g), {n.phase for n in g.nodes}, g.nodes[0].phase == "forward"
                 and any(n.phase == "backward" for n in g.nodes)) for p, (_, g) in zip(st.passes(), st.graphs())]


def _train(tmp_path, *, steps: int, every: int, accum: int = 1, evaluate: bool = False, at_end: bool = False,
           first: int = 0, evaluate_first: bool = False):
    torch.manual_seed(0)
    model = Tagged()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / f"t{first}{evaluate_first}.db"
    with torchtrace.Recorder(path, every=every) as rec:
        if evaluate_first:  # (before the first step(): counted as the model's passes)
            with torch.no_grad():
                model(torch.randn(3, 4))
        for i in range(first, first + steps):
            if not at_end:
                rec.step(i)
            model.tag = 100 + i
            for _ in range(accum):  # (gradient accumulation: a model call per micro-batch)
                model(torch.randn(3, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
            if evaluate:
                with torch.no_grad():
                    model(torch.randn(3, 4))
            if at_end:
                rec.step(i + 1)
    return _passes(path)


def test_every_with_steps_records_each_micro_batch_of_the_sampled_steps(tmp_path):
    """Before: `every=4` counted model calls, so with 4 micro-batches a step every
    step's first micro-batch was recorded and no pass ever held `opt.step()`."""
    passes = _train(tmp_path, steps=8, every=4, accum=4)
    assert [(p[0], p[1]) for p in passes] == [(s, [s]) for s in (0, 0, 0, 0, 4, 4, 4, 4)]
    # the step's last micro-batch pass holds the optimizer's update, the others do not
    assert ["optimizer" in p[2] for p in passes] == [False, False, False, True] * 2


def test_every_with_steps_keeps_the_evaluation_after_a_step_with_it(tmp_path):
    """Before: train 0, eval 1, train 3, eval 4, train 6 (`every` counted the eval calls)."""
    passes = _train(tmp_path, steps=7, every=3, evaluate=True)
    assert [(p[0], p[1], p[3]) for p in passes] == [
        (s, [s], training) for s in (0, 3, 6) for training in (True, False)]


def test_every_with_the_step_given_at_the_loops_end_samples_steps_0_k_2k(tmp_path):
    passes = _train(tmp_path, steps=6, every=2, at_end=True)
    assert [p[1] for p in passes] == [[0], [2], [4]]
    assert [p[0] for p in passes] == [None, 2, 4]


def test_every_samples_steps_by_their_number(tmp_path):
    """A run resumed at step 1003, and one that evaluates before training: steps
    1005 and 1010; 0, 3 and 6 (the evaluation before the first step() is a pass
    of its own, the model's first)."""
    passes = _train(tmp_path, steps=10, every=5, first=1003)
    assert [(p[0], p[1]) for p in passes] == [(1005, [1005]), (1010, [1010])]
    passes = _train(tmp_path, steps=7, every=3, evaluate_first=True)
    assert [(p[0], p[1], p[3]) for p in passes] == [(None, [0], False), (0, [0], True), (3, [3], True),
                                                    (6, [6], True)]


def test_a_sampled_step_whose_first_call_is_a_model_not_seen_yet_is_recorded_whole(tmp_path):
    """(A review.) Unsampled steps watch only the models seen so far: a model first
    called at a sampled step, before the one seen, ran with no pass to record it."""
    torch.manual_seed(0)
    m, v = Tagged(), Tagged()
    path = tmp_path / "t.db"
    with torchtrace.Recorder(path, every=2) as rec:
        for i in range(8):
            rec.step(i)
            m.tag = v.tag = 100 + i
            if i >= 4:
                with torch.no_grad():
                    v(torch.randn(2, 4))
            m(torch.randn(2, 4)).sum().backward()
    with Store(path, readonly=True) as st:
        got = [(p.step, p.label.split(" ")[0], held_steps(g)) for p, (_, g) in zip(st.passes(), st.graphs())]
    assert got == [(0, "m", [0]), (2, "m", [2]), (4, "v", [4]), (4, "m", [4]), (6, "v", [6]), (6, "m", [6])]


def test_a_step_counter_that_is_a_tensor_subclass_is_read_as_without_tracing(tmp_path):
    """(A review.) Read with every dispatch off, a wrapper subclass's own dispatch
    was off too (`data is not allocated yet`); the mode is off for the read instead."""
    from torch.testing._internal.two_tensor import TwoTensor

    m = Tagged()
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        rec.step(TwoTensor(torch.tensor(3), torch.tensor(3)))
        m(torch.randn(2, 4))
    with Store(tmp_path / "t.db", readonly=True) as st:
        [(p, (_, g))] = zip(st.passes(), st.graphs())
    assert p.step == 3 and [n.short_op for n in g.nodes] == ["t", "addmm", "mul.Tensor"]


@pytest.mark.parametrize("mark", [False, True])
def test_every_with_cut_at_step_samples_steps_by_their_number_too(tmp_path, mark):
    """(A review.) `cut="step"` counted its passes: a run resumed at step 1003 with
    every=100 recorded 1003 and 1103. With `mark_step()` just before each `step(i)`
    the mark's cut (with the step before's number) and the step's are one."""
    net = nn.Linear(4, 2)
    path = tmp_path / "t.db"
    with torchtrace.Recorder(path, every=100, cut="step") as rec:
        for i in range(1003, 1203):
            if mark:
                torchtrace.mark_step()
            rec.step(i)
            net(torch.randn(3, 4)).sum().backward()
    with Store(path, readonly=True) as st:
        assert [p.step for p in st.passes()] == [1100, 1200]


def test_step_called_inside_the_models_forward_cuts_no_pass_there(tmp_path):
    """(A review.) A model that keeps the step counter calls `rec.step()` in its own
    forward: arming the first-call hook there made its next submodule call a pass of
    its own (`Linear 4`), and the step was recorded again at the model's next call."""
    class Net(nn.Module):
        def __init__(self, rec):
            super().__init__()
            self.a, self.b, self.i, self.rec = nn.Linear(4, 8), nn.Linear(8, 2), 0, rec

        def forward(self, x):
            self.rec.step(self.i)
            self.i += 1
            return self.b(torch.relu(self.a(x)))

    path = tmp_path / "t.db"
    with torchtrace.Recorder(path, every=3) as rec:
        net = Net(rec)
        for _ in range(7):
            net(torch.randn(3, 4)).sum().backward()
    with Store(path, readonly=True) as st:
        got = [(p.root, p.n_ops) for p in st.passes()]
    assert len(got) == 3 and {root for root, _ in got} == {"Net"} and len({n for _, n in got}) == 1


@pytest.mark.parametrize("bad", [True, torch.tensor(True), torch.tensor([7]), torch.tensor(2.0),
                                 torch.empty((), dtype=torch.int64, device="meta")])
def test_a_step_that_is_no_integer_is_refused_clearly(tmp_path, bad):
    """(A review.) A bool tensor was taken for step 1, a one-element vector for its
    value, and a meta tensor raised torch's own error."""
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        with pytest.raises(torchtrace.TorchtraceError, match="bad step"):
            rec.step(bad)


def test_without_steps_every_still_counts_each_models_passes(tmp_path):
    torch.manual_seed(0)
    gen, disc = Tagged(), nn.Sequential(nn.Linear(2, 4), Tagged())
    path = tmp_path / "gan.db"
    with torchtrace.Recorder(path, every=2):
        for i in range(4):
            gen.tag = disc[1].tag = 100 + i
            disc(gen(torch.randn(3, 4))).sum().backward()
    with Store(path, readonly=True) as st:
        roots = [(p.root, held_steps(g)) for p, (_, g) in zip(st.passes(), st.graphs())]
    # each model's passes 0 and 2: both models of steps 0 and 2
    assert [r[1] for r in roots] == [[0], [0], [2], [2]], roots


def test_a_tensor_step_counter_is_no_op_of_the_users_pass(tmp_path):
    """`rec.step(gstep)` with a 0-dim tensor: its read (`_local_scalar_dense`) was
    recorded into the step before, as a witness whose value differed every pass."""
    torch.manual_seed(0)
    model = Tagged()
    gstep = torch.zeros((), dtype=torch.long)
    path = tmp_path / "t.db"
    with torchtrace.Recorder(path) as rec:
        for i in range(3):
            rec.step(gstep)
            model(torch.randn(2, 4)).sum().backward()
            model.zero_grad()
            gstep += 1
    with Store(path, readonly=True) as st:
        got = [(p.step, [n.op for n in g.nodes if n.witness is not None or "scalar" in n.op])
               for p, (_, g) in zip(st.passes(), st.graphs())]
        a, b = st.graph(0), st.graph(1)
    assert got == [(0, []), (1, []), (2, [])]
    assert torchtrace.diff(a, b).kind == "identical", torchtrace.diff(a, b)


def test_a_parameter_outside_any_module_gets_its_gradient_entry(tmp_path):
    """A learnable temperature next to the model, updated by the optimizer inside
    the pass: its value's latest version is the update's; the entry was missing."""
    torch.manual_seed(0)
    net = nn.Linear(4, 4)
    temp = nn.Parameter(torch.full((), 1.5))
    opt = torch.optim.SGD([*net.parameters(), temp], lr=0.1)
    x = torch.randn(8, 4)
    with torchtrace.trace(net) as t:
        loss = (net(x) * temp).pow(2).mean()
        loss.backward()
        grad = temp.grad.clone()
        opt.step()
    grads = {gi.name: gi for gi in t.graph.autograd.grads}
    assert set(grads) == {"weight", "bias", "temp"}
    assert grads["temp"].norm == float(grad.abs()) and grads["temp"].shape == ()
    assert "temp" not in t.graph.autograd.no_grad_params


def _norms(g) -> dict:
    return {gi.name: gi.norm for gi in g.autograd.grads}


def test_grad_norms_are_read_before_the_next_step_s_zero_grad_zeroes_them(tmp_path):
    """(A 2026-11-28 audit.) With `rec.step(i)` and `zero_grad(set_to_none=False)`
    at the top of the loop, the default cut puts the next step's zero_grad at the
    end of each pass: it zeroed the gradients in place before the pass was built,
    and every sampled step stored norms of 0. They are now read before it runs."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    xs = torch.randn(6, 3, 4)
    want = {}
    with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
        for i in range(6):
            rec.step(i)
            opt.zero_grad(set_to_none=False)
            m(xs[i]).pow(2).mean().backward()
            want[i] = {n: float(torch.linalg.vector_norm(p.grad)) for n, p in m.named_parameters()}
            opt.step()
    with Store(tmp_path / "t.db", readonly=True) as st:
        got = {p.step: _norms(g) for p, g in st.graphs()}
    assert sorted(got) == [0, 2, 4]
    for i, norms in got.items():
        assert norms == pytest.approx(want[i], rel=1e-6) and min(norms.values()) > 0, (i, norms)
    assert torch.optim.Optimizer.zero_grad.__module__ == "torch.optim.optimizer"  # (taken out with the Recorder)
    assert nn.Module.zero_grad.__module__ == "torch.nn.modules.module"  # (never patched: see patches.py)


def test_a_second_backward_after_a_zero_grad_gives_its_own_norms_and_clipping_still_counts():
    """Read before a zero_grad, the norms are read again after a later backward
    (LBFGS's closure: zero_grad, backward, per evaluation), and a gradient changed
    in place after the last backward (clip_grad_norm_) is read as it was left."""
    torch.manual_seed(0)
    m = nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(5, 4)
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
        opt.zero_grad(set_to_none=False)
        (3 * m(x)).pow(2).sum().backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        want = {n: float(torch.linalg.vector_norm(p.grad)) for n, p in m.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=False)
    assert _norms(t.graph) == pytest.approx(want, rel=1e-6)
    assert math.hypot(*want.values()) == pytest.approx(0.5, rel=1e-4)  # (clipped: the total norm is 0.5)


def test_a_zero_grad_reads_the_norms_of_its_own_parameters_only_and_autograd_grad_keeps_them():
    """(Review of the fix above.) The first zero_grad read every gradient: a second
    optimizer's clip_grad_norm_ after it was missed. And a torch.autograd.grad after
    the zero_grad (a saliency map) threw the read norms away, leaving zeros."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4, requires_grad=True)
    opts = [torch.optim.SGD(m[0].parameters(), lr=0.1), torch.optim.SGD(m[2].parameters(), lr=0.1)]
    want = {}
    with torchtrace.trace(m) as t:
        m(x).pow(2).sum().backward()
        for k, opt in zip((0, 2), opts):
            torch.nn.utils.clip_grad_norm_(m[k].parameters(), 0.01)
            want.update({f"{k}.{n}": float(torch.linalg.vector_norm(p.grad)) for n, p in m[k].named_parameters()})
            opt.step()
            opt.zero_grad(set_to_none=False)
        torch.autograd.grad(m(x).sum(), x)
    got = _norms(t.graph)
    assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-6)
    assert max(want.values()) <= 0.01 + 1e-6  # (both groups clipped)
