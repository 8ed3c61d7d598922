"""The trace store and the training-loop Recorder."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.modules import module as nn_module
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

import torchtrace
import zoo
from torchtrace.errors import IRError, WriteError
from torchtrace.passref import open_graph
from torchtrace.store import SCHEMA_VERSION, Store

ROOT = Path(__file__).resolve().parents[1]


class Probe(nn.Module):
    """Linear layer that notes whether a dispatch mode was active in its forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.modes = []
        self.hooks = []

    def forward(self, x):
        self.modes.append(len(_get_current_dispatch_mode_stack()))
        self.hooks.append(len(nn_module._global_forward_pre_hooks))
        h = self.fc(x)
        if h.mean().item() > 10:  # a witness whose value changes from step to step
            h = h * 0
        return h


def _train(rec, model, steps=6):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    for step in range(steps):
        rec.step(step)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()


def test_recorder_records_one_pass_per_step_with_phases(tmp_path):
    model = Probe()
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        _train(rec, model)
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert [p.idx for p in passes] == list(range(6))
        assert [p.step for p in passes] == list(range(6))
        assert all(p.root == "Probe" for p in passes)
        g = store.graph(2)
        phases = {n.phase for n in g.nodes}
        assert phases == {"forward", "backward", "optimizer"}
        # the counts are of their own phase (optimizer ops were counted as backward)
        assert passes[2].n_forward == sum(n.phase == "forward" for n in g.nodes)
        assert passes[2].n_backward == sum(n.phase == "backward" for n in g.nodes)
        assert len({p.structure_fp for p in passes}) == 1
        # passes 0-4 share one graph row, but each keeps its own witness values; the last one (no next
        # step's zero_grad markers) has a row of its own: every pass reads back the ops it ran
        rows = store.db.execute("SELECT COUNT(*) FROM graphs").fetchone()[0]
        assert rows == 2
        assert [len(store.graph(p.idx).nodes) for p in passes] == [p.n_ops for p in passes]
        means = [next(n.witness.value for n in store.graph(i).witnesses()) for i in range(6)]
        assert len(set(means)) == 6


class _TwoLines(nn.Module):
    """The same ops from one line or another, with markers or without: equal
    fingerprints (they leave out lines and markers), other graphs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.other_line = self.marked = False

    def forward(self, x):
        with torch.profiler.record_function("marked") if self.marked else contextlib.nullcontext():
            h = self.fc(x)
        if self.other_line:
            return h.relu()  # LINE:other
        return h.relu()  # LINE:usual


def test_passes_that_fingerprints_cannot_tell_apart_read_back_their_own_graph(tmp_path):
    torch.manual_seed(0)
    model = _TwoLines()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for step in range(6):
            rec.step(step)
            opt.zero_grad()
            model.other_line, model.marked = step == 2, step == 3
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
    usual, other = (zoo.marked_line(__file__, m) for m in ("usual", "other"))
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len({p.shapes_fp for p in passes[:5]}) == 1  # (the last has no next step's zero_grad)
        graphs = [store.graph(p.idx) for p in passes]
        assert [len(g.nodes) for g in graphs] == [p.n_ops for p in passes]
        lines = [[n.source.line for n in g.nodes if n.op == "aten.relu.default"] for g in graphs]
        assert lines == [[usual], [usual], [other], [usual], [usual], [usual]]
        markers = [[n.args.get("name") for n in g.nodes if n.op.startswith("profiler._record_function_enter")]
                   for g in graphs]
        assert [m.count("marked") for m in markers] == [0, 0, 0, 1, 0, 0]
        # passes 0, 1 and 4 (their own gradients, times, labels) share one graph row
        assert store.db.execute("SELECT COUNT(*) FROM graphs").fetchone()[0] == 4
        assert len({gi.norm for i in (0, 1, 4) for gi in graphs[i].autograd.grads if gi.name == "fc.weight"}) == 3


def test_marker_names_are_each_pass_s_own_and_share_the_graph(tmp_path):
    """A step number in a ``record_function`` name (``prof.step()``'s
    ``ProfilerStep#N``) made every step a graph row of its own."""
    model = Probe()
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for step in range(5):
            rec.step(step)
            with torch.profiler.record_function(f"train step {step}"):
                model(torch.ones(2, 4)).sum().backward()
                model.zero_grad(set_to_none=True)
    with Store(tmp_path / "t.db", readonly=True) as store:
        names = [[n.args["name"] for n in store.graph(p.idx).nodes if n.args.get("name", "").startswith("train")]
                 for p in store.passes()]
        # (a marker entered before the model call opens in the pass before: passes start at the call)
        assert names == [[f"train step {k + 1}"] for k in range(4)] + [[]]
        assert store.db.execute("SELECT COUNT(*) FROM graphs").fetchone()[0] <= 2  # (the last pass may differ)


def test_a_store_written_before_graph_keys_still_reads(tmp_path):
    model = Probe()
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for step in range(3):
            rec.step(step)
            model(torch.randn(2, 4))
    db = sqlite3.connect(tmp_path / "t.db")  # as stores before 2026-11-27: graphs keyed by shapes_fp alone
    with db:
        [key] = {json.loads(w)["graph"] for (w,) in db.execute("SELECT witnesses FROM passes")}
        db.execute("UPDATE graphs SET shapes_fp = ? WHERE shapes_fp = ?", (key.split(".")[0], key))
        for id_, w in db.execute("SELECT id, witnesses FROM passes").fetchall():
            own = json.loads(w)
            del own["graph"]
            db.execute("UPDATE passes SET witnesses = ? WHERE id = ?", (json.dumps(own), id_))
    db.close()
    with Store(tmp_path / "t.db", readonly=True) as store:
        values = [next(n.witness.value for n in store.graph(p.idx).witnesses()) for p in store.passes()]
        assert len(set(values)) == 3


class _Encoder(torch.nn.Module):
    def __init__(self, emb):
        super().__init__()
        self.emb = emb  # shared with the model that holds it as `shared`
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, ids):
        return self.proj(self.emb(ids))


class _Seq2Seq(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = torch.nn.Embedding(10, 8)
        self.encoder = _Encoder(self.shared)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, ids, enc=None):
        if enc is None:
            enc = self.encoder(ids)
        return self.head(enc + self.shared(ids))


@pytest.mark.parametrize("encoder_first", [False, True])
def test_pass_names_are_relative_to_the_pass_root(tmp_path, encoder_first):
    """generate() of an encoder-decoder calls the encoder first: the model's own
    passes must still be named from the model ('', 'shared.weight'), not from
    the encoder that happened to be the run's first root."""
    torch.manual_seed(0)
    m, ids = _Seq2Seq(), torch.randint(0, 10, (2, 4))
    with torch.no_grad(), torchtrace.Recorder(tmp_path / "t.db") as rec:
        if not encoder_first:
            m(ids)
        enc = m.encoder(ids)
        m(ids, enc=enc)
        m(ids, enc=enc)
    assert rec.recorded == (4 if not encoder_first else 3)
    with Store(tmp_path / "t.db", readonly=True) as store:
        by_root = {}
        for p, g in store.graphs():
            by_root.setdefault(p.root, []).append(g)
    enc_g = by_root["_Encoder"][0]
    assert [c.path for c in enc_g.modules] == ["", "emb", "proj"]
    assert {v.name for v in enc_g.values if v.role == "param"} == {"emb.weight", "proj.weight", "proj.bias"}
    for g in by_root["_Seq2Seq"][-2:]:  # the passes called with enc: one structure whatever came first
        assert [c.path for c in g.modules] == ["", "shared", "head"]
        assert {v.name for v in g.values if v.role == "param"} == {"shared.weight", "head.weight", "head.bias"}
    assert len({g.fingerprints["structure"] for g in by_root["_Seq2Seq"][-2:]}) == 1


def test_sampling_every_and_max_passes(tmp_path):
    model = Probe()
    with torchtrace.Recorder(tmp_path / "t.db", every=3, max_passes=2) as rec:
        _train(rec, model, steps=9)
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [p.step for p in store.passes()] == [0, 3]
    # forward of the sampled steps ran under our mode; the others under none, and
    # without global module hooks (only a pre-hook on the root marks the boundary)
    assert model.modes == [1, 0, 0, 1, 0, 0, 0, 0, 0]
    assert model.hooks == [1, 0, 0, 1, 0, 0, 0, 0, 0]
    assert _get_current_dispatch_mode_stack() == []
    assert not nn_module._global_forward_pre_hooks and not nn_module._global_forward_hooks


def test_unsampled_calls_of_the_model_take_the_short_way_and_sample_the_same(tmp_path, monkeypatch):
    """A call of the model that begins a pass not sampled, after one not sampled
    either, skips the boundary's bookkeeping (~15 µs of a 0.5 ms step, 5 % in
    all): only the calls that begin or end a sampled pass go the full way, and
    the passes sampled are the same. (A second model called in between, and
    step(), take the full way.)"""
    from torchtrace.record.recorder import Recorder

    full: list = []
    orig = Recorder._on_root
    monkeypatch.setattr(Recorder, "_on_root", lambda self, module, *a: (full.append(module), orig(self, module, *a))[1])
    m, ema = nn.Linear(2, 2), nn.Linear(2, 2)
    with Recorder(tmp_path / "t.db", every=4) as rec:
        for i in range(12):
            m(torch.ones(1, 2)).sum().backward()
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [p.label for p in store.passes()] == ["m (Linear) 0", "m (Linear) 4", "m (Linear) 8"]
    assert len(full) == 6  # calls 0, 1, 4, 5, 8, 9
    with Recorder(tmp_path / "s.db", every=3) as rec:
        for i in range(9):
            rec.step(i)
            m(torch.ones(1, 2)).sum().backward()
            if i % 2:
                ema(torch.ones(1, 2))
    with Store(tmp_path / "s.db", readonly=True) as store:
        assert [(p.step, p.root) for p in store.passes()] == [(0, "Linear"), (3, "Linear"), (3, "Linear"),
                                                               (6, "Linear")]


def test_a_model_built_after_another_was_let_go_still_starts_its_pass(tmp_path):
    """(A review of the short way for unsampled calls.) A helper model let go while
    another's unsampled calls followed each other went unnoticed: a model built
    later, before the next sampled pass, began no pass of its own."""
    import gc

    def helper(width: int) -> nn.Module:  # (a frame whose locals torchtrace reads for a name, and that ends)
        probe = nn.Linear(2, width)
        probe(torch.ones(1, 2))
        return probe

    m, kept = nn.Linear(2, 2), []
    with torchtrace.Recorder(tmp_path / "h.db", every=4) as rec:
        for i in range(6):
            rec.step(i)
            if i in (0, 3):
                kept.append(helper(1 if i == 0 else 3))
            m(torch.ones(1, 2)).sum().backward()
            if i == 1:  # (the first helper is let go between two unsampled calls of m)
                kept.clear()
                gc.collect()
    with Store(tmp_path / "h.db", readonly=True) as store:  # (every=4 samples steps 0 and 4, whole: the
        assert [(p.step, p.label) for p in store.passes()] == [  # second helper's pass 4 is not sampled)
            (0, "probe (Linear) 0"), (0, "m (Linear) 1"), (4, "m (Linear) 6")]


@pytest.mark.parametrize("sampling", [dict(every=2), dict(every=3), dict(max_passes=1)])
def test_a_pass_boundary_inside_inference_mode_leaves_the_dispatch_keys_in_step(tmp_path, sampling):
    """An evaluation under ``torch.inference_mode()`` whose model call turns the
    recording off or on: the mode left at its exit what it found at its entry,
    the dispatch keys said a mode was on when none was (or the reverse), and the
    next op failed inside torch (INTERNAL ASSERT). No ``rec.step(i)``: with it, ``every``
    samples steps, whole, and the evaluation's call never turns the recording off or on."""
    def run(rec=None):
        torch.manual_seed(0)
        model, out = nn.Linear(4, 2), []
        for step in range(5):
            x = torch.randn(3, 4)
            model(x).sum().backward()
            with torch.inference_mode():
                out.append(model(x).argmax(-1))
            out.append(x * 2)  # the op after the block
        return out, [p.grad for p in model.parameters()]

    plain = run()
    exit_before = torch.inference_mode.__exit__
    with torchtrace.Recorder(tmp_path / "t.db", **sampling) as rec:
        traced = run(rec)
    assert torch.inference_mode.__exit__ is exit_before and not _get_current_dispatch_mode_stack()
    assert all(torch.equal(a, b) for a, b in zip(plain[0] + plain[1], traced[0] + traced[1]))
    with Store(tmp_path / "t.db", readonly=True) as store:
        graphs = [g for _, g in store.graphs()]
    # passes 0, 2, 4... train, 1, 3... evaluate; every K-th is recorded
    every = sampling.get("every", 1)
    assert [g.meta["grad_mode"] for g in graphs] == ["train" if k % 2 == 0 else "inference"
                                                      for k in range(0, 10, every)][:sampling.get("max_passes")]
    assert all("aten.argmax.default" in {n.op for n in g.nodes} for g in graphs if g.meta["grad_mode"] == "inference")


def test_no_backward_records_forward_only(tmp_path):
    with torchtrace.Recorder(tmp_path / "t.db", backward=False) as rec:
        _train(rec, Probe(), steps=2)
    with Store(tmp_path / "t.db", readonly=True) as store:
        g = store.graph(1)
        assert {n.phase for n in g.nodes} == {"forward"}
        assert g.nodes[-1].op != "aten.add_.Tensor"


def test_plain_tensor_code_is_one_pass_and_mark_step_splits(tmp_path):
    with torchtrace.Recorder(tmp_path / "a.db"):
        w = torch.randn(3, requires_grad=True)
        y = (w * 2).sum()
        y.backward()
    with Store(tmp_path / "a.db", readonly=True) as store:
        assert len(store.passes()) == 1
        assert [n.op for n in store.graph(0).nodes][:2] == ["aten.randn.default", "aten.mul.Tensor"]

    with torchtrace.Recorder(tmp_path / "b.db"):
        for i in range(3):
            torch.ones(2) * i
            torchtrace.mark_step()
    with Store(tmp_path / "b.db", readonly=True) as store:
        assert len(store.passes()) == 3
    torchtrace.mark_step()  # no recorder active: a no-op


def test_setup_before_the_first_forward_is_not_a_pass(tmp_path):
    with torchtrace.Recorder(tmp_path / "t.db"):
        model = nn.Linear(4, 4)          # init ops run here
        x = torch.randn(2, 4)
        model(x)
        model(x)
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [p.n_ops for p in store.passes()] == [2, 2]


@pytest.mark.parametrize("how", ["reentrant", "non-reentrant", "gpt2"])
def test_checkpoint_recompute_in_backward_is_part_of_the_step(tmp_path, how):
    """Modules that backward re-runs (activation checkpointing, transformers'
    gradient_checkpointing_enable()) are called with no module open, but they are
    the step's recompute, not new passes: one pass per step, each recording its
    recompute ops under the same module paths as trace() does."""
    from torch.utils.checkpoint import checkpoint

    import zoo

    if how == "gpt2":
        m = zoo.gpt2().train()
        enable = getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable  # (v5.x name)
        enable({"use_reentrant": False})
        x = zoo.token_ids(8)
        step = lambda: m(x, labels=x).loss.backward()  # noqa: E731
    else:
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
                self.head = nn.Linear(4, 1)

            def forward(self, x):
                return self.head(checkpoint(self.block, x, use_reentrant=how == "reentrant"))

        m = Net()
        x = torch.randn(3, 4, requires_grad=True)
        step = lambda: m(x).sum().backward()  # noqa: E731
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for i in range(3):
            rec.step(i)
            step()
            opt.step()
            opt.zero_grad()
    with torchtrace.trace(m) as t:
        step()

    def recompute(g):
        return sorted({(n.phase, g.module_path(n.module)) for n in g.nodes if n.phase == "recompute"})

    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert [p.step for p in passes] == [0, 1, 2]
        assert passes[1].structure_fp == passes[2].structure_fp
        got = recompute(store.graph(1))
    assert got and got == recompute(t.graph)
    # sampled every other step: the steps between watch the roots only, and a block that a
    # sampled step's backward recomputed is no root (it was: every block call opened a pass)
    with torchtrace.Recorder(tmp_path / "t2.db", every=2) as rec:
        for i in range(4):
            rec.step(i)
            step()
            opt.step()
            opt.zero_grad()
    with Store(tmp_path / "t2.db", readonly=True) as store:
        assert [(p.step, p.root) for p in store.passes()] == [(0, type(m).__name__), (2, type(m).__name__)]


def test_reading_a_parametrized_weight_is_not_a_pass(tmp_path):
    """weight_norm's ParametrizationList is a module with parameters, called with
    no module open whenever the weight is read: at init and in logging between
    steps. Neither is a model call."""
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 2, 3))
    x = torch.randn(1, 2, 8)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        nn.init.normal_(conv.weight)
        for i in range(3):
            rec.step(i)
            conv(x).sum().backward()
            norm = conv.weight.norm().item()  # logging
    assert norm > 0
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [(p.step, p.root) for p in store.passes()] == [(i, type(conv).__name__) for i in range(3)]


class Streaming(nn.Module):
    """A forward that yields (streaming outputs): it returns at once, and its
    submodules run later, as the caller iterates, with no module call open."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x) * 0.5
            yield x


def test_a_generator_forward_is_one_pass_per_step(tmp_path):
    """A root whose forward yields (streaming outputs) returns at once; its
    submodules run later, as the caller iterates, with no module open. They are
    the same step, not a pass each."""
    m, x = Streaming(), torch.randn(2, 4)
    with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:  # unsampled steps watch the roots only
        for i in range(4):
            rec.step(i)
            sum(o.sum() for o in m(x)).backward()
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert [(p.step, p.root) for p in passes] == [(0, "Streaming"), (2, "Streaming")]
        g = store.graph(passes[1].idx)
    assert [g.module_path(n.module) for n in g.nodes if n.short_op == "addmm"] == ["layers.0", "layers.1", "layers.2"]
    _assert_under_the_generator_call(g, "Streaming")


def _assert_under_the_generator_call(g, root_type):
    """The calls a generator forward's body makes, and its own ops, belong to
    the generator's module call (they run after that call returned)."""
    [root] = [c for c in g.modules if c.path == ""]
    assert root.type == root_type
    assert all(c.parent == root.id for c in g.modules if c.path.count(".") == 1), g.modules
    body = [n for n in g.nodes if n.phase == "forward" and n.short_op == "mul.Tensor"]
    assert body and all(n.module == root.id for n in body), [(n.op, n.module) for n in g.nodes]
    # and their backward ops with them (a derivative takes its forward op's module)
    grads = [n for n in g.nodes if n.phase == "backward" and n.short_op == "mul.Tensor"]
    assert all(n.module == root.id for n in grads), [(n.op, n.module) for n in grads]


def test_a_generator_forward_under_trace_keeps_its_calls_under_it():
    m, x = Streaming(), torch.randn(2, 4)
    with torchtrace.trace(m) as t:
        outs = list(m(x))
    _assert_under_the_generator_call(t.graph, "Streaming")
    assert [t.graph.module_path(n.module) for n in t.graph.nodes if n.short_op == "addmm"] == [
        "layers.0", "layers.1", "layers.2"]
    assert torch.equal(outs[-1], list(m(x))[-1])


@pytest.mark.parametrize("order", ["zero_grad first", "zero_grad after step"])
def test_every_pass_reports_the_gradients_its_backward_made(tmp_path, order):
    """Gradients are read when backward ends: by the time a pass is built the
    optimizer has dropped every .grad (zero_grad at the top of the next step
    runs before the forward that ends the pass), and every pass reported none."""
    def train(rec):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        x, norms = torch.randn(6, 4), []
        for i in range(3):
            if rec is not None:
                rec.step(i)
            if order == "zero_grad first":
                opt.zero_grad()
            m(x).pow(2).mean().backward()
            if rec is None:  # the oracle: norms right after backward, untraced
                norms.append({k: p.grad.double().norm().item() for k, p in m.named_parameters()})
            opt.step()
            if order != "zero_grad first":
                opt.zero_grad()
        return norms

    want = train(None)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        train(rec)
    with Store(tmp_path / "t.db", readonly=True) as store:
        got = [{gi.name: gi.norm for gi in store.graph(p.idx).autograd.grads} for p in store.passes()]
    assert [sorted(g) for g in got] == [sorted(w) for w in want]
    for g, w in zip(got, want):
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-6)


def test_chained_top_level_models_report_both_gradients(tmp_path):
    """`loss = B(A(x))` with A and B separate roots: B's pass runs A's backward.
    A's parameters are named there as a further root (`Linear.weight`), and
    their gradients are reported (they were unnamed and left out)."""
    torch.manual_seed(0)
    A, B = nn.Linear(4, 3), nn.Linear(3, 1)
    opt = torch.optim.SGD([*A.parameters(), *B.parameters()], lr=0.1)
    x = torch.randn(5, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(2):
            loss = B(A(x)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            want = {**{f"Linear.{k}": p.grad.norm().item() for k, p in A.named_parameters()},
                    **{k: p.grad.norm().item() for k, p in B.named_parameters()}}
            opt.step()
    with Store(tmp_path / "t.db", readonly=True) as store:
        g = store.graph(store.passes()[-1].idx)
    got = {gi.name: gi.norm for gi in g.autograd.grads}
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)
    assert {v.name for v in g.values if v.role == "param"} == set(want)


def test_a_trace_inside_a_recorder_leaves_the_recorders_pass_as_it_was(tmp_path):
    """The inner trace's mode hands its ops on to the Recorder's: the backward seed
    must still read as backward there (it read forward: its own fingerprint)."""
    m = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    inner = torchtrace.trace(m)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for i in range(3):
            with inner if i == 1 else contextlib.nullcontext():
                m(x).sum().backward()
    assert [n.phase for n in inner.graph.nodes if n.short_op == "ones_like"] == ["backward"]
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
    assert [p.n_backward for p in passes][1:] == [passes[-1].n_backward] * 2
    assert passes[1].structure_fp == passes[2].structure_fp


def test_exception_keeps_finished_passes(tmp_path):
    model = nn.Linear(2, 2)
    x = torch.randn(1, 2)
    with pytest.raises(RuntimeError, match="late"):
        with torchtrace.Recorder(tmp_path / "t.db"):
            for _ in range(3):
                model(x)
            raise RuntimeError("late")
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) == 3 and passes[-1].error == "RuntimeError"
    assert _get_current_dispatch_mode_stack() == []


def test_store_references_and_errors(tmp_path):
    model = nn.Linear(2, 2)
    x = torch.randn(1, 2)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            model(x)
    db = tmp_path / "t.db"
    assert open_graph(f"{db}:1").meta["pass_index"] == 1
    assert open_graph(f"{db}:0:2").meta["pass_index"] == 2
    assert open_graph(str(db)).meta["pass_index"] == 2
    assert open_graph(f"{db}:-3").meta["pass_index"] == 0
    with pytest.raises(torchtrace.TorchtraceError, match="bad pass reference"):
        open_graph(f"{db}:first")
    with pytest.raises(torchtrace.TorchtraceError, match="no such pass"):
        open_graph(f"{db}:7")
    with pytest.raises(torchtrace.TorchtraceError, match="no trace store"):
        open_graph(str(tmp_path / "missing.db"))
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(torchtrace.TorchtraceError, match="not a trace store"):
        Store(tmp_path / "junk.db", readonly=True)
    # any SQLite client can read it
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*), MIN(idx), MAX(idx) FROM passes").fetchone() == (3, 0, 2)


def test_killed_process_keeps_committed_passes(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, torch, torchtrace
        m = torch.nn.Linear(4, 4)
        x = torch.randn(2, 4)
        with torchtrace.Recorder({str(tmp_path / 't.db')!r}):
            for i in range(10_000):
                m(x).sum().backward()
                if i == 3:
                    print("ready", flush=True)
                time.sleep(0.002)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) >= 4
        for p in passes:
            g = store.graph(p.idx)
            assert len(g.nodes) == p.n_ops and g.validate()


def test_recorder_rejects_bad_options(tmp_path):
    with pytest.raises(torchtrace.TorchtraceError, match="every"):
        torchtrace.Recorder(tmp_path / "t.db", every=0)
    with pytest.raises(torchtrace.TorchtraceError, match="max_passes"):
        torchtrace.Recorder(tmp_path / "t.db", max_passes=-1)
    for bad in (0, -5, "10", True):
        with pytest.raises(torchtrace.TorchtraceError, match="max_ops"):
            torchtrace.Recorder(tmp_path / "t.db", max_ops=bad)
    with pytest.raises(torchtrace.TorchtraceError, match="skip"):
        torchtrace.Recorder(tmp_path / "t.db", skip=[3])
    # (a bad on_pass failed at the first pass boundary, inside the model call; "no" read as True)
    for kw, word in (({"on_pass": 3}, "on_pass"), ({"backward": "no"}, "backward"), ({"max_passes": True}, "max_passes")):
        with pytest.raises(torchtrace.TorchtraceError, match=word):
            torchtrace.Recorder(tmp_path / "t.db", **kw)


def test_step_outside_the_recorder_s_block_is_an_error_and_installs_nothing(tmp_path):
    """Before `with rec:` step() raised an AttributeError; after the block, with a
    model that died, it installed a global module pre-hook that ran the closed
    Recorder's pass boundary at the next module call."""
    import gc

    from torch.nn.modules import module as nn_module

    rec = torchtrace.Recorder(tmp_path / "t.db", every=2)
    with pytest.raises(torchtrace.TorchtraceError, match="not entered yet"):
        rec.step(0)
    with rec:
        for i in range(4):
            rec.step(i)
            m = nn.Linear(4, 2)
            m(torch.ones(1, 4)).sum().backward()
            del m
            gc.collect()
    for call in (lambda: rec.step(10), rec.mark_step):
        with pytest.raises(torchtrace.TorchtraceError, match="closed already"):
            call()
    assert not nn_module._global_forward_pre_hooks and not nn_module._global_forward_hooks


def test_api_mistakes_are_torchtrace_errors_before_anything_runs(tmp_path):
    """trace(), variants() and load() say what they expected instead of a
    TypeError from deep inside (or, for max_ops=0, silently recording without a cap)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    for kw, word in (({"max_ops": 0}, "max_ops"), ({"max_ops": "100"}, "max_ops"), ({"skip": 7}, "skip"),
                     ({"skip": ["ok/", None]}, "skip")):
        with pytest.raises(torchtrace.TorchtraceError, match=word):
            with torchtrace.trace(**kw):
                pass
        assert _get_current_dispatch_mode() is None
    with torchtrace.trace(skip="transformers/") as t:  # one prefix as a str: not its characters
        torch.ones(2).add(1)
    assert t.graph.meta["skip"] == ["transformers/"]
    for bad in (t.graph, "trace.db", tmp_path, 3):
        with pytest.raises(torchtrace.TorchtraceError, match="list of passes"):
            torchtrace.variants(bad)
    with pytest.raises(torchtrace.TorchtraceError, match="takes a path"):
        torchtrace.load(3)


def test_more_api_mistakes_are_torchtrace_errors(tmp_path):
    """Each of these raised a raw TypeError/AttributeError/ValueError/KeyError from inside."""
    import numpy as np

    from torchtrace.memory import saved_bytes_by_module

    m = nn.Linear(4, 2)
    with torchtrace.trace(m) as t:
        m(torch.randn(3, 4)).sum().backward()
    g = t.graph
    cases = [(lambda: torchtrace.render(g, "text", hide=5), "hide"),
             (lambda: torchtrace.render(g, "text", hide={"view": 1}), "hide"),
             (lambda: torchtrace.save(g, 3), "file path"),
             (lambda: saved_bytes_by_module(None), "needs a Graph"),
             (lambda: saved_bytes_by_module(torchtrace.diff(g, g)), "needs a Graph"),
             (lambda: saved_bytes_by_module(g, inclusive="no"), "inclusive"),
             (lambda: torchtrace.Recorder(3), "store"),
             (lambda: torchtrace.Recorder(None), "store"),
             (lambda: g.node("zz"), "no such id"),
             (lambda: g.value(["unhashable"]), "no such id")]
    for fn, word in cases:
        with pytest.raises(torchtrace.TorchtraceError, match=word):
            fn()
    with pytest.raises(KeyError):  # a failed lookup is still a KeyError
        g.module("m99")
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for bad in ("a", 2 ** 63):  # (a step SQLite cannot keep raised at the next pass boundary, in the loop)
            with pytest.raises(torchtrace.TorchtraceError, match="step"):
                rec.step(bad)
        rec.step(np.int64(3))  # NumPy and tensor integers are integers
        rec.step(torch.tensor(4))
        m(torch.randn(1, 4))
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [p.step for p in store.passes()] == [4]


def test_input_preparation_opens_the_next_pass(tmp_path):
    """Ops that only build the next call's inputs belong to no finished pass:
    every step records the same graph, the last one included."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with torchtrace.Recorder(tmp_path / "t.db"):
        x = torch.randn(2, 4)
        for _ in range(4):
            out = model(x)
            x = out.detach() * 0.5 + torch.randn(2, 4)   # the next input, built from this output
            if out.sum() > 1e9:  # a witness on the output: stays in this pass
                break
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) == 4 and len({p.structure_fp for p in passes}) == 1
        g = store.graph(1)
        assert [n.op for n in g.nodes if n.module is None][-2:] == ["aten.gt.Scalar", "aten._local_scalar_dense.default"]
        assert not any(n.op == "aten.randn.default" for n in g.nodes)
        assert [v.name for v in g.values if v.role == "input"] == ["input"]


@pytest.mark.parametrize("how", ["slice", "index", "lines"])
def test_batches_and_labels_gathered_for_the_next_step_leave_every_step_the_same(tmp_path, how):
    """`xb, yb = X[idx], Y[idx]` (an int index is no data read) and `X[a:b], Y[a:b]`
    (the labels: another instruction of the same line) build the next step's
    inputs: no pass holds them, so all steps, the last one too, record one graph.
    The same with the labels on a line of their own and a `randint` both share
    (they stayed in the step before: its last step was a variant of its own,
    put down to the logged loss)."""
    torch.manual_seed(0)
    X, Y, perm = torch.randn(40, 8), torch.randn(40, 1), torch.randperm(40)
    m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for i in range(5):
            rec.step(i)
            if how == "slice":
                xb, yb = X[i * 8:(i + 1) * 8], Y[i * 8:(i + 1) * 8]
            elif how == "index":
                idx = perm[i * 8:(i + 1) * 8]
                xb, yb = X[idx], Y[idx]
            else:
                idx = torch.randint(0, 40, (8,))
                xb = X[idx]
                yb = Y[idx]
            loss = nn.functional.mse_loss(m(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if how == "lines":
                print(f"{loss.item():.4f}")  # a logging read: the step's own
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) == 5 and len({p.structure_fp for p in passes}) == 1
        g = store.graph(2)
    assert not [n for n in g.nodes if n.short_op in ("index.Tensor", "slice.Tensor", "randint.low")]
    assert [n.short_op for n in g.nodes if n.witness is not None] == (["_local_scalar_dense"] if how == "lines" else [])
    assert any(n.phase == "optimizer" for n in g.nodes)


def test_an_optimizer_step_on_the_line_of_the_next_batch_stays_in_its_step(tmp_path):
    """`opt.step(); x = torch.randn(...)` on one line: the step's in-place
    updates of the parameters are no input preparation (they were dropped with it)."""
    torch.manual_seed(0)
    m = nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, foreach=False)
    x = torch.randn(3, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            m(x).sum().backward()
            opt.step(); opt.zero_grad(); x = torch.randn(3, 4)  # noqa: E702
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        graphs = [store.graph(p.idx) for p in passes]
        assert len({p.structure_fp for p in passes}) == 1
    steps = [[n.short_op for n in g.nodes if n.phase == "optimizer" and "annotation" not in n.tags] for g in graphs]
    assert steps == [["add_.Tensor"] * 2] * 3
    assert not any(n.short_op == "randn" for g in graphs for n in g.nodes)  # the next batch: in no pass


def test_lbfgs_steps_are_optimizer_ops_in_every_pass(tmp_path):
    """LBFGS calls the model from its closure inside opt.step: each call starts a
    pass after the Optimizer.step marker, which is open from the pass before."""
    torch.manual_seed(0)
    m = nn.Linear(8, 1)
    x = torch.randn(4, 8)
    opt = torch.optim.LBFGS(m.parameters(), max_iter=3)

    def closure():
        opt.zero_grad()
        loss = m(x).pow(2).mean()
        loss.backward()
        return loss

    with torchtrace.Recorder(tmp_path / "t.db"):
        opt.step(closure)
    with Store(tmp_path / "t.db", readonly=True) as store:
        graphs = [store.graph(p.idx) for p in store.passes()]
    assert len(graphs) == 3
    for g in graphs[:2]:  # (the last call's step ends without another update)
        assert {n.phase for n in g.nodes if n.op == "aten.add_.Tensor"} == {"optimizer"}
    for g in graphs:
        assert {n.phase for n in g.nodes if n.op == "aten.addmm.default"} == {"forward"}  # the model, in step
        # LBFGS's own reads of the closure's loss (`float(orig_loss)`) are the optimizer's
        assert {n.phase for n in g.nodes if n.short_op == "_local_scalar_dense"} == {"optimizer"}
        # the loss the closure computes from the model's output is forward too
        assert {n.phase for n in g.nodes if n.short_op in ("pow.Tensor_Scalar", "mean") and n.phase != "backward"} \
            == {"forward"}, \
            [(n.short_op, n.phase) for n in g.nodes]


class Polyak(torch.optim.Optimizer):
    """A step size from the closure's loss and the gradients' norm, and a module
    the optimizer calls on the gradients: the optimizer's work, not the loss."""

    def __init__(self, params) -> None:
        super().__init__(params, {})
        self.squash = nn.Tanh()

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            loss = closure()
        params = [p for g in self.param_groups for p in g["params"]]
        lr = loss / sum(p.grad.pow(2).sum() for p in params).add(1e-8)
        for p in params:
            p.sub_(self.squash(p.grad) * lr)
        return loss


def _mse_closure(opt: torch.optim.Optimizer, m: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The closure `opt.step(closure)` calls (Lightning's automatic optimization, LBFGS)."""
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(m(x), y)
        loss.backward()
        return loss

    return closure


def test_an_optimizer_s_own_work_on_the_closure_s_loss_stays_optimizer_phase():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = Polyak(m.parameters())
    x, y = torch.randn(6, 4), torch.randn(6, 1)

    with torchtrace.trace(m) as t:
        opt.step(_mse_closure(opt, m, x, y))
    phases = {(n.short_op, n.phase) for n in t.graph.nodes}
    assert ("mse_loss", "forward") in phases
    assert {ph for op, ph in phases if op in ("div.Tensor", "sub_.Tensor")} == {"optimizer"}, phases


def test_a_step_that_a_sampled_pass_left_open_closes_in_an_unsampled_one(tmp_path):
    """`opt.step(closure)` (Lightning's automatic optimization) and two eval calls
    per step, every=2: a sampled pass ends inside the step, whose end comes in an
    unsampled pass. The next sampled pass, an eval call, was taken to run inside
    Optimizer.step: its loss was optimizer phase and it made a variant."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x, y = torch.randn(4, 8), torch.randn(4, 1)

    with torchtrace.Recorder(tmp_path / "t.db", every=2):
        for _ in range(6):
            opt.step(_mse_closure(opt, m, x, y))
            with torch.no_grad():
                nn.functional.mse_loss(m(x), y)
                torch.zeros(()).add_(1)  # (computed from no model output)
                nn.functional.mse_loss(m(x), y)
                torch.zeros(()).add_(1)
    with Store(tmp_path / "t.db", readonly=True) as store:
        graphs = [store.graph(p.idx) for p in store.passes()]
    evals = [g for g in graphs if g.meta["grad_mode"] == "no_grad"]
    trains = [g for g in graphs if g.meta["grad_mode"] == "train"]
    assert len(evals) >= 3 and len(trains) >= 3
    for g in evals:
        # (the next step's Optimizer.step and zero_grad markers open before its closure's call: at the end)
        assert {n.phase for n in g.nodes if not n.op.startswith("profiler.")} == {"forward"}
    assert len({g.fingerprints["structure"] for g in evals}) == 1
    for g in trains:
        assert {n.phase for n in g.nodes if n.short_op == "mse_loss"} == {"forward"}


def test_a_dataloader_loop_records_one_graph_per_step(tmp_path):
    """`for x, y in loader` collates x and y in one statement; only x is the model's
    input. The labels' collate ops (a select per sample, a stack) stayed at the end of
    the step before: the last pass differed, and the select indices kept every step
    out of the shared graph. Each epoch's seed draw, read at the `for` line, made
    that epoch's last step a variant of its own."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 2)), batch_size=16)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for epoch in range(3):  # each epoch's iter(loader) draws a seed (random_, then .item()) at the `for`
            for x, y in loader:
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) == 12
        assert len({p.structure_fp for p in passes}) == 1 and len({p.shapes_fp for p in passes}) == 1
        assert store.db.execute("SELECT COUNT(*) FROM graphs").fetchone()[0] == 1
        g = store.graph(0)
        assert not any(n.op in ("aten.select.int", "aten.stack.default") for n in g.nodes)
        names = {(v.role, v.name) for v in g.values}
        assert ("input", "input") in names and ("constant", "y") in names  # y: read from outside the call


def test_a_loader_iterated_on_lines_of_its_own_leaves_no_loading_in_the_steps(tmp_path):
    """`it = iter(loader)` on its own line draws the workers' seed (random_, then
    .item()) apart from the batches; a generator hands them on (as Lightning's
    and accelerate's loaders do): the epoch's last step kept that draw."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 2)), batch_size=2, shuffle=True)

    def batches():
        it = iter(loader)
        while True:
            try:
                yield next(it)
            except StopIteration:
                return

    with torchtrace.Recorder(tmp_path / "t.db"):
        for epoch in range(3):
            for x, y in batches():
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                opt.zero_grad()
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) == 12 and len({p.structure_fp for p in passes}) == 1
        assert not any(n.short_op in ("random_", "randperm") for p in passes for n in store.graph(p.idx).nodes)


def test_persistent_workers_leave_no_loading_in_the_steps(tmp_path):
    """With workers, a pass's next inputs may be a batch an earlier pass rebuilt:
    nothing of this pass made them, and the loader's own ops (a new epoch's seed
    draw) stayed in the step."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(torch.randn(48, 4), torch.randn(48, 1)), batch_size=8, shuffle=True,
                        num_workers=2, persistent_workers=True, multiprocessing_context="fork")
    with torchtrace.Recorder(tmp_path / "t.db"):
        for epoch in range(2):
            for x, y in loader:
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    del loader
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) == 12 and len({p.structure_fp for p in passes}) == 1
        assert not any(n.short_op in ("random_", "randperm.generator")
                       for p in passes for n in store.graph(p.idx).nodes)


_OPEN_AT_ONCE = """
import os, sys, time
from torchtrace.ir import Graph
from torchtrace.store import SCHEMA_VERSION, Store
path, rank = sys.argv[1], int(sys.argv[2])
open(f"{path}.ready{rank}", "w").close()  # a barrier: all 8 are up (torch imported) before any opens the store
while sum(os.path.exists(f"{path}.ready{r}") for r in range(8)) < 8:
    time.sleep(0.001)
with Store(path) as store:
    store.add(Graph(meta={"rank": rank, "world_size": 8}))
"""


def test_ranks_opening_a_new_store_at_once_all_get_in(tmp_path):
    # like torchrun ranks that each open the same fresh store: SQLite does not
    # wait for the lock that switching a new file to WAL takes
    for attempt in range(3):
        path = tmp_path / f"t{attempt}.db"
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, str(path), str(r)],
                                  stderr=subprocess.PIPE, text=True) for r in range(8)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, "\n".join(e for e in errors if e)[-3000:]
        with Store(path, readonly=True) as store:
            assert store.ranks() == list(range(8))


class _WorkerSees(torch.utils.data.Dataset):
    """A dataset whose items run a module with weights (a root module, in the worker)
    and say what the worker process saw of torchtrace: dispatch modes, global hooks."""

    def __init__(self) -> None:
        self.augment = nn.Linear(4, 4)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        seen = len(_get_current_dispatch_mode_stack()) + len(nn_module._global_forward_pre_hooks) \
            + len(nn_module._global_forward_hooks)
        with torch.no_grad():
            x = self.augment(torch.full((4,), float(i)))
        return x, torch.tensor(seen)


def test_forked_dataloader_workers_record_nothing_and_store_nothing(tmp_path):
    """A DataLoader worker forked inside a trace or Recorder inherits the mode stack
    and the global hooks: it must drop them (its ops are not the traced program's),
    and a module it calls must not write passes into the parent's store."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    loader = torch.utils.data.DataLoader(_WorkerSees(), batch_size=2, num_workers=1,
                                         multiprocessing_context="fork")
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        seen = []
        for x, s in loader:
            model(x).sum().backward()
            seen.append(s)
    assert rec.recorded == 2
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert [p.root for p in passes] == ["Linear", "Linear"] and len(passes) == 2, passes
        for p in passes:  # the parent's passes, whole: forward, backward
            assert {n.phase for n in store.graph(p.idx).nodes} >= {"forward", "backward"}
    assert torch.cat(seen).tolist() == [0, 0, 0, 0]
    with torchtrace.trace(model) as t:
        seen = [s for x, s in loader]
        model(x).sum().backward()
    assert torch.cat(seen).tolist() == [0, 0, 0, 0]
    assert any(n.op == "aten.addmm.default" for n in t.graph.nodes)
    assert not _get_current_dispatch_mode_stack() and not nn_module._global_forward_pre_hooks


def test_a_store_in_a_folder_with_uri_characters_reads_back(tmp_path):
    """The read-only store is opened by URI: '#', '?', '%' and spaces in a folder
    name must not cut the path short (it read an empty database before)."""
    path = tmp_path / "run #3 50% ?x" / "trace.db"
    m = nn.Linear(2, 2)
    with torchtrace.Recorder(path):
        m(torch.ones(1, 2)).sum().backward()
    with Store(path, readonly=True) as store:
        [record] = store.passes()
    g = open_graph(f"{path}:0")
    assert record.root == "Linear" and len(g.nodes) == record.n_ops
    assert any(n.op == "aten.addmm.default" for n in g.nodes)


def test_a_store_under_another_name_is_still_a_store(tmp_path):
    """References to a store not named *.db (run.sqlite, run.sqlite:IDX, a folder
    with ':' in its name) open the store, not the JSON loader."""
    import shutil

    path = tmp_path / "runs:a" / "trace.db"
    m = nn.Linear(2, 2)
    with torchtrace.Recorder(path):
        for _ in range(2):
            m(torch.ones(1, 2)).sum().backward()
    other = tmp_path / "runs:a" / "run.sqlite"
    shutil.copy(path, other)
    assert open_graph(str(other)) == open_graph(f"{path}:1")
    assert open_graph(f"{other}:0") == open_graph(f"{path}:0") == open_graph(f"{other}:0:0")
    with pytest.raises(torchtrace.TorchtraceError, match="bad pass reference"):
        open_graph(f"{other}:1:2:3")
    torchtrace.save(open_graph(f"{other}:-1"), tmp_path / "g.json")
    assert open_graph(str(tmp_path / "g.json")) == open_graph(f"{path}:1")  # JSON files still load


def test_a_damaged_store_is_an_error_not_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from torchtrace.cli import app

    m = torch.nn.Linear(4, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(20):
            m(torch.randn(2, 4)).sum().backward()
    c = sqlite3.connect(tmp_path / "t.db")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    data = bytearray((tmp_path / "t.db").read_bytes())
    for i in range(4096, min(len(data), 3 * 4096)):  # pages 2-3 scribbled over (a disk or copy error)
        data[i] = (data[i] * 7 + 3) % 256
    (tmp_path / "garbled.db").write_bytes(bytes(data))
    shutil.copy(tmp_path / "t.db", tmp_path / "badwit.db")
    c = sqlite3.connect(tmp_path / "badwit.db")
    c.execute("UPDATE passes SET witnesses = 'not json'")
    c.commit()
    c.close()
    for name in ("garbled.db", "badwit.db"):
        for argv in (["show"], ["variants"], ["render", "-f", "text"]):
            res = CliRunner().invoke(app, [*argv, str(tmp_path / name)])
            assert res.exit_code == 2, (name, argv, res.output)
            assert "damaged trace store" in res.output and "Traceback" not in res.output
    with pytest.raises(torchtrace.TorchtraceError, match="damaged"):
        Store(tmp_path / "badwit.db", readonly=True).graph(0)


def test_pass_labels_name_the_variable_each_root_was_called_through(tmp_path):
    """A GAN's generator and discriminator are both `Sequential`: the root (the
    class) reads alike, the label says which one ran (a local variable, or an
    attribute of the caller's `self`); a root nothing names keeps its class."""
    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    netD = nn.Sequential(nn.Linear(8, 1))

    class Trainer:
        def __init__(self) -> None:
            self.critic = netD

        def score(self, x: torch.Tensor) -> torch.Tensor:
            return self.critic(x)

    trainer = Trainer()
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(2):
            fake = netG(torch.randn(3, 4))
            trainer.score(fake.detach()).mean().backward()
        [nn.Sequential(nn.Linear(8, 1))][0](fake.detach())
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
    assert [p.label for p in passes] == ["netG (Sequential) 0", "self.critic (Sequential) 1",
                                         "netG (Sequential) 2", "self.critic (Sequential) 3", "Sequential 4"]
    assert {p.root for p in passes} == {"Sequential"}


def test_generator_forwards_called_twice_interleaved_or_through_helpers(tmp_path):
    """Calls from a generator forward's body belong to the call whose generator
    runs them: with two calls of one code interleaved (`zip(a(x), b(x))`), through
    a helper function or a `yield from`. Its own ops go to its call only when one
    call has that code (they cannot be told apart otherwise: never the wrong one)."""
    def apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer(x)

    class Gen(nn.Module):
        def __init__(self, how: str) -> None:
            super().__init__()
            self.how = how
            self.ls = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

        def _steps(self, x: torch.Tensor):
            for layer in self.ls:
                x = apply(layer, x) * 0.5
                yield x

        def forward(self, x: torch.Tensor):
            if self.how == "yield from":
                yield from self._steps(x)
                return
            for layer in self.ls:
                x = (apply(layer, x) if self.how == "helper" else layer(x)) * 0.5
                yield x

    x = torch.randn(2, 4)
    a, b = Gen("plain"), Gen("plain")
    with torchtrace.trace() as t:
        for ya, yb in zip(a(x), b(x)):
            pass
    g = t.graph
    roots = [c for c in g.modules if c.parent is None]
    assert len(roots) == 2 and all(c.path == "" or c.type == "Gen" for c in roots)
    for root in roots:
        kids = [c for c in g.modules if c.parent == root.id]
        assert [c.path.split(".")[-2:] for c in kids] == [["ls", "0"], ["ls", "1"]]
    assert all(n.module is None for n in g.nodes if n.short_op == "mul.Tensor")  # two calls: not told apart
    for how in ("helper", "yield from"):
        m = Gen(how)
        with torchtrace.trace(m) as t:
            outs = list(m(x))
        [root] = [c for c in t.graph.modules if c.parent is None]
        assert [c.parent for c in t.graph.modules if c is not root] == [root.id, root.id], how
        with torchtrace.Recorder(tmp_path / f"{how}.db"):
            for _ in range(2):
                sum(o.sum() for o in m(x)).backward()
        with Store(tmp_path / f"{how}.db", readonly=True) as store:
            assert [p.root for p in store.passes()] == ["Gen", "Gen"]
    assert torch.equal(outs[-1], list(m(x))[-1])


def _read_only_folder(monkeypatch, code: int = 14) -> list:
    """SQLite as in a folder the reader cannot write: a read-only open
    (``mode=ro``) cannot make the WAL index. Returns the URIs opened. ``code``:
    SQLITE_CANTOPEN at the connect, or (1544, as a user not root meets it)
    SQLITE_READONLY_DIRECTORY at the first statement."""
    real, seen = sqlite3.connect, []

    class Refusing:
        def __init__(self, db) -> None:
            self.db = db

        def execute(self, sql, *args):
            e = sqlite3.OperationalError("attempt to write a readonly database")
            e.sqlite_errorcode = code
            raise e

        def close(self):
            self.db.close()

    def connect(database, *args, **kwargs):
        seen.append(database)
        if "mode=ro" in str(database):
            if code != 14:
                return Refusing(real(database, *args, **kwargs))
            e = sqlite3.OperationalError("unable to open database file")
            e.sqlite_errorcode = 14  # SQLITE_CANTOPEN
            raise e
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen


@pytest.mark.parametrize("code", [14, 1544])
def test_a_store_in_a_folder_the_reader_cannot_write_is_read(tmp_path, monkeypatch, code):
    """Opened read-only, a WAL store needs its index file made beside it: in a
    folder the reader cannot write, SQLite cannot open it ("unable to open database
    file", every CLI command said "not a trace store"). It is then read as it is.
    (Simulated: tests run as root, whom no folder refuses.)"""
    m = nn.Linear(2, 2)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for _ in range(2):
            m(torch.ones(1, 2))
    assert rec.recorded == 2
    seen = _read_only_folder(monkeypatch, code)
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [p.idx for p in store.passes()] == [0, 1] and len(store.graph(1).nodes) > 0
    assert [u.rsplit("?", 1)[1] for u in seen] == ["mode=ro", "immutable=1"]


def test_a_store_cut_short_is_said_to_be_damaged(tmp_path):
    """A partial copy of a store was "not a trace store ... Fix: pass the trace.db
    from `torchtrace run`": the file the user had passed."""
    m = nn.Linear(2, 2)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for _ in range(3):
            m(torch.ones(1, 2))
    assert rec.recorded == 3
    raw = (tmp_path / "t.db").read_bytes()
    (tmp_path / "cut.db").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(torchtrace.TorchtraceError, match="damaged trace store") as info:
        with Store(tmp_path / "cut.db", readonly=True) as store:
            store.passes()
    assert ".recover" in str(info.value)
    with pytest.raises(torchtrace.TorchtraceError, match="a trace store, not a graph file"):
        torchtrace.load(tmp_path / "t.db")  # (was "not UTF-8 text")
    with pytest.raises(torchtrace.TorchtraceError, match=r"a pass reference, not a file.*Store\(.*\)\.graph\(1\)"):
        torchtrace.diff(f"{tmp_path / 't.db'}:1", f"{tmp_path / 't.db'}:2")  # (was "no such file")
    db = sqlite3.connect(tmp_path / "t.db")  # another client rewrites a graph cell
    db.execute("UPDATE graphs SET ir = 42")
    db.commit()
    db.close()
    with Store(tmp_path / "t.db", readonly=True) as store:
        with pytest.raises(torchtrace.TorchtraceError, match="damaged trace store"):
            store.graph(0)


@pytest.mark.parametrize("edit, found", [
    ("DELETE FROM graphs", "no graph row for the pass"),  # was "no such pass"
    ("UPDATE passes SET step = 'five'", "step, label, time or error has another type"),
    ("UPDATE passes SET witnesses = json_set(witnesses, '$.meta.grad_mode', 'bogus')", "per-pass meta"),
    ("UPDATE passes SET witnesses = json_set(witnesses, '$.graph', 'elsewhere')", "no graph row for the pass"),
    ("UPDATE passes SET idx = 'abc'", "rank or index is no integer"),  # was a TypeError from `max()` (CLI: a traceback)
    ("UPDATE graphs SET ir = X'00112233'", "the pass's graph (at 1:1): not valid JSON"),  # was "pass a .json file"
])
def test_a_store_other_clients_rewrote_is_said_to_be_damaged(tmp_path, edit, found):
    """The pass rows are read into the graph's meta: unchecked, `export` wrote a
    file that `show` then rejected, and a pass without its graph row was "no
    such pass"."""
    m = nn.Linear(2, 2)
    with torchtrace.Recorder(tmp_path / "t.db"):
        m(torch.ones(1, 2))
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute(edit)
    db.commit()
    db.close()
    with Store(tmp_path / "t.db", readonly=True) as store:
        with pytest.raises(torchtrace.TorchtraceError, match="damaged trace store") as info:
            store.graph(0)
    assert found in str(info.value)


@pytest.mark.parametrize("major, said", [(99, "upgrade torchtrace"), (0, "damaged trace store")])
def test_a_stored_graph_of_a_newer_major_version_says_upgrade_not_damaged(tmp_path, major, said):
    """(An audit.) A graph a newer torchtrace wrote was a "damaged trace store" at
    `t.db:0.version` (a JSON position read as part of the pass reference). A major
    no torchtrace wrote (0) is damage, with no advice to upgrade."""
    import gzip

    from typer.testing import CliRunner

    from torchtrace.cli import app
    m = nn.Linear(2, 2)
    with torchtrace.Recorder(tmp_path / "t.db"):
        m(torch.ones(1, 2))
    db = sqlite3.connect(tmp_path / "t.db")
    for key, ir in db.execute("SELECT shapes_fp, ir FROM graphs").fetchall():
        g = json.loads(gzip.decompress(ir))
        g["version"] = [major, 0]
        db.execute("UPDATE graphs SET ir = ? WHERE shapes_fp = ?", (gzip.compress(json.dumps(g).encode()), key))
    db.commit()
    db.close()
    with Store(tmp_path / "t.db", readonly=True) as store:
        with pytest.raises(torchtrace.TorchtraceError, match="unsupported major version|damaged") as info:
            store.graph(0)
    assert info.value.where == f"{tmp_path / 't.db'}:0" and said in str(info.value), str(info.value)
    assert ("damaged" in str(info.value)) == (major == 0) and ("upgrade" in str(info.value)) == (major == 99)
    res = CliRunner().invoke(app, ["show", str(tmp_path / "t.db")])
    assert res.exit_code == 2 and said in res.output and "Traceback" not in res.output, res.output
    (tmp_path / "g.json").write_text(json.dumps(g))  # a graph file: the same advice
    with pytest.raises(torchtrace.TorchtraceError) as info:
        torchtrace.load(tmp_path / "g.json")
    assert ("upgrade" in str(info.value)) == (major == 99) and "re-record" in str(info.value)


@pytest.mark.parametrize("norm", ["abc", -1.0, [1, 2], True])
def test_a_pass_row_with_a_gradient_norm_that_is_no_norm_is_a_damaged_store(tmp_path, norm):
    """(A review.) "abc" raised an IRError that named no store; -1 and a list loaded as norms."""
    m = nn.Linear(2, 2)
    with torchtrace.Recorder(tmp_path / "t.db"):
        m(torch.ones(1, 2)).sum().backward()
    db = sqlite3.connect(tmp_path / "t.db")
    own = json.loads(db.execute("SELECT witnesses FROM passes").fetchone()[0])
    own["grads"] = [norm] * len(own["grads"])
    db.execute("UPDATE passes SET witnesses = ?", (json.dumps(own),))
    db.commit()
    db.close()
    with Store(tmp_path / "t.db", readonly=True) as store:
        with pytest.raises(torchtrace.TorchtraceError, match="damaged trace store") as info:
            store.graph(0)
    assert "a gradient norm" in str(info.value) and str(tmp_path / "t.db") in str(info.value)


def test_a_label_is_text():
    """`trace(label=5)` wrote an int label, which the schema (and a store) reject."""
    with torchtrace.trace(label=5) as t:
        torch.ones(2) + 1
    assert t.graph.meta["label"] == "5"
    assert torchtrace.Graph.from_dict(t.graph.to_dict()).meta["label"] == "5"


def test_every_k_counts_each_models_passes(tmp_path):
    """Two models whose steps alternate (a GAN's generator and discriminator):
    counted together, `every=2` sampled only the first one's passes. Counted per
    model, both are sampled at steps 0, 2, 4."""
    torch.manual_seed(0)
    gen, disc = nn.Sequential(nn.Linear(2, 4)), nn.Sequential(nn.Linear(4, 1))
    z, real = torch.randn(3, 2), torch.randn(3, 4)
    with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
        for i in range(6):
            rec.step(i)
            gen(z).pow(2).mean().backward()  # one model's step
            disc(real).mean().backward()  # the other's
    with Store(tmp_path / "t.db", readonly=True) as store:
        roots = [(p.step, p.label.split(" (")[0]) for p in store.passes()]
    assert roots == [(i, who) for i in (0, 2, 4) for who in ("gen", "disc")]


class SignGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if x.sum() > 0:  # LINE:signgate
            h = h.tanh()
        return h


def test_the_last_pass_s_own_branch_is_the_read_not_the_end_of_the_run(tmp_path):
    """The last pass's extra op ran inside the model's call: a branch of the
    step, decided by the read before it, not code run after the last step."""
    m = SignGate()
    with torch.no_grad(), torchtrace.Recorder(tmp_path / "t.db"):
        m(-torch.ones(2, 4))
        m(torch.ones(2, 4))
    with Store(tmp_path / "t.db", readonly=True) as store:
        a, b = store.graph(0), store.graph(1)
    assert b.meta["last"] is True
    [h] = torchtrace.diff(a, b).hunks
    assert h.last is None and h.witness is not None
    assert h.witness.line == zoo.marked_line(__file__, "signgate")
    assert h.explanation == f"`test_store.py:{h.witness.line}` read False in A, True in B \u2192 1 op only in B " \
                            "(in `<root>`)"


def test_a_fresh_read_beside_the_next_batch_is_left_out_of_every_pass(tmp_path):
    """`x = torch.randn(...); flag = torch.rand(()).item() < 2` prepares the next
    step on one line: its read is preparation in every pass, the last one too
    (where no next call exists, it made a variant of its own)."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    with torchtrace.Recorder(tmp_path / "t.db"):
        x = torch.randn(2, 4); flag = torch.rand(()).item() < 2  # noqa: E702
        for _ in range(4):
            m.zero_grad()
            m(x).sum().backward()
            x = torch.randn(2, 4); flag = torch.rand(()).item() < 2  # noqa: E702
    assert flag
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) == 4 and len({p.structure_fp for p in passes}) == 1
        assert not any(n.witness for n in store.graph(3).nodes)


def test_a_metric_module_called_after_the_loop_is_code_after_the_last_step(tmp_path):
    torch.manual_seed(0)
    m, crit = nn.Linear(4, 1), nn.MSELoss()
    preds = []
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            p = m(torch.randn(2, 4))
            crit(p, torch.zeros(2, 1)).backward()
            preds.append(p.detach())
        nn.Softmax(0)(crit(torch.cat(preds), torch.zeros(6, 1)).reshape(1))
    with Store(tmp_path / "t.db", readonly=True) as store:
        d = torchtrace.diff(store.graph(1), store.graph(2))
    [h] = [h for h in d.hunks if h.kind == "structural"]
    assert h.last == "B" and h.explanation.startswith("B's pass is the last one recorded")


def test_the_loss_on_the_line_that_builds_the_input_stays_in_its_step(tmp_path):
    """An eval loop, `hits = m(torch.randn(...)).argmax(-1).eq(0).sum()`: the `randn`
    before the call is the next step's data; what ran after the call on the same
    line was taken for that too and left out of every pass but the last."""
    torch.manual_seed(0)
    m = nn.Linear(4, 3)
    with torch.no_grad(), torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            hits = m(torch.randn(2, 4)).argmax(-1).eq(0).sum()
    assert hits.shape == ()
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert len({p.structure_fp for p in passes}) == 1
        ops = [n.short_op for n in store.graph(0).nodes]
    assert ops[-3:] == ["argmax", "eq.Scalar", "sum"] and "randn" not in ops, ops


def test_after_the_call_on_its_lines_is_the_step_s_own_work(tmp_path):
    """A call written over two lines (what follows it is on the line of the
    input's preparation), and a decode loop on one line whose next input is made
    after the call, beside a log of the step's entropy."""
    torch.manual_seed(0)
    m, lm = nn.Linear(4, 3), nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
    with torch.no_grad(), torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            out = m(
                torch.randn(2, 4)).softmax(-1)
    assert out.shape == (2, 3)
    ids, ents = torch.zeros(1, 1, dtype=torch.long), []
    with torch.no_grad(), torchtrace.Recorder(tmp_path / "u.db"):
        for _ in range(4):
            p = lm(ids)[:, -1].softmax(-1); ents.append(-(p * p.log()).sum()); ids = torch.cat([ids, p.argmax(-1, keepdim=True)], 1)  # noqa: E501,E702
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [[n.short_op for n in store.graph(p.idx).nodes] for p in store.passes()] == [["t", "addmm", "_softmax"]] * 3
    with Store(tmp_path / "u.db", readonly=True) as store:
        ops = [[n.short_op for n in store.graph(p.idx).nodes] for p in store.passes()]
    assert len(ops) == 4 and all("log" in o and "sum" in o and "cat" not in o for o in ops), ops


def test_a_last_pass_that_raised_did_not_run_on_past_its_step(tmp_path):
    """The extra op ran in the step and raised (a collective that timed out):
    the pass stopped there, it did not run on to the end of the script. Code
    after the loop that then raises did run on."""
    m = nn.Linear(4, 1)
    with pytest.raises(RuntimeError), torchtrace.Recorder(tmp_path / "t.db"):
        for i in range(3):
            y = m(torch.ones(2, 4)).sum()
            if i == 2:
                y.view(5)  # raises
    with pytest.raises(ValueError), torchtrace.Recorder(tmp_path / "u.db"):
        for i in range(3):
            y = m(torch.ones(2, 4)).sum()
        y.neg()
        raise ValueError("after the loop")
    with Store(tmp_path / "t.db", readonly=True) as store, Store(tmp_path / "u.db", readonly=True) as after:
        a, b = store.graph(1), store.graph(2)
        c, d = after.graph(1), after.graph(2)
    assert b.meta["last"] is True and b.meta["error"] == "RuntimeError"
    [h] = [h for h in torchtrace.diff(a, b).hunks if h.kind == "structural"]
    assert h.last is None and [n.short_op for n in h.only_b] == ["view"]
    assert "last one recorded" not in h.explanation
    [h] = torchtrace.diff(c, d).hunks
    assert h.last == "B" and [n.short_op for n in h.only_b] == ["neg"]


def test_code_after_the_last_step_is_said_to_be_that(tmp_path):
    """The last pass runs on to the end of the block: a `print(loss.item())`
    after the loop made it a variant of its own, blamed on Adam's step count,
    read inside `opt.step()` (3 in A, 4 in B), which steers nothing but the
    optimizer's own ops."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for i in range(4):
            rec.step(i)
            loss = nn.functional.mse_loss(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        final = loss.item()  # after the loop
    assert final > 0
    with Store(tmp_path / "t.db", readonly=True) as store:
        a, b = store.graph(2), store.graph(3)
    assert b.meta["last"] is True and "last" not in a.meta
    assert torchtrace.diff(a, b).why() == ["B's pass is the last one recorded: it ran on to the end of the script "
                                           "(or of the Recorder block), past its last step \u2192 1 op only in B "
                                           "(in `<root>`)"]


def test_code_after_the_last_step_is_said_to_be_that_when_the_next_step_starts_with_ops(tmp_path):
    """(An audit.) With `zero_grad(set_to_none=False)` at the top of the loop every
    pass but the last ends with the next step's zero_ ops: the last pass's code
    after the loop was then followed by those ops only in A, not at the end of
    the diff, and was put down to "Python state"."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    x = torch.randn(8, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            m.zero_grad(set_to_none=False)
            m(x).pow(2).mean().backward()
            opt.step()
        kept = [p.detach().clone() for p in m.parameters()]  # after the loop
    assert len(kept) == 2
    with Store(tmp_path / "t.db", readonly=True) as store:
        a, b = store.graph(1), store.graph(2)
    why = torchtrace.diff(a, b).why()
    assert why[0].startswith("B's pass is the last one recorded: it ran on to the end of the script"), why
    assert all("Python state" not in w for w in why), why


def test_cut_at_step_makes_one_pass_per_step_whatever_the_calls(tmp_path):
    """A cell called once per time step (or a model called on two views) made a
    pass per call: `cut="step"` starts passes at `step()` / `mark_step()` only."""
    torch.manual_seed(0)
    cell, x = nn.GRUCell(3, 4), torch.randn(5, 2, 3)
    with torchtrace.Recorder(tmp_path / "t.db", cut="step") as rec:
        cell(x[0], torch.zeros(2, 4))  # setup before the first step: no pass
        for i in range(3):
            rec.step(i)
            h = torch.zeros(2, 4)
            for t in range(5):
                h = cell(x[t], h)
            h.sum().backward()
            cell.zero_grad(set_to_none=True)
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert [(p.step, p.label) for p in passes] == [(i, f"cell (GRUCell) {i}") for i in range(3)]
        assert len({p.structure_fp for p in passes}) == 1
        g = store.graph(1)
    assert [c.call for c in g.modules if c.path == ""] == [0, 1, 2, 3, 4]  # five calls of the cell, one pass
    assert {n.phase for n in g.nodes} == {"forward", "backward"}
    with pytest.raises(torchtrace.TorchtraceError, match="cut"):
        torchtrace.Recorder(tmp_path / "u.db", cut="steps")


def test_read_only_stores_refuse_writes_and_never_drop_a_log(tmp_path, monkeypatch):
    m = nn.Linear(2, 2)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            m(torch.ones(1, 2))
    with Store(tmp_path / "t.db", readonly=True) as store:
        g = store.graph(0)
        with pytest.raises(torchtrace.TorchtraceError, match="read-only"):  # (was sqlite3's OperationalError)
            store.add(g)
        assert store.graph(2).meta.get("last") is True and "last" not in store.graph(1).meta
    # a read-only folder whose store still has its last writes in the WAL: an error, not fewer passes
    (tmp_path / "t.db-wal").write_bytes(b"\0" * 32)
    _read_only_folder(monkeypatch)
    with pytest.raises(torchtrace.TorchtraceError, match="write-ahead log"):
        Store(tmp_path / "t.db", readonly=True)


@pytest.mark.parametrize("order", ["mark_at_end", "mark_then_step"])
def test_cut_at_step_takes_a_mark_and_a_step_together_as_one_cut(tmp_path, order):
    """`step(i)` and `mark_step()` both in a step made an empty pass between them,
    which `every` counted: every=2 sampled all steps, or none."""
    torch.manual_seed(0)
    m, x = nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4)
    with torchtrace.Recorder(tmp_path / "t.db", cut="step", every=2) as rec:
        for i in range(6):
            if order == "mark_then_step":
                torchtrace.mark_step()
            rec.step(i)
            m(x).sum().backward()
            m.zero_grad(set_to_none=True)
            if order == "mark_at_end":
                torchtrace.mark_step()
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [p.step for p in store.passes()] == [0, 2, 4]


def test_every_k_counts_twin_models_apart(tmp_path):
    """A student and its EMA teacher: same class, same size, alive together,
    called alternately. Counted as one model, `every=2` sampled only the
    student's passes; each is its own model (steps 0, 2, 4 of both)."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 4))
    teacher = nn.Sequential(nn.Linear(4, 4)).requires_grad_(False)
    x = torch.randn(3, 4)
    with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
        for i in range(6):
            rec.step(i)
            loss = (student(x) - teacher(x)).pow(2).mean()
            loss.backward()
    with Store(tmp_path / "t.db", readonly=True) as store:
        roots = [(p.step, p.label.split(" (")[0]) for p in store.passes()]
    assert roots == [(i, who) for i in (0, 2, 4) for who in ("student", "teacher")]



def test_every_k_sees_a_model_built_anew_each_step(tmp_path):
    """A model rebuilt every step is new to the Recorder in every step. While a
    step is not sampled only the models seen so far were watched, so from the
    first unsampled step on the rebuilt models' calls joined that pass. `step(i)`
    watches the next model call, whichever it is: steps 0, 2, 4 are sampled,
    each with its own backward."""
    x = torch.randn(3, 4)
    with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
        for i in range(6):
            rec.step(i)
            m = nn.Sequential(nn.Linear(4, 2))
            m(x).sum().backward()
            del m
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
        assert [p.step for p in passes] == [0, 2, 4]
        graphs = [store.graph(p.idx) for p in passes]
    assert [sum(n.phase == "backward" for n in g.nodes) for g in graphs] == [
        sum(n.phase == "backward" for n in graphs[0].nodes)] * 3


def test_an_input_is_named_by_the_root_call_of_its_own_pass(tmp_path):
    """`m.emb(x)` called on its own (a root of its own pass), then `m(x)`: the
    tensor kept the name `input` from the first call, so the last pass differed
    from the first one ("`embedding` reads `ids` in A, `input` in B")."""
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.fc = nn.Linear(16, 16)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(ids))

    torch.manual_seed(0)
    m = M()
    a, x = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))
    with torchtrace.Recorder(tmp_path / "t.db"):
        m(a)
        m.emb(x)
        m(x)
    with Store(tmp_path / "t.db", readonly=True) as store:
        first, alone, last = (store.graph(p.idx) for p in store.passes())
    assert [v.name for v in alone.values if v.role == "input"] == ["input"]
    assert [v.name for v in last.values if v.role == "input"] == ["ids"]
    assert last.fingerprints == first.fingerprints


def test_mark_step_before_each_model_call_numbers_passes_as_stored(tmp_path):
    """`mark_step()` right before each model call: the empty pass between them
    counted in the labels, so the stored passes 1, 2, 3 read `m (Linear) 2`, `4`, `6`."""
    m = nn.Linear(2, 2)
    x = torch.randn(1, 2)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            torchtrace.mark_step()
            m(x).sum().backward()
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = [p for p in store.passes() if p.root]
    assert [p.label for p in passes] == [f"m (Linear) {p.idx}" for p in passes] and len(passes) == 3


def test_an_on_pass_callback_that_raises_leaves_the_schedule_intact(tmp_path):
    """The callback's error skipped the start of the next pass: an empty pass
    was stored and the next one got the wrong step."""
    calls = []

    def on_pass(graph, index):
        calls.append(index)
        if len(calls) == 2:
            raise ValueError("callback")

    m, x = nn.Linear(4, 2), torch.randn(3, 4)
    with torchtrace.Recorder(tmp_path / "t.db", every=2, on_pass=on_pass) as rec:
        for i in range(6):
            rec.step(i)
            try:
                m(x).sum().backward()
            except ValueError:  # raised by the callback at the boundary (this step's model call)
                pass
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = store.passes()
    assert [(p.step, p.n_ops > 0) for p in passes] == [(0, True), (2, True), (4, True)]


def test_every_k_with_a_model_built_inside_each_step_function(tmp_path):
    """The model lives only inside `train_step()`, `mark_step()` ends each step.
    Once every watched model had died nothing watched model calls any more (and
    the module depth was left at 1): no model call was a pass boundary again."""
    def train_step():
        m = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        m(torch.randn(2, 4)).sum().backward()

    with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
        for i in range(8):
            rec.step(i)
            train_step()
            rec.mark_step()
    with Store(tmp_path / "t.db", readonly=True) as store:
        modelled = [(p.step, p.n_backward > 0) for p in store.passes() if p.root]
    assert modelled == [(0, True), (2, True), (4, True), (6, True)]


def test_a_lazy_module_can_be_recorded_by_a_recorder(tmp_path):
    """The model key summed `numel()` of uninitialised parameters: the user's
    first call raised."""
    m = nn.Sequential(nn.LazyLinear(4), nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's own read of the uninitialised weight is a record fault)
        with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
            for i in range(4):
                rec.step(i)
                m(torch.randn(2, 3)).sum().backward()
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [p.step for p in store.passes()] == [0, 2]


@pytest.mark.parametrize("skip", [(), ("transformers/",)])
def test_every_decode_step_of_generate_is_one_variant(tmp_path, skip):
    """The last decode step kept the position-ids update for a call that never
    came (part of the steps' input preparation only: it was dropped only when all
    of it repeated), so it was a variant of its own; with `--skip transformers/`
    every op of generate() had one user line, and unrelated ops were taken for
    preparation."""
    m = zoo.gpt2()
    ids = zoo.token_ids(6, batch=2)
    with torch.no_grad(), torchtrace.Recorder(tmp_path / "t.db", skip=skip):
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                         do_sample=False, pad_token_id=0)
    assert out.shape == (2, 11)
    with Store(tmp_path / "t.db", readonly=True) as store:
        fps = [store.graph(p.idx).fingerprints["structure"] for p in store.passes()]
    assert len(fps) == 5 and len(set(fps[1:])) == 1 and fps[0] != fps[1], fps


def test_a_reader_waits_for_a_store_being_created(tmp_path):
    """`torchtrace run` creates the file, then its tables: a reader in between
    was told "not a torchtrace store (or a newer one): schema 0, tables []"."""
    import threading

    path = tmp_path / "t.db"
    sqlite3.connect(path).close()  # the file exists, empty, as a writer has just made it

    def create() -> None:
        time.sleep(0.3)
        Store(path).close()

    writer = threading.Thread(target=create)
    writer.start()
    try:
        with Store(path, readonly=True) as store:
            assert store.passes() == []
    finally:
        writer.join()
    (tmp_path / "other.db").write_bytes(b"")  # an empty file nothing creates: still an error, after a wait
    with pytest.raises(torchtrace.TorchtraceError, match="not a torchtrace store"):
        Store(tmp_path / "other.db", readonly=True)


def test_a_batch_that_feeds_two_views_is_the_next_steps_data(tmp_path):
    """`x = X[i]` feeds the teacher's call and, through `x + noise`, the
    student's: it fed something besides the next call's inputs, so nothing was
    dropped, every pass but the last held the next step's batch, and the last
    pass was a variant of its own."""
    torch.manual_seed(0)
    teacher, student = nn.Sequential(nn.Linear(4, 2)), nn.Sequential(nn.Linear(4, 2))
    teacher.requires_grad_(False)
    X = torch.randn(6, 3, 4)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for i in range(6):
            rec.step(i)
            x = X[i]
            x1 = x + 0.1 * torch.randn_like(x)
            target = teacher(x)
            loss = (student(x1) - target).pow(2).mean()
            student.zero_grad()
            loss.backward()
    with Store(tmp_path / "t.db", readonly=True) as store:
        fps = [(p.label.split(" (")[0], store.graph(p.idx).fingerprints["structure"]) for p in store.passes()]
    assert len({fp for who, fp in fps if who == "student"}) == 1, fps
    assert len({fp for who, fp in fps if who == "teacher"}) == 1, fps


@pytest.mark.parametrize("how", ["data", "state_dict"])
def test_a_target_networks_update_through_views_stays_in_its_step(tmp_path, how):
    """`p_t.data.mul_(...)` or a `state_dict()` value's `copy_`: a write into a view
    of a parameter another pass stepped was not seen as a write to state, and the
    update was dropped from every pass but the last as the next step's data."""
    torch.manual_seed(0)
    critic, actor, target = nn.Linear(4, 1), nn.Linear(4, 4), nn.Linear(4, 1)
    target.load_state_dict(critic.state_dict())
    s = torch.randn(8, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            critic(s).pow(2).mean().backward()
            actor(s).mean().backward()
            with torch.no_grad():
                if how == "data":
                    for p, p_t in zip(critic.parameters(), target.parameters()):
                        p_t.data.mul_(0.995)
                        p_t.data.add_(0.005 * p.data)
                else:
                    for ev, mv in zip(target.state_dict().values(), critic.state_dict().values()):
                        ev.copy_(ev * 0.995 + 0.005 * mv)
            s = torch.randn(8, 4)
    with Store(tmp_path / "t.db", readonly=True) as store:
        updates = [sum(n.phase == "forward" and n.short_op in ("mul_.Tensor", "add_.Tensor", "copy_")
                       for n in store.graph(p.idx).nodes)
                   for p in store.passes() if p.label.startswith("actor")]
    assert len(updates) == 3 and len(set(updates)) == 1 and updates[0] >= 2, updates


def test_a_validation_call_after_each_step_keeps_the_last_pass_alike(tmp_path):
    """The next training batch is built after the validation call, so the last
    boundary (train -> val) dropped no preparation; at the end of the run the
    last validation pass kept the next batch's `randn` (5 ops against 4)."""
    torch.manual_seed(0)
    m = nn.Linear(4, 2)
    xv = torch.randn(3, 4)
    x = torch.randn(8, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(4):
            m(x).pow(2).mean().backward()
            with torch.no_grad():
                m(xv)
            x = torch.randn(8, 4)
    with Store(tmp_path / "t.db", readonly=True) as store:
        val = [store.graph(p.idx).fingerprints["structure"] for p in store.passes()][1::2]
    assert len(val) == 4 and len(set(val)) == 1


def test_a_manual_decode_loop_with_a_stop_check_records_one_graph_per_step(tmp_path):
    """`ids = torch.cat([ids, nxt])` then `if (nxt == eos).all(): break`: the
    argmax feeds both the next input and the check. A boundary rule (since
    reverted) kept the `cat` in the last pass, which then differed."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 20))
    ids = torch.randint(0, 19, (1, 3))
    with torch.no_grad(), torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(5):
            logits = m(ids)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], -1)
            if (nxt == 99).all():
                break
    with Store(tmp_path / "t.db", readonly=True) as store:
        fps = [store.graph(p.idx).fingerprints["structure"] for p in store.passes()]
    assert len(fps) == 5 and len(set(fps)) == 1, fps


def test_the_readme_s_query_joins_each_pass_to_its_own_graph(tmp_path):
    """README: a pass's graph is the graphs row keyed by its witnesses' "graph"."""
    from torchtrace.store import Store

    m = nn.Linear(2, 2)
    with Store(tmp_path / "t.db") as store:
        for n in (1, 3, 1):
            with torchtrace.trace(m) as t:
                m(torch.ones(n, 2))
            store.add(t.graph)
    db = sqlite3.connect(tmp_path / "t.db")
    rows = db.execute("SELECT p.idx, g.n_ops, g.shapes_fp, p.shapes_fp FROM passes p JOIN graphs g ON g.shapes_fp = "
                      "json_extract(p.witnesses, '$.graph') AND g.rank = p.rank ORDER BY p.idx").fetchall()
    db.close()
    assert [r[0] for r in rows] == [0, 1, 2] and all(r[1] == len(t.graph.nodes) for r in rows)
    assert rows[0][2] == rows[2][2] != rows[1][2] and all(r[2].startswith(f"{r[3]}.") for r in rows)


def test_every_k_samples_a_teacher_called_only_after_unsampled_micro_batches(tmp_path):
    """Two micro-batches a step and an EMA teacher after them: with every=2 the
    teacher was only ever called while the student's second (unsampled) pass
    ran, so no hook saw it and it was never recorded. The ends of some unsampled
    root calls are probed (a fraction, in turn at every position of a step):
    the teacher is found within a few steps, then sampled every 2nd of its own
    passes; the student's passes are as before. (Without ``rec.step(i)``: with it,
    ``every`` samples steps, whole, and sees the teacher's call in them.)"""
    import copy

    torch.manual_seed(0)
    m = zoo.Tagged(4, 4)  # (its forward multiplies by 100 + the step: zoo.held_steps)
    ema = copy.deepcopy(m).requires_grad_(False)
    opt = torch.optim.SGD(m.parameters(), 0.1)
    with torchtrace.Recorder(tmp_path / "t.db", every=2):
        for step in range(40):
            m.tag = ema.tag = 100 + step
            for _ in range(2):
                m(torch.randn(2, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                ema(torch.randn(2, 4))
    with Store(tmp_path / "t.db", readonly=True) as store:
        passes = [(p.label.split(" ")[0], zoo.held_steps(g)[0]) for p, (_, g) in zip(store.passes(), store.graphs())]
    assert [s for name, s in passes if name == "m"] == list(range(40))  # its 1st micro-batch of each step
    teacher = [s for name, s in passes if name == "ema"]
    assert teacher and teacher[0] < 20 and teacher == list(range(teacher[0], 40, 2))


RECORD_ONE = """
import sys, warnings, torch, torchtrace
warnings.simplefilter("always")
m = torch.nn.Linear(2, 2)
with torchtrace.Recorder(sys.argv[1]):
    m(torch.ones(1, 2)).sum().backward()
"""


def test_a_second_process_recording_the_same_rank_into_a_store_is_refused(tmp_path):
    """Two runs started with one store path (the default ``Recorder()``) wrote
    their passes into one rank's sequence, interleaved, which ``variants`` and
    ``diff`` read as one run. A process's pass of a rank another live process
    writes is refused (the Recorder warns and stops; the script runs on);
    other ranks (a distributed run's) and a later process are accepted."""
    from torchtrace.store import Store

    path = tmp_path / "t.db"
    m = nn.Linear(2, 2)
    with torchtrace.trace(m) as t:
        m(torch.ones(1, 2))
    script = tmp_path / "one.py"
    script.write_text(RECORD_ONE)

    def other(rank=None):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env.update({"RANK": str(rank), "WORLD_SIZE": "2"} if rank is not None else {})
        return subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, env=env,
                              timeout=300)

    import dataclasses
    rank2 = dataclasses.replace(t.graph, meta={**t.graph.meta, "rank": 2, "world_size": 3})
    with Store(path) as st:
        st.add(t.graph)  # this process now writes rank 0
        with Store(path) as again:  # (another Store of it in this process: closing its lock file dropped ours)
            again.add(rank2)
            with pytest.raises(WriteError, match="another Recorder of this process is recording rank 0"):
                again.add(t.graph)  # (two open writers of one rank in one process: two threads' Recorders)
        refused, rank1 = other(), other(rank=1)
        assert refused.returncode == 0 and "another process is recording rank 0 into this store" in refused.stderr, \
            refused.stderr
        assert rank1.returncode == 0 and "could not store" not in rank1.stderr, rank1.stderr
        assert [(p.rank, p.idx) for p in st.passes()] == [(0, 0), (1, 0), (2, 0)]
        st.add(t.graph)  # (its own next pass)
    later = other()
    assert later.returncode == 0 and "could not store" not in later.stderr, later.stderr
    with Store(path) as st:  # (a later Store of this process, the first closed: its ranks are free)
        st.add(rank2)
        assert [(p.rank, p.idx) for p in st.passes()] == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1)]


def test_a_store_s_rank_lock_stays_beside_it_after_a_chdir(tmp_path, monkeypatch):
    """(A review.) The lock file's path was kept relative and opened at the first
    pass: after the script's chdir no lock was taken (or one elsewhere)."""
    from torchtrace.store import Store

    m = nn.Linear(2, 2)
    with torchtrace.trace(m) as t:
        m(torch.ones(1, 2))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with Store("runs/t.db") as st:
        monkeypatch.chdir(tmp_path / "elsewhere")
        st.add(t.graph)
    assert (tmp_path / "runs" / ".t.db.writers").exists() and not any((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize("version, table", [(5, "users"), (SCHEMA_VERSION + 1, "graphs")])
def test_a_writer_leaves_a_file_that_is_no_store_of_its_schema_as_it_was(tmp_path, version, table):
    """Another app's SQLite database, or a store of a newer schema: a Recorder
    (and Store) wrote into it, set its `user_version` to 2 and its journal to
    WAL. It is now refused, with the file as it was."""
    path = tmp_path / "app.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE {table} (x)")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    before = path.read_bytes()
    m = nn.Linear(2, 2)
    with pytest.raises(IRError, match="not a torchtrace store") as e:
        with torchtrace.Recorder(path):
            m(torch.ones(1, 2))
    assert "record into a new path" in str(e.value)
    assert path.read_bytes() == before and not Path(f"{path}-wal").exists()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == version
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()


def test_differentiable_work_between_two_models_stays_in_the_step(tmp_path):
    """(An audit.) A VAE's `z = mu + eps * std` between its encoder and decoder
    (two root models) builds the decoder's input, so it was taken for the next
    call's data and recorded in no pass, though the step's backward goes
    through it. Ops whose results require grad are the step's own work."""
    from torchtrace.store import Store

    torch.manual_seed(0)
    enc, dec = nn.Linear(8, 8), nn.Linear(4, 8)
    opt = torch.optim.SGD([*enc.parameters(), *dec.parameters()], lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(2):
            x = torch.randn(16, 8)
            mu, logvar = enc(x).chunk(2, -1)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # LINE:reparam
            loss = (dec(z) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    line = zoo.marked_line(__file__, "reparam")
    with Store(tmp_path / "t.db", readonly=True) as st:
        graphs = [g for _, g in st.graphs()]
    ops = [[n.short_op for n in g.nodes if n.source is not None and n.source.line == line and n.phase == "forward"]
           for g in graphs]
    assert [("randn_like" in o, "exp" in o, "add.Tensor" in o) for o in ops] == [(True, True, True), (False,) * 3] * 2


def test_an_embedding_table_indexed_for_the_next_batch_stays_data_loading(tmp_path):
    """(A review of the fix above.) `x = emb[ids]` before the model call, with `emb`
    a parameter the step updates: its result requires grad, but it reads only
    what comes from outside the step's forward, so it is the next call's data:
    every pass holds the same ops (it was kept at each pass's end but the last)."""
    from torchtrace.store import Store

    torch.manual_seed(0)
    emb = nn.Parameter(torch.randn(50, 8))
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD([emb, *model.parameters()], lr=0.1)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(4):
            ids = torch.randint(0, 50, (4,))
            x = emb[ids]
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with Store(tmp_path / "t.db", readonly=True) as st:
        assert len({p.structure_fp for p in st.passes()}) == 1


def test_a_step_that_is_no_integer_and_an_unknown_call_id_are_refused(tmp_path):
    """(An audit.) `rec.step(True)` was step 1 (where `every=True` is refused), and
    `Graph.calls_under("m99")` answered {"m99"} where every other lookup raises."""
    from torchtrace.errors import NotInGraphError, UsageError

    m = nn.Linear(2, 2)
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for bad in (True, "a", 1.5, 2 ** 70):
            with pytest.raises(UsageError, match="bad step"):
                rec.step(bad)
        rec.step(3)
        m(torch.ones(1, 2))
    with Store(tmp_path / "t.db", readonly=True) as st:
        g = st.graph(0)
        assert [p.step for p in st.passes()] == [3]
    assert g.calls_under("m0") == {"m0"}
    with pytest.raises(NotInGraphError, match="no such id in modules"):
        g.calls_under("m99")


def test_a_recorder_whose_start_fails_closes_the_store_it_opened(tmp_path, monkeypatch):
    """(A review.) A Recorder given a path whose capture failed to start raised, and
    left the store it had opened open: its connection, and its claim on the rank."""
    from torchtrace.record.capture import Capture

    def failing(self, **kwargs):
        raise RuntimeError("start failed (a test)")

    monkeypatch.setattr(Capture, "start", failing)
    rec = torchtrace.Recorder(tmp_path / "t.db")
    with pytest.raises(RuntimeError, match="start failed"):
        rec.__enter__()
    with pytest.raises(Exception, match="closed"):
        rec.store.db.execute("select 1")
    monkeypatch.undo()
    with torchtrace.Recorder(tmp_path / "t.db"):  # (the same path records again)
        nn.Linear(2, 2)(torch.ones(1, 2))
    with Store(tmp_path / "t.db", readonly=True) as st:
        assert len(st.passes()) == 1


def test_a_reader_sees_a_new_store_s_tables_and_version_together(tmp_path, monkeypatch):
    """(A flaky CI run.) The reader read the version and the tables in two
    statements: a writer that committed between them showed it the tables of a
    store of "schema 0", which it refused. A writer's commit lands here right
    after the reader's first statement that reads the version."""
    from torchtrace import store as S

    path = tmp_path / "t.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("BEGIN IMMEDIATE")
    for statement in S._SCHEMA.split(";"):
        if statement.strip():
            writer.execute(statement)
    writer.execute(f"PRAGMA user_version = {S.SCHEMA_VERSION}")  # (not committed yet)

    class Rows(list):
        def fetchone(self):
            return self[0] if self else None

        def fetchall(self):
            return list(self)

    class Racing(sqlite3.Connection):
        def execute(self, sql, *args):
            out = super().execute(sql, *args)
            if "user_version" in sql and writer.in_transaction:
                rows = Rows(out.fetchall())  # (the statement has read its snapshot)
                writer.execute("COMMIT")
                return rows
            return out

    def racing(uri, readonly):
        db = sqlite3.connect(uri, uri=readonly, timeout=30.0, isolation_level=None, factory=Racing)
        db.execute("PRAGMA busy_timeout = 30000")
        return db

    monkeypatch.setattr(S.Store, "_connect", staticmethod(racing))
    try:
        with Store(path, readonly=True) as store:
            assert store.passes() == [] and not writer.in_transaction
    finally:
        writer.close()
