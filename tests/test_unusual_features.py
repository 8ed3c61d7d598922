"""Recording where PyTorch is used in less common ways (a 2026-11-27 audit):
autocast entered inside the pass, frozen TorchScript, a model let go after its
trace, a hook that scales `.grad` before gradient clipping, `mark_step()` at
the top of each step. Each was wrong before its fix; the tests say how."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchtrace
import zoo
from torchtrace.store import Store


class AutocastInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(2, 2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # (after torchtrace's module pre-hook ran)
            return F.affine_grid(self.theta, [2, 3, 4, 4], align_corners=False), torch.einsum("bij,bjk->bik", x, y)


@pytest.mark.parametrize("grad_mode", [torch.enable_grad, torch.no_grad, torch.inference_mode])
def test_autocast_entered_inside_the_pass_keeps_results_bitwise_equal(grad_mode):
    """A dispatch mode's handler runs with autocast's keys off and cannot see that
    the user turned autocast on; nothing told the recorder when no module call
    followed (functional code, a forward's own `with`): `affine_grid` (and, under
    inference_mode, `einsum`) ran its pieces in float32 where eager gives bfloat16."""
    torch.manual_seed(0)
    m = AutocastInside()
    x, y = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    theta = torch.randn(2, 2, 3)
    with grad_mode():
        plain = m(x, y)
        with torchtrace.trace(m):
            traced = m(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_f = F.affine_grid(theta, [2, 3, 4, 4], align_corners=False)
        with torchtrace.trace() as t:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                traced_f = F.affine_grid(theta, [2, 3, 4, 4], align_corners=False)
    for p, q in [*zip(plain, traced), (plain_f, traced_f)]:
        assert p.dtype == q.dtype == torch.bfloat16 and torch.equal(p, q)
    assert "aten.affine_grid_generator.default" in [n.op for n in t.graph.nodes]
    assert torch.amp.autocast_mode.autocast.__enter__.__name__ == "__enter__"
    assert "__enter__" in vars(torch.amp.autocast_mode.autocast)  # torch's own again (no patch left behind)
    assert vars(torch.amp.autocast_mode.autocast)["__enter__"].__module__.startswith("torch")


def test_a_frozen_torchscript_module_is_recorded():
    """`torch.jit.freeze` leaves a ScriptModule without `training`: the module
    pre-hook read it and the call raised AttributeError inside the trace."""
    torch.manual_seed(0)
    m = torch.jit.freeze(torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()))
    x = torch.randn(3, 4)
    plain = m(x)
    with torchtrace.trace() as t:
        traced = m(x)
    assert torch.equal(plain, traced)
    g = t.graph.validate()
    assert [c.training for c in g.modules] == [None]
    assert {"aten.relu.default"} <= {n.op for n in g.nodes}


@pytest.mark.parametrize("recorder", [False, True])
def test_a_model_is_freed_by_refcount_once_its_trace_ended(recorder, tmp_path):
    """The finished capture sat in a reference cycle with its mode and held every
    parameter and module it had named: `del model` freed nothing until the cyclic
    GC ran (a GPU's weights stayed allocated after `del`)."""
    model, x = nn.Linear(64, 64), torch.randn(2, 64)
    gc.disable()
    try:
        if recorder:
            with torchtrace.Recorder(tmp_path / "t.db") as rec:
                model(x).sum().backward()
            keep = rec
        else:
            with torchtrace.trace(model) as t:
                model(x).sum().backward()
            keep = t.graph
            del t  # (the trace object holds the model it was given, as any call's arguments)
        w = weakref.ref(model.weight)
        del model
        assert w() is None
    finally:
        gc.enable()
    assert keep is not None


def test_clip_grad_norm_after_a_hook_that_scales_a_grad_is_optimizer_phase():
    """A post-accumulate-grad hook's `p.grad.mul_(0.5)` made a new version of the
    .grad in backward: clipping read it, was not taken for gradient processing,
    and its ops after `_foreach_norm` were phase forward."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    def halve(p: torch.Tensor) -> None:
        p.grad.mul_(0.5)

    handle = m[2].bias.register_post_accumulate_grad_hook(halve)
    try:
        with torchtrace.trace(m) as t:
            m(x).sum().backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
    finally:
        handle.remove()
    clip = [n for n in t.graph.nodes if n.module is None and n.phase != "backward" and n.short_op != "sum"]
    assert len(clip) >= 6 and {n.phase for n in clip} == {"optimizer"}, [(n.short_op, n.phase) for n in clip]
    hooked = [n for n in t.graph.nodes if n.short_op == "mul_.Tensor" and n.phase == "backward"]
    assert len(hooked) == 1


def test_mark_step_at_the_top_of_each_step_makes_no_setup_pass(tmp_path):
    """With the default cut, `mark_step()` first thing in each step stored the
    setup before it (the model's init) as pass 0, and `variants` said "the one
    before ran `None`"."""
    torch.manual_seed(0)
    with torchtrace.Recorder(tmp_path / "t.db"):
        m = nn.Linear(4, 2)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            torchtrace.mark_step()
            loss = m(torch.randn(5, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with Store(tmp_path / "t.db", readonly=True) as st:
        passes = list(st.passes())
        graphs = [g for _, g in st.graphs()]
    assert len(passes) == 3 and len({p.structure_fp for p in passes}) == 1
    assert all(g.modules and g.modules[0].type == "Linear" for g in graphs)


@pytest.mark.parametrize("max_passes, every, steps", [(1, 1, [None]), (2, 1, [None, 0]), (None, 2, [None, 0, 2, 4]),
                                                      (1, 2, [None])])
def test_plain_tensor_code_cut_at_the_top_of_each_step_keeps_the_schedule(tmp_path, max_passes, every, steps):
    """(A review of the fix above.) Plain tensor code with `mark_step()` at the top
    of each step keeps its setup as pass 0: `max_passes` counts it (one pass too
    many was stored), and `every` counts from the first step (steps 0 and 1 were
    both stored, then every other one off by one)."""
    stored = []
    with torchtrace.Recorder(tmp_path / "t.db", max_passes=max_passes, every=every,
                             on_pass=lambda g, i: stored.append(g.meta.get("step"))) as rec:
        w = torch.randn(4, 4)
        for i in range(6):
            rec.step(i)
            torchtrace.mark_step()
            (torch.randn(2, 4) @ w).relu().sum()
    assert stored == steps and rec.recorded == len(steps)


def test_an_on_pass_error_at_the_stored_setup_keeps_the_next_pass_apart(tmp_path):
    """The callback raising while the setup was stored skipped the pass it ended:
    two steps were one pass, with a label repeated."""
    calls = []

    def on_pass(g, i):
        calls.append(i)
        if len(calls) == 1:
            raise RuntimeError("callback")

    with torchtrace.Recorder(tmp_path / "t.db", on_pass=on_pass):
        w = torch.randn(4, 4)
        for i in range(3):
            try:
                torchtrace.mark_step()
            except RuntimeError:
                pass
            (torch.randn(2, 4) @ w).relu() * (i + 1)
    with Store(tmp_path / "t.db", readonly=True) as st:
        got = [(p.label, len(g.nodes)) for p, (_, g) in zip(st.passes(), st.graphs())]
    assert [label for label, _ in got] == ["pass 0", "pass 1", "pass 2", "pass 3"]
    assert [n for _, n in got][1:] == [4, 4, 4]


def test_parameters_read_under_torch_func_grad_keep_their_names():
    """(An audit.) Under `torch.func.grad(loss)(params, x)` with `functional_call`,
    the module's slots hold functorch wrappers of the tensors the mode sees: every
    parameter was a nameless constant, where plain `functional_call` names them."""
    from torch.func import functional_call, grad

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    x = torch.randn(5, 4)

    def loss(p, x):
        return functional_call(net, p, (x,)).pow(2).mean()

    plain = grad(loss)(params, x)
    with torchtrace.trace(net) as t:
        traced = grad(loss)(params, x)
    assert all(torch.equal(plain[k], traced[k]) for k in plain)
    named = {v.name: v.shape for v in t.graph.values if v.role == "param"}
    assert named == {k: tuple(p.shape) for k, p in params.items()}


def test_torch_tensor_of_numpy_or_tensor_data_records_one_op_sequence_in_every_grad_mode():
    """(An audit.) Under inference_mode, `torch.tensor(array)` (and of a tensor)
    ends with a `detach_` of its copy that was not taken for bookkeeping: the
    modes recorded different op sequences and a diff blamed fused kernels."""
    import numpy as np

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = torch.tensor(np.array([1, 0, 1]), dtype=torch.bool)
            return self.l(x).masked_fill(mask, 0.0) + torch.tensor(x[0].detach(), dtype=torch.float64).sum()

    m, x = Masked(), torch.randn(2, 3)
    graphs = []
    for mode in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with mode(), torchtrace.trace(m) as t:
            m(x)
        graphs.append(t.graph)
    ops = [[n.op for n in g.nodes if "autograd_internal" not in n.tags] for g in graphs]
    assert ops[0] == ops[1] == ops[2]
    assert torchtrace.diff(graphs[1], graphs[2]).is_empty
    with torch.inference_mode(), torchtrace.trace() as t:
        y = torch.ones(3).detach().double().detach_()  # (the user's own: kept)
    assert [n.short_op for n in t.graph.nodes][-1] == "detach_" and y.dtype == torch.float64


def test_checkpoint_recompute_ops_are_tagged_recompute():
    """(An audit.) Issue #3 asks for recompute ops "tagged `recompute`": they had
    only the phase."""
    from torch.utils.checkpoint import checkpoint

    m, x = nn.Sequential(nn.Linear(4, 4), nn.Tanh()), torch.randn(2, 4, requires_grad=True)
    with torchtrace.trace(m) as t:
        checkpoint(m, x, use_reentrant=False).sum().backward()
    g = t.graph.validate()
    again = [n for n in g.nodes if n.phase == "recompute"]
    assert again and all("recompute" in n.tags for n in again)
    assert not any("recompute" in n.tags for n in g.nodes if n.phase != "recompute")
    assert "recompute,recompute" not in str(g)


def test_grad_scaler_unscale_copies_of_the_inverse_scale_are_optimizer_phase():
    """(An audit.) `unscale_`'s per-device copies of the inverse scale
    (`_MultiDeviceReplicator.get`: `_to_copy`) were phase forward."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(8, 4)
    with torchtrace.trace(model) as t:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # LINE:unscale
        scaler.step(opt)
        scaler.update()
    import zoo
    line = zoo.marked_line(__file__, "unscale")
    at = [n for n in t.graph.nodes if n.source is not None and n.source.line == line]
    assert any(n.short_op == "_to_copy" for n in at) and {n.phase for n in at} == {"optimizer"}


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("where", ["top", "end", "none"])
def test_mark_step_and_a_zero_grad_before_the_model_call_make_one_pass_per_step(tmp_path, where, every):
    """(An audit.) With the default cut, `mark_step()` then `opt.zero_grad()` (or
    any op) before the model call cut twice: each step was two passes, the first
    holding zero_grad's markers, and a mark at the end labelled the next step's
    pass with the step before. The model call now names the pass the mark began,
    and `every` counts the same steps wherever the mark is."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db", every=every) as rec:
        for i in range(6):
            rec.step(i)
            if where == "top":
                torchtrace.mark_step()
            x, y = torch.randn(8, 4), torch.randn(8, 1)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            if where == "end":
                torchtrace.mark_step()
    with Store(tmp_path / "t.db", readonly=True) as st:
        passes = list(st.passes())
    assert [(p.step, p.root) for p in passes] == [(i, "Linear") for i in range(0, 6, every)]
    assert len({p.structure_fp for p in passes}) == 1


def test_a_mark_step_at_the_top_of_a_dataloader_loop_leaves_the_fetch_out(tmp_path):
    """(An audit.) `for x, y in loader: mark_step()`: the fetch of each batch ran
    before the mark, and every pass held the next batch's loading (20 ops at the
    `for` line) but the last: two variants where one step ran."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8, shuffle=True)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for x, y in loader:  # LINE:fetch
            torchtrace.mark_step()
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    import zoo
    fetch = zoo.marked_line(__file__, "fetch")
    with Store(tmp_path / "t.db", readonly=True) as st:
        graphs = [g for _, g in st.graphs()]
        fps = [p.structure_fp for p in st.passes()]
    assert len(graphs) == 4 and len(set(fps[:3])) == 1
    assert not any(n.source is not None and n.source.line == fetch and n.phase == "forward"
                   for g in graphs[:3] for n in g.nodes)


def test_cut_step_with_every_counts_the_first_pass(tmp_path):
    """(An audit.) `cut="step"`, `every=2`, `mark_step()` at the end of each step: the
    first pass (begun at the Recorder's start) was not counted, so steps 0, 1, 3, 5
    were recorded."""
    torch.manual_seed(0)
    enc = nn.Linear(4, 4)
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db", cut="step", every=2):
        for i in range(6):
            a = torch.randn(8, 4)
            loss = (enc(a) - enc(a + 0.1)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            torchtrace.mark_step()
    with Store(tmp_path / "t.db", readonly=True) as st:
        assert [p.label for p in st.passes()] == ["enc (Linear) 0", "enc (Linear) 2", "enc (Linear) 4"]


def test_an_op_issued_through_a_typing_extensions_deprecated_wrapper_is_the_callers_line():
    """torch 2.13 wraps `all_gather_into_tensor` and `reduce_scatter_tensor` in
    `typing_extensions.deprecated`: the collective's line read `typing_extensions.py:3140`
    (a 2026-11-28 audit). The backport counts as the standard library."""
    import warnings

    import typing_extensions

    old_relu = typing_extensions.deprecated("old")(torch.nn.functional.relu)
    with torchtrace.trace() as t, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old_relu(torch.ones(2))  # LINE:call
    (relu,) = [n for n in t.graph.nodes if n.short_op == "relu"]
    assert (relu.source.file, relu.source.line) == (__file__, zoo.marked_line(__file__, "call"))


@pytest.mark.parametrize("every", [1, 2])
def test_a_recorder_samples_a_scripted_model_and_leaves_its_results_alone(tmp_path, every):
    """(An audit.) Between sampled steps a Recorder watches each root model with a
    forward pre-hook of its own, and a `torch.jit.script` module refuses one: the
    first unsampled step raised "register_forward_pre_hook is not supported on
    ScriptModules" in the user's loop. Such a model is watched by the global hooks."""
    def train(rec=None):
        torch.manual_seed(0)
        m = torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        losses = []
        for i in range(5):
            if rec is not None:
                rec.step(i)
            opt.zero_grad()
            loss = m(torch.randn(3, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses), [p.detach().clone() for p in m.parameters()]

    plain = train()
    with torchtrace.Recorder(tmp_path / "t.db", every=every) as rec:
        traced = train(rec)
    assert torch.equal(plain[0], traced[0]) and all(map(torch.equal, plain[1], traced[1]))
    with Store(tmp_path / "t.db", readonly=True) as st:
        passes = list(st.passes())
    assert [p.step for p in passes] == list(range(0, 5, every))
    assert torch._C._len_torch_dispatch_stack() == 0
