"""The recorder against independent oracles: make_fx aten graphs, values
computed by hand, and the state torch is left in."""
from __future__ import annotations

import contextlib
import copy
import difflib
import gc
import io
import json
import subprocess
import sys
import textwrap
import warnings
import weakref

import pytest
import torch
import torch.nn as nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.modules import module as nn_module
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

import torchtrace
from torchtrace.errors import UsageError
import zoo

BOOKKEEPING = {"<built-in function getitem>", "aten.detach.default"}


def _first(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    return out[0]


def _norm(ops):
    # make_fx lifts constants with lift_fresh_copy where eager runs lift_fresh; from torch 2.14 on it
    # also adds an `alias` of an op's output that is returned as is (SDPA's, the pooler's), which a dispatch
    # mode does not see; an alias is a view that does nothing, so it is left out on both sides
    return [o.replace("lift_fresh_copy", "lift_fresh") for o in ops if o not in BOOKKEEPING | {"aten.alias.default"}]


CASES = {
    "gpt2": lambda: (zoo.gpt2(), (zoo.token_ids(),), {}),
    "bert": lambda: (zoo.bert(), (zoo.token_ids(),), {}),
    "t5": lambda: (zoo.t5(), (), {"input_ids": zoo.token_ids(), "decoder_input_ids": zoo.token_ids(4)}),
    "llama": lambda: (zoo.llama(), (zoo.token_ids(),), {}),
    "transformer_encoder": lambda: (zoo.transformer_encoder(), (torch.randn(2, 5, 32),), {}),
    "lstm": lambda: (zoo.lstm(), (torch.randn(2, 5, 8),), {}),
    "resnet_block": lambda: (zoo.resnet_block(), (torch.randn(2, 8, 16, 16),), {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_ops_equal_make_fx(name):
    model, args, kwargs = CASES[name]()
    with torchtrace.trace(model) as t:
        model(*args, **kwargs)
    fx = make_fx(lambda *a: _first(model(*a, **kwargs)))(*args)
    ours = _norm(n.op for n in t.graph.nodes)
    oracle = _norm(str(n.target) for n in fx.graph.nodes if n.op == "call_function")
    assert ours == oracle, "\n".join(difflib.unified_diff(oracle, ours, "make_fx", "torchtrace", lineterm=""))
    assert len(ours) > 10


def test_dataflow_of_a_linear_layer_by_hand():
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with torchtrace.trace(lin) as t:
        lin(x)
    g = t.graph
    t_op, addmm = g.nodes
    assert (t_op.op, addmm.op) == ("aten.t.default", "aten.addmm.default")
    names = [g.value(v).name for v in addmm.inputs]
    assert names == ["bias", "input", None]           # addmm(bias, x, weight.t())
    assert addmm.inputs[2] == t_op.outputs[0]          # the edge t -> addmm
    assert g.value(t_op.outputs[0]).alias_of == t_op.inputs[0]  # t is a view of the weight
    assert [g.value(v).role for v in addmm.inputs] == ["param", "input", "activation"]
    assert g.value(addmm.outputs[0]).shape == (4, 2)
    assert g.outputs == addmm.outputs


def test_outputs_in_a_returned_dataclass_and_of_plain_tensor_code():
    """A forward may return a dataclass (its tensors are the outputs, and the
    autograd graph is walked from them); plain tensor code's outputs are the
    values the user holds, not autograd's detach of a saved output, so train and
    no_grad give one structure."""
    from dataclasses import dataclass

    @dataclass(slots=True)
    class Out:
        logits: torch.Tensor
        hidden: torch.Tensor

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> Out:
            h = self.lin(x)
            return Out(h.relu(), h)

    m = M()
    with torchtrace.trace(m) as t:
        out = m(torch.randn(2, 4))
    g = t.graph
    relu = next(n for n in g.nodes if n.short_op == "relu")
    addmm = next(n for n in g.nodes if n.short_op == "addmm")
    assert g.outputs == (relu.outputs[0], addmm.outputs[0])
    walk, stack = set(), [out.logits.grad_fn]  # oracle: torch's own graph from the returned tensors
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in walk:
            walk.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    assert sorted(a.name for a in g.autograd.nodes) == sorted(fn.name() for fn in walk)

    x = torch.randn(3, requires_grad=True)
    graphs = []
    for grad in (True, False):
        with torch.set_grad_enabled(grad), torchtrace.trace() as t:
            y = x.relu()
            z = x.sigmoid()
        graphs.append(t.graph)
        producers = [g2.node(g2.producers()[v]).short_op for g2 in [t.graph] for v in t.graph.outputs]
        assert producers == ["relu", "sigmoid"], (grad, producers)
    assert graphs[0].fingerprints["structure"] == graphs[1].fingerprints["structure"]
    assert torch.equal(y, x.relu()) and torch.equal(z, x.sigmoid())


def test_a_modules_own_forward_hooks_run_inside_its_call():
    """torch runs the global forward hooks (torchtrace's) before a module's own:
    a user hook that replaces the root's output, or runs ops, came after the call
    had ended (the graph's output was the pre-hook value, the hook's op had no
    module). The call now ends after them; nothing stays registered, also when a
    hook raises; a module that calls itself again ends each call once."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    m.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    m.register_forward_hook(lambda mod, args, out: out + 100)
    m[0].register_forward_hook(lambda mod, args, out: out.tanh())
    x = torch.randn(3, 4)
    expected = m(x)
    own = {k: dict(v) for k, v in ((0, m._forward_hooks), (1, m[0]._forward_hooks))}
    with torchtrace.trace(m) as t:
        y = m(x)
    assert torch.equal(y, expected)
    g = t.graph
    add = next(n for n in g.nodes if n.short_op == "add.Tensor")
    tanh = next(n for n in g.nodes if n.short_op == "tanh")
    assert g.outputs == add.outputs
    assert g.module_path(add.module) == "" and g.module_path(tanh.module) == "0"
    assert {0: dict(m._forward_hooks), 1: dict(m[0]._forward_hooks)} == own

    def fail(mod, args, out):
        raise ValueError("hook failed")

    h = m[0].register_forward_hook(fail)
    with pytest.raises(ValueError), torchtrace.trace(m) as t:
        m(x)
    h.remove()
    assert {0: dict(m._forward_hooks), 1: dict(m[0]._forward_hooks)} == own
    assert not _get_current_dispatch_mode_stack() and not nn_module._global_forward_hooks

    class Again(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, depth: int = 0) -> torch.Tensor:
            return self.lin(x) if depth else self(x, depth + 1) * 3

    a = Again()
    a.register_forward_hook(lambda mod, args, out: out - 1)
    with torchtrace.trace(a) as t:
        out = a(x)
    g = t.graph
    assert [(c.path, c.call, c.parent) for c in g.modules] == [("", 0, None), ("", 1, "m0"), ("lin", 0, "m1")]
    subs = [n for n in g.nodes if n.short_op == "sub.Tensor"]
    assert [g.module(n.module).call for n in subs] == [1, 0] and g.outputs == subs[-1].outputs
    assert torch.equal(out, a(x)) and len(a._forward_hooks) == 1


def _logged(mod, args, out):  # a user's forward hook at module level: picklable
    return None


def _saved(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def test_a_model_copied_or_saved_inside_a_trace_carries_nothing_of_torchtrace(tmp_path):
    """The hook that ends a call after the module's own forward hooks sits in the
    module's hook dict while the trace runs: a deep copy (an EMA) or ``torch.save``
    of the model then took it along (it would end calls of a closed trace, and
    could not be pickled). Copies get an inert stand-in made of builtins."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    m[0].register_forward_hook(_logged)
    x = torch.randn(2, 4)
    with torchtrace.trace(m):
        m(x)
        ema = copy.deepcopy(m)
        saved = _saved(m)
        ema(x)
    assert b"torchtrace" not in saved and b"torchtrace" not in _saved(ema)
    loaded = torch.load(io.BytesIO(saved), weights_only=False)
    for other in (ema, loaded):
        assert torch.equal(other(x), m(x))
        # the user's hook, and a no-op (Inert: torch.compile traces it) or builtins in place of ours
        kinds = [type(h).__name__ for h in other[0]._forward_hooks.values()]
        assert kinds[0] == "function" and set(kinds[1:]) <= {"Inert", "partial"} and len(kinds) == 2
        assert [type(h).__name__ for h in loaded[0]._forward_hooks.values()][1:] == ["partial"]


def test_a_model_copied_or_saved_in_a_skipped_step_carries_nothing_of_torchtrace(tmp_path):
    """While ``every=K`` skips a step, the root model carries a pre-hook of the
    Recorder's (no global hooks: torch's fast path): ``torch.save(model)`` and
    ``copy.deepcopy(model)`` failed on the Recorder's SQLite connection."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(5, 4)
    copies = []
    with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
        for step in range(4):
            rec.step(step)
            model(x).pow(2).mean().backward()
            copies.append((len(model._forward_pre_hooks), copy.deepcopy(model), _saved(model)))
    assert [n for n, _, _ in copies] == [0, 1, 0, 1]  # (a pre-hook in the skipped steps)
    for _, copied, saved in copies:
        assert b"torchtrace" not in saved
        for other in (copied, torch.load(io.BytesIO(saved), weights_only=False)):
            assert torch.equal(other(x), model(x))
    assert not model._forward_pre_hooks and rec.recorded == 2


def test_own_forward_hooks_when_forward_raises_or_a_pass_ends_inside_the_call(tmp_path):
    """The hook that ends a hooked module's call was removed while torch looped
    over the module's hooks after the forward raised ("OrderedDict mutated during
    iteration" replaced the user's error); a pass boundary inside the call left
    such hooks on the module (a model holding them no longer pickles)."""
    class Lazy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.register_forward_hook(lambda mod, args, out: out)  # registered late, then it fails
            raise ValueError("forward raised")

    m = Lazy()
    m.register_forward_hook(lambda mod, args, out: out)
    for nested in (False, True):
        with pytest.raises(ValueError, match="forward raised"):
            with torchtrace.trace(m), (torchtrace.trace(m) if nested else contextlib.nullcontext()):
                m(torch.ones(1, 2))
    assert all(h.__name__ == "<lambda>" for h in m._forward_hooks.values())

    class Steps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(2, 2)
            self.post = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inner(x)
            torchtrace.mark_step()  # a pass boundary inside the call
            return self.post(h).relu()

    s = Steps()
    s.inner.register_forward_hook(lambda mod, args, out: out * 2)
    s.post.register_forward_hook(lambda mod, args, out: out + 1)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            s(torch.ones(1, 2)).sum().backward()
    assert [len(c._forward_hooks) for c in (s, s.inner, s.post)] == [0, 1, 1]
    assert all(h.__name__ == "<lambda>" for c in (s.inner, s.post) for h in c._forward_hooks.values())


def test_inplace_views_and_out_variants():
    a = torch.zeros(4)
    b = torch.ones(4)
    out = torch.empty(4)
    with torchtrace.trace() as t:
        v = a[1:3]          # view
        v.add_(1)           # in-place on a view: a new version of v and of a
        torch.add(a, b, out=out)
        c = a * 2
    g = t.graph
    ops = [n.op for n in g.nodes]
    slice_n = g.nodes[ops.index("aten.slice.Tensor")]
    add_ = g.nodes[ops.index("aten.add_.Tensor")]
    add_out = g.nodes[ops.index("aten.add.out")]
    mul = g.nodes[ops.index("aten.mul.Tensor")]
    assert "view" in slice_n.tags and g.value(slice_n.outputs[0]).alias_of == slice_n.inputs[0]
    assert "inplace" in add_.tags
    new_v, new_a = (g.value(x) for x in add_.outputs)
    assert new_v.version_of == slice_n.outputs[0]
    assert new_a.version_of == slice_n.inputs[0]        # the base got a new version too
    assert "out" in add_out.tags and g.value(add_out.outputs[0]).version_of is not None
    assert mul.inputs[0] == new_a.id                    # later reads see the written version
    assert c.shape == (4,) and json.dumps(g.to_dict())  # all args are JSON-safe


def test_an_input_read_before_the_call_is_named_by_the_forward():
    """`m(ids, labels=ids.clone())` reads ids (the clone) before the call: it was
    `input0`, so the same model with and without labels differed in its inputs."""
    m = zoo.gpt2()
    ids = zoo.token_ids(8)
    with torchtrace.trace(m) as t:
        m(ids, labels=ids.clone())
    with torchtrace.trace(m) as t2:
        m(input_ids=ids)
    for g in (t.graph, t2.graph):
        assert [(v.name, v.shape) for v in g.values if v.role == "input"] == [("input_ids", (1, 8))]


def test_tensors_inside_argument_objects_are_named_inputs():
    """An encoder-decoder's cache is four levels deep: past_key_values
    .self_attention_cache.layers[0].keys. Its tensors were unnamed constants."""
    class Layer:
        def __init__(self, t):
            self.keys, self._private = t, t * 0

    class Inner:
        def __init__(self, t):
            self.layers = [Layer(t)]

    class Outer:
        def __init__(self, t):
            self.self_attention_cache = Inner(t)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, **kwargs):
            return self.fc(x) + kwargs["cache"].self_attention_cache.layers[0].keys

    m, x, kv = M(), torch.randn(2, 4), torch.randn(2, 4)
    with torchtrace.trace(m) as t:
        m(x, cache=Outer(kv))
    assert sorted((v.role, v.name) for v in t.graph.values if v.role == "input") == [
        ("input", "cache.self_attention_cache.layers[0].keys"), ("input", "x")]


@pytest.mark.parametrize("code,error", [(0, None), (None, None), (3, "SystemExit"), ("bye", "SystemExit")])
def test_a_clean_sys_exit_is_no_error(code, error):
    m = nn.Linear(2, 2)
    with pytest.raises(SystemExit):
        with torchtrace.trace(m) as t:
            m(torch.ones(1, 2))
            sys.exit(code)
    assert t.graph.meta["error"] == error


def test_args_are_recorded_json_safe():
    x = torch.randn(2, 3, 4)
    with torchtrace.trace() as t:
        x.view(6, 4).sum(dim=1, keepdim=True).to(torch.float64)
        torch.zeros(2, dtype=torch.int64, device="cpu")
        x * 2.5
    g = t.graph
    by_op = {n.op: n for n in g.nodes}
    assert by_op["aten.view.default"].args == {"size": [6, 4]}
    assert by_op["aten.sum.dim_IntList"].args == {"dim": [1], "keepdim": True}
    assert by_op["aten._to_copy.default"].args["dtype"] == "torch.float64"
    assert by_op["aten.zeros.default"].args["dtype"] == "torch.int64"
    assert "factory" in by_op["aten.zeros.default"].tags
    assert by_op["aten.mul.Tensor"].args == {"other": 2.5}
    json.dumps(g.to_dict(), allow_nan=False)


def test_witnesses_values_and_lines():
    m = zoo.Branchy()
    x = torch.full((2, 4), 0.5)  # fc output sum decides the `if`; |x|.sum() = 4 -> item() = 4
    with torch.no_grad():
        expected_if = bool(m.fc(x).sum() > 0)
    with torchtrace.trace(m) as t:
        m(x)
    ws = [(n.witness.value, n.source.line) for n in t.graph.witnesses()]
    assert ws == [
        (expected_if, zoo.marker_line("if")),
        (4.0, zoo.marker_line("item")),
        (True, zoo.marker_line("while")),
        (True, zoo.marker_line("while")),
        (False, zoo.marker_line("while")),
    ]
    assert all(n.source.file == zoo.__file__ and "witness" in n.tags for n in t.graph.witnesses())


class TruthTests(nn.Module):
    """Truth tests of tensors that are not bool: Python reads bool(t)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, x, k):
        s = self.fc(x).sum()
        n = 0
        while k:  # LINE:truth-while
            k = k - 1
            n += 1
        if s:  # LINE:truth-if
            n += 1
        first = not s  # LINE:truth-not
        c = s.item()  # LINE:truth-item
        return s * n + first + c


def test_a_truth_test_of_a_tensor_records_what_python_read():
    """``if s:`` on a float tensor reads ``bool(s)`` (through
    ``_local_scalar_dense``, which returns the number): the witness said
    1.03 where Python read True, and two runs that took the same branch read
    different values. ``.item()`` keeps its number."""
    m = TruthTests()
    with torch.no_grad():
        s = m.fc(torch.ones(2, 4)).sum().item()
    with torchtrace.trace(m) as t:
        m(torch.ones(2, 4), torch.tensor(2))
    line = {k: zoo.marked_line(__file__, f"truth-{k}") for k in ("while", "if", "not", "item")}
    got = [(n.source.line, n.witness.value) for n in t.graph.witnesses()]
    assert got == [(line["while"], True), (line["while"], True), (line["while"], False), (line["if"], s != 0),
                   (line["not"], s != 0), (line["item"], s)]


def test_a_number_a_library_s_bool_compares_is_recorded_as_read(tmp_path):
    """(A review.) The truth test is the reading frame's, not the user line's:
    ``if batch:`` whose ``__bool__`` (in a skipped library) reads ``n.item() > 5``
    read the number 3.0, and the branch went False; it was recorded as True."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "batchlib.py").write_text(textwrap.dedent("""
        class Batch:
            def __init__(self, n):
                self.n = n
            def __bool__(self):
                return self.n.item() > 5
    """))
    sys.path.insert(0, str(lib))
    try:
        import batchlib
    finally:
        sys.path.remove(str(lib))
    m = nn.Identity()
    with torchtrace.trace(m, skip=[str(lib)]) as t:
        if batchlib.Batch(m(torch.tensor(3.0))):
            pass
    assert [n.witness.value for n in t.graph.witnesses()] == [3.0]


def test_data_dependent_shapes_are_witnesses():
    x = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0])
    with torchtrace.trace() as t:
        x[x > 0]
        torch.nonzero(x < 0)
        torch.equal(x, x)
    ws = {n.op: n.witness for n in t.graph.witnesses()}
    assert ws["aten.nonzero.default"].shape == (2, 1)
    assert ws["aten.equal.default"].value is True
    assert any(w.shape == (3,) for w in ws.values() if w.shape is not None)  # boolean indexing


def test_index_is_a_witness_only_with_a_boolean_index():
    """torch tags index.Tensor 'dynamic output shape' whatever its indices; an int
    index (an embedding table's rows, cos[position_ids]) reads no data: no
    witness, so diffs never blame it."""
    x = torch.arange(12.0).reshape(3, 4)
    rows, mask = torch.tensor([2, 0]), torch.tensor([True, False, True])
    with torchtrace.trace() as t:
        x[rows]                                       # int index: shape from the index's shape
        x[mask]                                       # bool mask: shape from the data
        x[rows, torch.tensor([1, 3])]                 # int indices in two dims
        x[:, torch.tensor([0, 1, 1, 0], dtype=torch.bool)]
    got = [(n.short_op, "witness" in n.tags, n.witness.shape if n.witness else None)
           for n in t.graph.nodes if n.short_op == "index.Tensor"]
    assert got == [("index.Tensor", False, None), ("index.Tensor", True, (2, 4)),
                   ("index.Tensor", False, None), ("index.Tensor", True, (3, 2))]


def test_shared_module_called_twice_and_module_under_two_parents():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(3, 3)

        def forward(self, x):
            return self.shared(self.shared(x))

    class TwoParents(nn.Module):
        def __init__(self):
            super().__init__()
            blk = nn.Linear(3, 3)
            self.a = blk
            self.b = nn.Sequential(nn.ReLU(), blk)

        def forward(self, x):
            return self.b(self.a(x))

    m, x = Twice(), torch.randn(1, 3)
    with torchtrace.trace(m) as t:
        m(x)
    calls = [(c.path, c.type, c.call, c.parent) for c in t.graph.modules]
    assert calls == [("", "Twice", 0, None), ("shared", "Linear", 0, "m0"), ("shared", "Linear", 1, "m0")]
    assert [t.graph.module_path(n.module) for n in t.graph.nodes] == ["shared"] * 4

    m2 = TwoParents()
    with torchtrace.trace(m2) as t:
        m2(x)
    calls = [(c.path, c.call, c.parent) for c in t.graph.modules]
    assert calls == [("", 0, None), ("a", 0, "m0"), ("b", 0, "m0"), ("b.0", 0, "m2"), ("b.1", 1, "m2")]


def test_module_dict_keys_with_spaces_and_transformer_paths():
    m, ids = zoo.gpt2(), zoo.token_ids()
    with torchtrace.trace(m) as t:
        m(ids)
    paths = {c.path for c in t.graph.modules}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj", "lm_head"} <= paths
    params = {v.name for v in t.graph.values if v.role == "param"}
    assert "transformer.h.1.attn.c_attn.weight" in params
    assert [v.name for v in t.graph.values if v.role == "input"] == ["input_ids"]

    d, x = nn.ModuleDict({"my layer": nn.Linear(2, 2)}), torch.randn(1, 2)
    with torchtrace.trace(d) as t:
        d["my layer"](x)
    assert t.graph.modules[0].path == "my layer"


GRAD_MODES = {"train": torch.enable_grad, "no_grad": torch.no_grad, "inference": torch.inference_mode}


@pytest.mark.parametrize("name", ["gpt2", "bert", "mlp", "lstm"])
def test_grad_modes_record_the_same_ops(name):
    model, args = {
        "gpt2": lambda: (zoo.gpt2(), (zoo.token_ids(),)),
        "bert": lambda: (zoo.bert(), (zoo.token_ids(),)),
        "mlp": lambda: (nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.LayerNorm(8), nn.Dropout(0.1),
                                      nn.Linear(8, 2)).eval(), (torch.randn(3, 4),)),
        "lstm": lambda: (zoo.lstm(), (torch.randn(2, 5, 8),)),
    }[name]()
    seqs = {}
    for mode, ctx in GRAD_MODES.items():
        with ctx():
            with torchtrace.trace(model) as t:
                model(*args)
        assert t.graph.meta["grad_mode"] == mode
        seqs[mode] = [n.op for n in t.graph.nodes if "autograd_internal" not in n.tags]
    assert seqs["train"] == seqs["no_grad"] == seqs["inference"]


def test_fused_kernels_are_recorded_as_they_ran():
    enc = zoo.transformer_encoder()
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), torchtrace.trace(enc) as t:
        enc(x)
    # eval + no_grad takes PyTorch's fast path: one fused op per layer, not a fake decomposition
    assert [n.op for n in t.graph.nodes] == ["aten._transformer_encoder_layer_fwd.default"] * 2


def test_source_lines_and_skip_prefixes():
    m = zoo.gpt2()
    ids = zoo.token_ids()
    with torchtrace.trace(m) as t:
        m(ids)
    files = {n.source.file for n in t.graph.nodes}
    assert any("/transformers/" in f for f in files)
    assert not any("/torch/" in f.replace("\\", "/") for f in files)
    with torchtrace.trace(m, skip=["transformers/"]) as t:
        line = __import__("inspect").currentframe().f_lineno + 1
        m(ids)
    assert {(n.source.file, n.source.line) for n in t.graph.nodes} == {(__file__, line)}


def test_standard_library_frames_are_not_the_users_line():
    """`copy.deepcopy` (stdlib) calls Tensor.__deepcopy__ (torch): its ops belong
    to the line that called deepcopy, as torch's own frames do."""
    import copy
    import inspect

    m = nn.Linear(3, 2)
    with torchtrace.trace() as t:
        line = inspect.currentframe().f_lineno + 1
        twin = copy.deepcopy(m)
        twin(torch.ones(1, 3))
    ops = [n for n in t.graph.nodes if n.source is not None]
    assert ops and not any("copy.py" in n.source.file for n in ops)
    copies = [n for n in ops if n.source.line == line]
    assert copies and {n.source.file for n in copies} == {__file__}, [(n.op, n.source) for n in ops]


def test_storage_arguments_are_described_not_printed():
    """An op taking a storage (how a DataLoader worker's batch is rebuilt) records its
    size, not its repr: that prints the bytes, which would make the args (and the
    shapes fingerprint) depend on the data."""
    graphs = []
    for fill in (1.0, 2.0):
        src = torch.full((3,), fill).untyped_storage()
        with torchtrace.trace() as t:
            torch.empty(0).set_(src, 0, (3,), (1,))
        graphs.append(t.graph)
    args = [n.args for n in graphs[0].nodes if n.op.startswith("aten.set_")]
    assert args == [{"source": "<storage 12 bytes cpu>", "storage_offset": 0, "size": [3], "stride": [1]}]
    assert graphs[0].fingerprints == graphs[1].fingerprints


def test_wrapper_subclass_parameters_are_traced():
    """A parameter that is a wrapper tensor subclass (as DTensor is) has no storage
    of its own: torch raises on its data pointer. The trace reads the storages it
    wraps instead, records the pass and leaves the results unchanged."""
    from torch.testing._internal.two_tensor import TwoTensor

    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    m.weight = nn.Parameter(TwoTensor(torch.randn(2, 3), torch.randn(2, 3)))
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError):
        m.weight.untyped_storage().data_ptr()
    plain = m(x)
    with torchtrace.trace(m) as t:
        traced = m(x)
        traced.sum().backward()
    assert torch.equal(plain.a, traced.a) and torch.equal(plain.b, traced.b)
    g = t.graph
    assert "record_errors" not in g.meta
    assert any(n.op == "aten.addmm.default" for n in g.nodes)
    assert {a.name for a in g.autograd.nodes} >= {"AddmmBackward0", "torch::autograd::AccumulateGrad"}


def test_a_failed_read_of_the_autograd_graph_keeps_the_ops(monkeypatch):
    """If torch refuses a read while the graph is built, the block still exits
    normally: the ops are kept, the autograd part is empty and meta says why."""
    from torchtrace.record import autograd as tracker

    def refuse(node):
        raise RuntimeError("cannot read this Node")

    monkeypatch.setattr(tracker, "_saved_storages", refuse)
    m = nn.Linear(3, 2)
    with pytest.warns(RuntimeWarning, match="the autograd graph"):
        with torchtrace.trace(m) as t:
            y = m(torch.ones(1, 3))  # alive at the block's end: its graph is walked then
    g = t.graph.validate()
    assert torch.equal(y, m(torch.ones(1, 3)))
    assert [n.op for n in g.nodes if n.op == "aten.addmm.default"] and g.autograd.nodes == ()
    assert g.meta["record_errors"]["first"] == "the autograd graph: RuntimeError: cannot read this Node"


def _mul_in_a_device_thread(monkeypatch, handler):
    """A ``mul`` issued as in the autograd engine's device thread: ``handler(rec)``
    (the recording mode's ``__torch_dispatch__``, or a mode's above it) run
    directly as a new thread's target, inside a graph task, while the recording
    thread waits at a known line (LINE:wait). The graph, validated."""
    import _thread
    import time

    from torchtrace.record import enginephase
    from torchtrace.record import mode as mode_mod

    m = nn.Linear(3, 2)
    y = m(torch.ones(1, 3)).sum()  # (a Node made before the block: no op of the pass to take a line from)
    with torchtrace.trace(m) as t:
        args = (torch.ones(2), torch.full((2,), 3.0))
        rec = _get_current_dispatch_mode_stack()[-1]
        monkeypatch.setattr(mode_mod, "_current_node", lambda: y.grad_fn)  # as inside backward's task
        monkeypatch.setattr(enginephase, "_task_id", lambda: 7)
        n = len(rec.events)
        _thread.start_new_thread(handler(rec), (torch.ops.aten.mul.Tensor, (), args, None))
        deadline = time.monotonic() + 10  # (where the handler fails, no event comes)
        while len(rec.events) == n and time.monotonic() < deadline:
            time.sleep(0.001)  # LINE:wait
        monkeypatch.undo()
    return t.graph.validate()


def test_ops_from_a_thread_with_no_python_frame_get_the_backward_line(monkeypatch):
    """On CUDA the autograd engine runs backward in its device thread, where the
    mode's handler is the bottom Python frame (sys._getframe(1) raises: every
    backward op was a record error). Emulated on CPU: the handler as the thread's
    target. The op is recorded as backward, at the line the recording thread waits at."""
    g = _mul_in_a_device_thread(monkeypatch, lambda rec: rec.__torch_dispatch__)
    assert "record_errors" not in g.meta
    mul = [nd for nd in g.nodes if nd.op == "aten.mul.Tensor"]
    assert len(mul) == 1 and mul[0].phase == "backward"
    wait = zoo.marked_line(__file__, "wait")
    assert (mul[0].source.file.endswith("test_recorder.py"), mul[0].source.line) == (True, wait)


def test_ops_in_a_device_thread_under_a_users_mode_get_the_backward_line(monkeypatch):
    """A dispatch mode above ours (FlopCounterMode, a ``trace()`` handing its ops
    on to a Recorder) runs its handler in the engine's device thread too: there
    the frames below ours are all the modes' own. Seen on an H100: every CUDA
    backward op under FlopCounterMode had no source line. Emulated on CPU as in
    the test above, with a user mode's handler as the thread's target."""

    class UserMode:  # the handler of a mode above ours, handing the op on
        def __init__(self, rec):
            self.rec = rec

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return self.rec.__torch_dispatch__(func, types, args, kwargs)

    g = _mul_in_a_device_thread(monkeypatch, lambda rec: UserMode(rec).__torch_dispatch__)
    mul = [nd for nd in g.nodes if nd.op == "aten.mul.Tensor"]
    assert len(mul) == 1 and mul[0].phase == "backward" and mul[0].source is not None
    wait = zoo.marked_line(__file__, "wait")
    assert (mul[0].source.file.endswith("test_recorder.py"), mul[0].source.line) == (True, wait)


def test_module_calls_in_a_thread_that_carries_the_mode_are_scoped():
    """The autograd engine's device threads carry the recording thread's mode
    (CUDA runs backward, and checkpoint's recompute, there): module calls in such
    a thread get their module path. A thread without the mode records nothing."""
    import threading

    from torch.utils._python_dispatch import _pop_mode, _push_mode

    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    x = torch.randn(2, 3)

    def carried(mode):
        _push_mode(mode)
        try:
            m[0](x)
        finally:
            _pop_mode()

    with torchtrace.trace(m) as t:
        rec = _get_current_dispatch_mode_stack()[-1]
        for target, args in ((carried, (rec,)), (m, (x,))):
            th = threading.Thread(target=target, args=args)
            th.start()
            th.join()
    g = t.graph
    assert [(n.short_op, g.module_path(n.module)) for n in g.nodes if n.short_op == "addmm"] == [("addmm", "0")]


def test_an_op_that_raised_is_recorded_with_its_inputs_and_error(tmp_path):
    """The op the user's code broke on is the one most worth seeing: it is a node
    (inputs, line, no outputs) and meta.raised names it with the error; the
    exception reaches the user unchanged. A raise caught by the code is kept too."""
    m = nn.Linear(4, 4)
    x, w = torch.randn(2, 4), torch.randn(6, 4)
    with pytest.raises(RuntimeError) as plain:
        m(x) @ w
    with pytest.raises(RuntimeError) as traced:
        with torchtrace.trace(m) as t:
            try:
                torch.cat([x, w.t()])  # caught: the code goes on
            except RuntimeError:
                pass
            y = m(x)
            y @ w  # LINE:raise
    assert type(traced.value) is type(plain.value) and str(traced.value) == str(plain.value)
    g = t.graph.validate()
    raised = g.meta["raised"]
    assert [g.node(r["node"]).short_op for r in raised] == ["cat", "mm"]
    mm = g.node(raised[1]["node"])
    assert raised[1]["error"] == f"RuntimeError: {plain.value}"
    assert mm.outputs == () and [g.value(v).shape for v in mm.inputs] == [(2, 4), (6, 4)]
    assert mm.inputs[0] in g.node(g.producers()[mm.inputs[0]]).outputs  # wired to m's output
    line = zoo.marked_line(__file__, "raise")
    assert mm.source.line == line and g.meta["error"] == "RuntimeError"
    assert f"{mm.id}    aten.mm" in str(g) and "!! raised RuntimeError: mat1 and mat2" in str(g)
    for text in (torchtrace.render(g, "text"), torchtrace.render(g, "terminal", width=300)):
        assert "!! raised RuntimeError: mat1 and mat2" in text  # the drawings say it on the op's box too
    assert torchtrace.load(torchtrace.save(g, tmp_path / "g.json")).meta["raised"] == raised


def test_block_exception_leaves_nothing_behind():
    hooks_before = (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            self.fc(x)
            raise ValueError("boom")

    m, x = Bad(), torch.randn(1, 2)
    with pytest.raises(ValueError, match="boom"):
        with torchtrace.trace(m) as t:
            m(x)
    assert _get_current_dispatch_mode_stack() == []
    assert (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks)) == hooks_before
    g = t.graph  # the finished ops are kept
    assert [n.op for n in g.nodes] == ["aten.t.default", "aten.addmm.default"]
    assert g.meta["error"] == "ValueError"


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_outputs_and_grads_bitwise_equal_with_and_without_tracing(name):
    # gpt2 with dropout: RNG use must not change either; llama: SiLU, whose backward
    # op has a CPU kernel of its own besides a composite one (see the next test)
    m = (zoo.gpt2(resid_pdrop=0.1) if name == "gpt2" else zoo.llama()).train()
    ids = zoo.token_ids(12, batch=2)

    def run(traced):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        if traced:
            with torchtrace.trace(m):
                out = m(ids, labels=ids)
                out.loss.backward()
        else:
            out = m(ids, labels=ids)
            out.loss.backward()
        return out.logits.detach().clone(), {k: p.grad.clone() for k, p in m.named_parameters()}

    plain_logits, plain_grads = run(False)
    traced_logits, traced_grads = run(True)
    assert torch.equal(plain_logits, traced_logits)
    assert plain_grads.keys() == traced_grads.keys()
    assert all(torch.equal(plain_grads[k], traced_grads[k]) for k in plain_grads)


@pytest.mark.parametrize("arch", sorted(zoo.ARCHS))
def test_more_architectures_give_bitwise_equal_results(arch):
    # forward+backward in train mode (outputs and every gradient), and inference_mode
    m = zoo.causal_lm(arch).train()
    ids = zoo.token_ids(8, batch=2)

    def run(traced, ctx):
        m.zero_grad(set_to_none=True)
        with ctx(), (torchtrace.trace(m) if traced else contextlib.nullcontext()):
            logits = m(ids).logits
            if torch.is_grad_enabled():
                logits.float().square().mean().backward()
        return logits.detach().clone(), [p.grad.clone() for p in m.parameters() if p.grad is not None]

    for ctx, backward in ((torch.enable_grad, True), (torch.inference_mode, False)):
        (plain, plain_grads), (traced, traced_grads) = run(False, ctx), run(True, ctx)
        assert torch.equal(plain, traced)
        assert len(plain_grads) == len(traced_grads) and bool(plain_grads) == backward
        assert all(torch.equal(a, b) for a, b in zip(plain_grads, traced_grads))


class _CondNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def up(self, x):
        return self.lin(x).sin()

    def down(self, x):
        return self.lin(x).cos()

    def forward(self, x):
        return torch.cond(x.sum() > 0, self.up, self.down, (x,))


def test_torch_cond_records_the_branch_that_ran():
    torch.manual_seed(0)
    m = _CondNet()
    for sign, branch, read in ((1, "aten.sin.default", True), (-1, "aten.cos.default", False)):
        x = torch.rand(3, 4) * sign
        torch._dynamo.reset()  # eager torch.cond compiles; its recompile for the other branch fails in torch
        with torch.no_grad():
            plain = m(x)
            with torchtrace.trace(m) as t:
                traced = m(x)
        assert torch.equal(plain, traced)
        g = t.graph
        ops = [n.op for n in g.nodes]
        assert ops[-3:] == ["aten.t.default", "aten.addmm.default", branch]
        assert [n.witness.value for n in g.witnesses()] == [read]  # reading the predicate, as for an `if`
        assert g.module_path(g.nodes[-2].module) == "lin"


def test_higher_order_ops_under_autograd_get_a_clear_error_and_leave_nothing():
    m = _CondNet()
    hooks_before = len(nn_module._global_forward_pre_hooks)
    with pytest.raises(torchtrace.TorchtraceError, match="torch.no_grad"):
        with torchtrace.trace(m):
            m(torch.rand(3, 4))
    assert _get_current_dispatch_mode_stack() == [] and len(nn_module._global_forward_pre_hooks) == hooks_before


def test_other_higher_order_ops_run_unchanged_and_say_what_is_missing():
    from torch._higher_order_ops.while_loop import while_loop

    def body(i, x):
        return i + 1, x * 2

    x = torch.randn(2)
    with torch.no_grad():
        plain = while_loop(lambda i, x: i < 3, body, (torch.tensor(0), x))
        with pytest.warns(RuntimeWarning, match="while_loop"), torchtrace.trace() as t:
            traced = while_loop(lambda i, x: i < 3, body, (torch.tensor(0), x))
    assert all(torch.equal(a, b) for a, b in zip(plain, traced))
    assert "higher_order.while_loop" in t.graph.meta["record_errors"]["first"]


def test_ops_with_a_kernel_for_their_backend_are_not_decomposed():
    # silu_backward has a CPU kernel and a CompositeImplicitAutograd one for other
    # backends; eager runs the CPU kernel, and the composite one rounds differently
    torch.manual_seed(0)
    m, x = nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 1)), torch.randn(32, 8)

    def grads(traced):
        m.zero_grad(set_to_none=True)
        with (torchtrace.trace(m) if traced else contextlib.nullcontext()) as t:
            m(x).sum().backward()
        return [p.grad.clone() for p in m.parameters()], t

    plain, _ = grads(False)
    traced, t = grads(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, traced))
    backward = [n.op for n in t.graph.nodes if n.phase == "backward"]
    assert "aten.silu_backward.default" in backward and "aten.sigmoid.default" not in backward


def _quiet(make, *args):
    with warnings.catch_warnings():  # (torch's advice on nested tensors for batch_first=False)
        warnings.simplefilter("ignore", UserWarning)
        return make(*args)


def _fused(name, *contexts):
    """Run a module whose kernels call other ops (a GRU, nn.Transformer's fused fast
    path) untraced and traced under ``contexts``: (plain output, traced output, graph)."""
    torch.manual_seed(0)
    model, args = {
        "gru": lambda: (nn.GRU(8, 16, num_layers=2, bidirectional=True, batch_first=True), (torch.randn(2, 5, 8),)),
        "transformer": lambda: (nn.Transformer(32, 4, 1, 1, 64, batch_first=True).eval(),
                                (torch.randn(2, 5, 32), torch.randn(2, 3, 32))),
        "unbatched": lambda: (_quiet(nn.Transformer, 32, 4, 1, 1, 64).eval(), (torch.randn(5, 32), torch.randn(3, 32))),
        # query, key and value apart: in_proj_weight.chunk(3), a composite view op inside a composite op
        "mha": lambda: (nn.MultiheadAttention(8, 2).eval(), (torch.randn(3, 1, 8), torch.randn(4, 1, 8),
                                                             torch.randn(4, 1, 8))),
    }[name]()
    with contextlib.ExitStack() as stack:
        for ctx in contexts:
            stack.enter_context(ctx)
        plain = model(*args)
        with torchtrace.trace(model) as t:
            traced = model(*args)
    return (plain[0], traced[0], t.graph) if name in ("gru", "mha") else (plain, traced, t.graph)


@pytest.mark.parametrize("name,grad_mode", [("transformer", "no_grad"), ("transformer", "inference"),
                                            ("gru", "inference"), ("gru", "train")])
def test_autocast_outputs_bitwise_equal(name, grad_mode):
    # a mode's handler runs with every autocast key excluded, so the ops a kernel calls
    # lost autocast where eager keeps it (an empty mode changes these outputs, torch 2.13)
    plain, traced, _ = _fused(name, GRAD_MODES[grad_mode](), torch.autocast("cpu", dtype=torch.bfloat16))
    assert plain.dtype == traced.dtype and torch.equal(plain, traced)


@pytest.mark.parametrize("name", ["gru", "transformer", "unbatched", "mha"])
def test_inference_mode_outputs_bitwise_equal(name):
    # Under inference_mode composite ops reach the mode whole and the recorder runs
    # them in pieces. A mode's handler runs with ADInplaceOrView excluded: views made
    # there lose requires_grad and matmul takes bmm instead of mm (measured with an
    # empty TorchDispatchMode on torch 2.13: both outputs differ by ~6e-8).
    plain, traced, graph = _fused(name, torch.inference_mode())
    assert torch.equal(plain, traced)
    if name == "gru":  # eager folds the input projections to mm (the weights require grad)
        ops = {n.op for n in graph.nodes}
        assert "aten.mm.default" in ops and "aten.bmm.default" not in ops
    assert len(graph.nodes) > 20  # recorded in pieces, not as one opaque op


@pytest.mark.parametrize("requires_grad", [False, True])
def test_composite_view_ops_under_inference_mode_are_views_as_in_eager(requires_grad):
    """``chunk``/``narrow`` reach the mode whole under inference_mode; their views get
    their metadata once (made again by their pieces, torch refused them: RuntimeError)."""
    base = torch.arange(12.0).reshape(4, 3).requires_grad_(requires_grad)

    def views():
        with torch.inference_mode():
            return [*base.chunk(2), base.narrow(0, 1, 2), *base.split(3), base.flatten(), base.reshape(12),
                    base.movedim(0, 1), base.swapaxes(0, 1), base.unflatten(1, (1, 3)), *base.tensor_split(2),
                    base.view_as(base), base.mT]

    plain = views()
    with torchtrace.trace() as t:
        traced = views()
    assert [(v._is_view(), v._base is base, v.requires_grad, v.tolist()) for v in traced] == \
        [(v._is_view(), v._base is base, v.requires_grad, v.tolist()) for v in plain]
    assert {"aten.split.Tensor", "aten.slice.Tensor"} <= {n.op for n in t.graph.nodes}
    if requires_grad:  # (a view shares its base's version counter: autograd sees a write through it)
        with torchtrace.trace():
            w = nn.Parameter(torch.ones(2, 3))
            buf = torch.ones(2, 3)
            loss = (w * buf).sum()
            with torch.inference_mode():
                buf.reshape(6).mul_(0.5)
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                loss.backward()


class _Batch:
    """A dict-backed argument: its ``__getattr__`` raises KeyError for a missing key."""

    __slots__ = ("data",)

    def __init__(self, **kw):
        object.__setattr__(self, "data", kw)

    def __getattr__(self, k):
        return self.data[k]


class _ReadsBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, batch):
        return self.lin(batch.x)


def test_an_argument_whose_attribute_lookup_raises_is_passed_through():
    """Naming the root call's inputs looks into its arguments' attributes; an
    object whose ``__getattr__`` raises KeyError (for ``__dict__``) broke the call."""
    m, batch = _ReadsBatch(), _Batch(x=torch.randn(3, 4))
    with torchtrace.trace(m) as t:
        y = m(batch)
    assert torch.equal(y, m(batch)) and [n.short_op for n in t.graph.nodes] == ["t", "addmm"]


class _TwoViews(nn.Module):
    """One BatchNorm over two views of a batch (siamese / two-view training)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, a, b):
        return self.bn(a) - self.bn(b)


def test_batch_norm_s_running_statistics_are_written_in_training_only():
    """``native_batch_norm`` updates its running statistics in training with no
    alias annotation in its schema: they were recorded as only read."""
    torch.manual_seed(0)
    m, a, b = _TwoViews(), torch.randn(5, 4), torch.randn(5, 4)
    before = m.bn.running_mean.clone()
    with torchtrace.trace(m) as t:
        m(a, b)
    g = t.graph
    assert not torch.equal(before, m.bn.running_mean)  # (the oracle: the buffer changed)
    norms = [n for n in g.nodes if n.short_op == "native_batch_norm"]
    for name in ("bn.running_mean", "bn.running_var"):
        v0, v1, v2 = [v.id for v in g.values if v.name == name]
        assert [g.value(v).version_of for v in (v0, v1, v2)] == [None, v0, v1]
        assert v0 in norms[0].inputs and v1 in norms[0].outputs[3:]  # (after the three it returns)
        assert v1 in norms[1].inputs and v2 in norms[1].outputs[3:]
    m.eval()
    with torchtrace.trace(m) as t:
        m(a, b)
    assert not [v for v in t.graph.values if v.version_of is not None and (v.name or "").startswith("bn.running")]
    assert [len(n.outputs) for n in t.graph.nodes if n.short_op == "native_batch_norm"] == [3, 3]


class _StaleViews(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, inp, cache):
        x = self.lin(inp)
        flat = x.view(-1)  # a view taken first, then its base written in place
        x.relu_()
        y = x.view(2, 4)  # a view of which a view is written
        y[0].mul_(2)
        kc = cache[1]  # a preallocated KV cache: a layer's slice, written at a position, read up to it
        kc[2] = x[0]
        return flat.sum(), y.sum(), kc[:3].sum()


def _ancestors(g, v: str) -> set:
    """The ids of the ops value ``v`` was computed from, through the dataflow."""
    made = {o: n for n in g.nodes for o in n.outputs}
    seen, todo = set(), [v]
    while todo:
        n = made.get(todo.pop())
        if n is not None and n.id not in seen:
            seen.add(n.id)
            todo.extend(n.inputs)
    return seen


def test_a_read_through_an_alias_a_write_made_stale_depends_on_the_write():
    """Writes gave new versions to the written tensor and its base only: a read
    through another view of the storage was linked to the value before the write."""
    torch.manual_seed(0)
    with torch.no_grad(), torchtrace.trace() as t:
        _StaleViews()(torch.randn(2, 4), torch.zeros(2, 4, 4))
    g = t.graph
    made = {v: n for n in g.nodes for v in n.outputs}

    sums = [n for n in g.nodes if n.short_op == "sum"]
    writes = [next(n.id for n in g.nodes if n.short_op == op) for op in ("relu_", "mul_.Tensor", "copy_")]
    assert [w in _ancestors(g, s.outputs[0]) for s, w in zip(sums, writes)] == [True, True, True]
    fresh = g.value(sums[0].inputs[0])  # flat after the last write to x's storage (y[0].mul_): a version of flat
    assert made[fresh.version_of].short_op == "view" and made[fresh.id].id == writes[1]
    g.validate()


class _SetupView(nn.Module):
    """A KV cache read through a view taken at setup, written through one taken in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(2, 8, 4))
        self.k = self.cache[0]

    def forward(self, x: torch.Tensor, y: torch.Tensor, pos: int) -> torch.Tensor:
        self.cache[0, pos].copy_(x)  # LINE:setup_write
        x.mul_(2)  # LINE:input_write
        return self.k[:pos + 1].sum(0) + y  # LINE:setup_read


def test_a_read_through_an_alias_made_before_the_pass_depends_on_the_pass_s_write():
    """(An audit.) Tensors that share a storage and were made before the block (a
    view taken at setup, `w = lin.weight.detach()`, `m(x, x[0])`) came in as values
    of their own: a read of one after a write to another was wired to the input,
    as if the write had not happened. The values computed are torch's either way."""
    torch.manual_seed(0)
    m, x, pos = _SetupView(), torch.ones(3, 4), 3
    base, lin = torch.zeros(2, 4), nn.Linear(2, 2)
    row, wd = base[0], lin.weight.detach()
    with torch.no_grad(), torchtrace.trace(m) as t:
        out = m(x[0], x[0], pos)  # (two views of one row: the second reads the first's write)
        base.add_(1)  # LINE:base_write
        r = row * 3  # LINE:row_read
        lin.weight.mul_(0.5)  # LINE:weight_write
        s = wd.sum()  # LINE:weight_read
    assert torch.equal(out, torch.full((4,), 3.0)) and torch.equal(r, torch.full((4,), 3.0))
    assert torch.equal(s, lin.weight.sum())
    g = t.graph

    def at(marker: str) -> list:
        return [n for n in g.nodes if n.source is not None and n.source.line == zoo.marked_line(__file__, marker)]
    [read_add] = [n for n in at("setup_read") if n.short_op == "add.Tensor"]
    [copy] = [n for n in at("setup_write") if n.short_op == "copy_"]
    [mul] = at("input_write")
    assert {copy.id, mul.id} <= _ancestors(g, read_add.outputs[0])  # (k's keys after the copy, y after x.mul_)
    [row_read], [add] = at("row_read"), at("base_write")
    [weight_read], [weight_write] = at("weight_read"), at("weight_write")
    assert add.id in _ancestors(g, row_read.outputs[0])
    assert weight_write.id in _ancestors(g, weight_read.outputs[0])
    g.validate()


def test_views_of_one_flat_buffer_that_do_not_overlap_stay_apart():
    """(A review.) Parameters kept as views of one flat buffer (FSDP's): a write to
    the first is no write of the second, whose later read keeps its own value."""
    flat = torch.zeros(8)
    p0, p1 = flat[:4], flat[4:]
    with torchtrace.trace() as t:
        p0.add_(1)  # LINE:flat_write
        s = p1.sum()  # LINE:flat_read
    g = t.graph
    [read] = [n for n in g.nodes if n.source.line == zoo.marked_line(__file__, "flat_read")]
    [write] = [n for n in g.nodes if n.source.line == zoo.marked_line(__file__, "flat_write")]
    assert s.item() == 0.0 and g.producers().get(read.inputs[0]) is None and len(write.outputs) == 2  # (p0, flat)
    g.validate()  # (a write through a view of an outside base made their alias_of point at each other)


def test_a_foreach_step_and_chains_of_views_of_one_buffer_keep_their_own_writes():
    """(A review.) `_foreach_add_` writes several parameters in one op: each
    written version took the first tensor's bytes, so `0.weight` became an alias
    of `1.weight`, and a read of it depended on `1.weight`'s later write. And
    parameters cut from one buffer (v in b, b overlapping c) joined in two steps:
    a read of v missed the write to b."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    grads = [torch.ones_like(p) for p in m.parameters()]
    with torch.no_grad(), torchtrace.trace(m) as t:
        torch._foreach_add_(list(m.parameters()), grads)
        m[1].weight.mul_(0.5)  # LINE:other_write
        y = m[0].weight * 2  # LINE:foreach_read
    g = t.graph.validate()
    assert all(v.alias_of is None for v in g.values if v.role == "param")
    [read] = [n for n in g.nodes if n.source.line == zoo.marked_line(__file__, "foreach_read")]
    [other] = [n for n in g.nodes if n.source.line == zoo.marked_line(__file__, "other_write")]
    deps = _ancestors(g, read.outputs[0])
    assert other.id not in deps and any(g.node(n).op == "aten._foreach_add_.List" for n in deps)
    assert torch.equal(y, m[0].weight * 2)

    buf = torch.zeros(10)
    v, b, c = buf[0:2], buf[0:6], buf[3:10]
    with torch.no_grad(), torchtrace.trace() as t:
        b.add_(1)
        s = v.sum()
    g = t.graph.validate()
    [add] = [n for n in g.nodes if n.short_op == "add_.Tensor"]
    [read] = [n for n in g.nodes if n.short_op == "sum"]
    assert add.id in _ancestors(g, read.outputs[0]) and s.item() == 2.0 and c is not None


class _SliceWriter(nn.Module):
    def __init__(self, kc: torch.Tensor) -> None:
        super().__init__()
        self.lin, self.kc = nn.Linear(8, 8), kc

    def forward(self, h: torch.Tensor, pos: int) -> torch.Tensor:
        self.kc[:, pos] = self.lin(h)
        return self.kc.sum(1)


@pytest.mark.parametrize("write", ["out", "copy_", "add_", "slice"])
def test_a_write_through_a_view_made_before_the_pass_keeps_the_graph_valid_and_wired(write, tmp_path):
    """(An audit.) `view = buf[10:42]` before the block, written in it (`mul(out=)`,
    `copy_`, `add_`; DDP's gradient buckets are such views): the view and its base,
    both written, became each other's `alias_of` -- a graph `validate()` refused,
    that could not be saved -- and a read of the base did not depend on the write.
    Also a KV cache's layer slice taken at setup (`kc = cache[0]`)."""
    buf = torch.zeros(100)
    view, x = buf[10:42], torch.randn(32)
    kc = torch.zeros(2, 4, 16, 8)[0]
    m, h = _SliceWriter(kc), torch.randn(4, 8)
    with torch.no_grad(), torchtrace.trace() as t:
        if write == "out":
            torch.mul(x, 2.0, out=view)
        elif write == "copy_":
            view.copy_(x)
        elif write == "add_":
            view.add_(x)
        else:
            y = m(h, 3)
        if write != "slice":
            y = buf.sum()
    g = t.graph.validate()
    torchtrace.save(g, tmp_path / "g.json")
    assert torchtrace.load(tmp_path / "g.json") == g
    [read] = [n for n in g.nodes if n.short_op.startswith("sum")]
    [wrote] = [n for n in g.nodes if "inplace" in n.tags or n.op == "aten.mul.out"]
    assert wrote.id in _ancestors(g, read.outputs[0]) and y.sum().item() != 0.0


def test_the_base_of_a_view_first_seen_through_a_write_is_named_by_its_variable():
    """(An audit.) `r = b3[1]` before the block, `r.fill_(5)` in it: `b3`, first
    seen as the written view's base, was named `input0`."""
    b3 = torch.zeros(3)
    r = b3[1]
    with torchtrace.trace() as t:
        r.fill_(5)
        s = b3.sum()
    g = t.graph
    assert s.item() == 5.0
    assert [(v.name, v.shape) for v in g.values if v.role == "input"] == [("r", ()), ("r", ()), ("b3", (3,)),
                                                                        ("b3", (3,))]


class _Skips(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, scale):
        if scale.item() == 0.0:
            return x  # handed back untouched
        return self.lin(x) * scale


def test_an_input_returned_untouched_is_the_pass_s_output():
    """No op read it, so it was no value: the graph returned nothing, and a diff
    against a pass that used it said "input `x` only in A"."""
    m, x = _Skips(), torch.randn(2, 4)
    graphs = []
    for scale in (1.0, 0.0):
        with torchtrace.trace(m) as t:
            m(x, torch.tensor(scale))
        graphs.append(t.graph)
    [out] = graphs[1].outputs
    assert (graphs[1].value(out).role, graphs[1].value(out).name) == ("input", "x")
    d = torchtrace.diff(*graphs)
    assert not d.inputs and "only in A" not in str(d).split("@@")[0].replace("3 ops only in A", "")


def test_trace_keeps_no_tensor_alive():
    m = zoo.MLP(8, 16)
    x = torch.randn(4, 8)
    with torchtrace.trace(m) as t:
        y = m(x)
        z = torch.randn(100) * 2
        refs = [weakref.ref(y), weakref.ref(z)]
    del y, z
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert len(t.graph.nodes) > 0


def test_naming_an_outside_tensor_keeps_no_deleted_local_alive():
    """An outside tensor is named by the local variable that holds it. That read
    ``frame.f_locals``, which before Python 3.13 leaves a copy of the frame's
    locals on the frame: a tensor deleted after the block stayed alive until the
    function returned. The names now come from the frame without that copy."""
    m = nn.Linear(4, 4)
    w2 = torch.randn(4, 4)
    big = torch.randn(256, 256)
    ref = weakref.ref(big)
    with torchtrace.trace(m) as t:
        m(torch.ones(2, 4)) @ w2
    del big
    gc.collect()
    assert ref() is None
    assert "w2" in {v.name for v in t.graph.values if v.role == "constant"}


def test_locals_that_a_closure_uses_are_named():
    """(A review.) Read from the frame record, a local that a closure uses lives
    in a cell and a closure's own outer names are free variables: neither was
    named (``self`` a lambda captures gave no ``self.critic``)."""
    m = nn.Identity()

    def f():
        bias = torch.ones(3)
        scale = torch.full((3,), 2.0)
        keep = lambda: scale  # noqa: E731  (makes `scale` a cell of f)

        def inner(x):
            return x + bias  # (`bias`: a free variable of inner)

        with torchtrace.trace(m) as t:
            inner(m(torch.zeros(3)))
            m(torch.zeros(3)) * scale
        keep()
        return t.graph

    assert sorted(v.name for v in f().values if v.role == "constant") == ["bias", "scale"]


def test_a_module_outside_the_root_is_not_named_like_one_of_its_children():
    """A module the root does not hold is named by its class (``LayerNorm``); a
    root child called ``self.LayerNorm`` (as in transformers' BERT) had that
    path too: two module calls and four parameters under two names."""
    helper = nn.LayerNorm(4)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.LayerNorm = nn.LayerNorm(4)

        def forward(self, x):
            return helper(self.LayerNorm(x))

    m = Block()
    with torchtrace.trace(m) as t:
        m(torch.randn(2, 4)).sum().backward()
    g = t.graph.validate()
    assert [c.path for c in g.modules] == ["", "LayerNorm", "LayerNorm#1"]
    assert sorted(x.name for x in g.autograd.grads) == ["LayerNorm#1.bias", "LayerNorm#1.weight", "LayerNorm.bias",
                                                        "LayerNorm.weight"]


def test_checkpoint_s_recompute_does_not_rename_the_root_s_input():
    """Non-reentrant checkpoint re-runs ``self.a(x)`` inside backward as a call
    of its own: the root's input was renamed after ``Sequential.forward``'s
    parameter (``input``) once the block held a backward."""
    from torch.utils.checkpoint import checkpoint

    class CK(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Linear(6, 6), nn.GELU())
            self.b = nn.Linear(6, 2)

        def forward(self, x):
            return self.b(checkpoint(self.a, x, use_reentrant=False))

    m, x = CK(), torch.randn(3, 6, requires_grad=True)
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
    g = t.graph.validate()
    assert [v.name for v in g.values if v.role == "input"] == ["x"]
    assert any(n.phase == "recompute" for n in g.nodes)


def test_max_ops_truncates_with_a_clear_message(tmp_path):
    m = zoo.gpt2()
    with pytest.warns(RuntimeWarning, match="max_ops=10"):
        with torchtrace.trace(m, max_ops=10) as t:
            out = m(zoo.token_ids())
    assert len(t.graph.nodes) == 10 and t.graph.meta["truncated"] is True
    assert out.logits.shape == (1, 8, 100)  # the model itself ran to the end
    m = nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match="max_ops=1") as said:
        with torchtrace.Recorder(tmp_path / "t.db", max_ops=1):
            for _ in range(2):
                m(torch.ones(1, 2))  # LINE:truncated
    # at the user's line (the pass ends in the next call), not inside the recorder
    assert [(w.filename, w.lineno) for w in said][:1] == [(__file__, zoo.marked_line(__file__, "truncated"))]


def test_no_ops_from_torchtrace_itself():
    m = nn.Sequential(nn.Identity(), nn.Identity())
    x = torch.randn(3, requires_grad=True)
    with torchtrace.trace(m) as t:
        m(x)
    assert t.graph.nodes == () and len(t.graph.modules) == 3


def test_tags_random_and_factory():
    drop = nn.Dropout(0.5).train()
    with torchtrace.trace(drop) as t:
        drop(torch.randn(4, requires_grad=True))
        torch.arange(3)
    tags = {n.op: n.tags for n in t.graph.nodes}
    assert any("random" in tg for tg in tags.values())
    assert "factory" in tags["aten.arange.default"]


def test_collectives_are_tagged_with_group_args(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.ones(3)
        with torchtrace.trace() as t:
            dist.all_reduce(x)
            y = x * 2
    finally:
        dist.destroy_process_group()
    g = t.graph
    coll = [n for n in g.nodes if "collective" in n.tags]
    assert [n.op for n in coll] == ["c10d.allreduce_.default"]
    group = next(v for v in coll[0].args.values() if isinstance(v, dict))
    assert group["group_size"] == 1 and group["group_rank"] == 0
    assert g.nodes[-1].inputs[0] == coll[0].outputs[0]  # the collective wrote x: y reads that version
    assert g.meta["rank"] == 0 and g.meta["world_size"] == 1
    assert torch.equal(y, torch.full((3,), 2.0))


def test_recorded_collectives_hold_no_process_group(tmp_path):
    """A pass's records keep a description of the group, never the object: a
    Recorder freeing the last reference to a ProcessGroupGloo at its next pass
    boundary (after the user's destroy_process_group, with the GIL held) joined
    gloo's threads while one of them waited for the GIL: a deadlock."""
    import torch.distributed as dist
    from torchtrace.record.capture import Capture
    from torchtrace.record.mode import E_ARGS, E_KW

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    cap = Capture()
    try:
        cap.start()
        try:
            x = torch.ones(3)
            dist.all_reduce(x)
            dist.broadcast(x, src=0)
        finally:
            cap.stop()
        held = [a for ev in cap.mode.events for a in (*(ev[E_ARGS] or ()), *((ev[E_KW] or {}).values()))
                if isinstance(a, torch.ScriptObject)]
        assert len(cap.mode.events) >= 2 and held == []
        g = cap.finish_pass()
    finally:
        dist.destroy_process_group()
    groups = [v for n in g.nodes if "collective" in n.tags for v in n.args.values() if isinstance(v, dict)]
    assert len(groups) == 2 and all(gr["group_size"] == 1 for gr in groups)


def test_compiled_module_runs_eagerly_and_says_so():
    m = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    cm = torch.compile(m, backend="eager")
    x = torch.randn(2, 4)
    expected = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about global hooks + compiled modules
        with torchtrace.trace(cm) as t:
            out = cm(x)
    assert torch.equal(out, expected)
    assert t.graph.meta["compiled_regions_ran_eager"] is True
    assert [n.op for n in t.graph.nodes] == ["aten.t.default", "aten.addmm.default", "aten.gelu.default"]
    assert t.graph.module_path(t.graph.nodes[1].module) == "0"


def test_threads_are_not_mixed_in():
    import threading

    m = nn.Linear(2, 2)
    done = []

    def other():
        m(torch.randn(1, 2))
        done.append(1)

    x = torch.randn(1, 2)
    with torchtrace.trace(m) as t:
        th = threading.Thread(target=other)
        th.start()
        th.join()
        m(x)
    assert done == [1]
    assert len(t.graph.modules) == 1 and len(t.graph.nodes) == 2


def test_usage_errors_are_clear():
    with pytest.raises(torchtrace.TorchtraceError, match="nn.Module"):
        torchtrace.trace("model")
    t = torchtrace.trace()
    with pytest.raises(torchtrace.TorchtraceError, match="after the `with` block"):
        t.graph


def test_a_mode_entered_inside_the_block_and_left_open_keeps_working():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.n += 1
            return func(*args, **(kwargs or {}))

    x = torch.randn(3)
    user_mode = Counter()
    t = torchtrace.trace()
    t.__enter__()
    user_mode.__enter__()    # the user's mode goes on top of ours ...
    x + 1
    t.__exit__(None, None, None)   # ... and is still open when the trace ends
    assert _get_current_dispatch_mode_stack() == [user_mode]
    x * 2
    user_mode.__exit__(None, None, None)
    assert _get_current_dispatch_mode_stack() == []
    assert Counter.n == 2 and [n.op for n in t.graph.nodes] == ["aten.add.Tensor"]


def test_a_tensor_subclass_keeps_the_dataflow_of_a_plain_tensor():
    """`Tensor.__torch_function__` re-wraps each result (`as_subclass`: no op the
    mode sees): every re-wrapped result was a new constant, relu's input had no
    producer and the graph fell apart. The oracle: the same model on a plain tensor."""
    class Tagged(torch.Tensor):
        pass

    def edges(g):
        prod = g.producers()
        return [(n.op, tuple(prod.get(v) for v in n.inputs), len(n.outputs)) for n in g.nodes]

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    graphs, outs = [], []
    for inp in (x, x.as_subclass(Tagged)):
        with torchtrace.trace(m) as t:
            outs.append(m(inp).sum() * 2)
        graphs.append(t.graph)
    plain, tagged = graphs
    assert type(outs[1]) is Tagged and torch.equal(outs[0], outs[1].as_subclass(torch.Tensor))
    assert edges(tagged) == edges(plain)
    assert [v.role for v in tagged.values] == [v.role for v in plain.values]
    assert not any(v.role == "constant" for v in tagged.values)
    assert all(tagged.producers().get(v) for v in tagged.outputs) and len(tagged.outputs) == len(plain.outputs)

    with torchtrace.trace(m) as t:  # the autograd graph from the returned re-wrap (its own AliasBackward0)
        y = m(x.as_subclass(Tagged))
    assert sorted(a.name for a in t.graph.autograd.nodes) == sorted(n.name() for n in zoo.autograd_nodes(y.grad_fn))

    # (a review) two inputs that are views of one storage stay two inputs; a detach's or a view's
    # re-wrapped result is the detach's or the view's, not the tensor it was taken from
    def two(q, k):
        return q * 2 + k

    def taken(y):
        z, w = y.detach(), y.view(4, 3)
        return (y * 2 - z).sum() + (w + 1).sum()

    def late(a):  # (a result first read five ops after it was made)
        p = a.sin()
        return p + a.cos().exp().tanh().abs().neg()

    def written(a):  # (an in-place op on a re-wrap: one new version, not three; read after through both)
        y = a * 2
        y.add_(1)
        return y.relu() + a.mul_(3).view(4, 3).t()

    q = torch.randn(3, 4).as_subclass(Tagged)
    for fn, args in ((two, (q.requires_grad_(), q.detach())), (taken, (torch.randn(3, 4).as_subclass(Tagged),)),
                     (late, (torch.randn(3, 4).as_subclass(Tagged),)),
                     (written, (torch.randn(3, 4).as_subclass(Tagged),))):
        graphs = []
        for cast in (lambda a: a.as_subclass(torch.Tensor), lambda a: a):
            with torchtrace.trace() as t:
                fn(*[cast(a) for a in args])
            graphs.append(t.graph)
        assert edges(graphs[1]) == edges(graphs[0]), fn.__name__
        assert [v.role for v in graphs[1].values] == [v.role for v in graphs[0].values], fn.__name__


def test_an_outside_nested_tensor_that_requires_grad_is_read_without_hanging():
    """(A review.) Reading the grad_fn of an outside tensor inside the handler hung
    forever for a jagged NestedTensor (its __torch_function__ was in progress)."""
    code = textwrap.dedent("""
        import torch, torch.nn as nn, torchtrace
        nt = torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(3, 4)], layout=torch.jagged,
                                        requires_grad=True)
        lin = nn.Linear(4, 4)
        with torchtrace.trace(lin) as t:
            lin(nt * 2)
        print(len(t.graph.nodes), t.graph.meta.get("record_errors"))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.split()[1] == "None", res.stderr[-2000:]


def test_exotic_tensors_never_break_the_users_program():
    from torch._higher_order_ops.while_loop import while_loop

    x = torch.randn(4, 3, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torchtrace.trace() as t:
            nt = torch.nested.nested_tensor([torch.randn(2), torch.randn(3)])   # no sizes: -1 where ragged
            gx = torch.func.grad(lambda r: r.sin().sum())(x)                    # functorch wrappers
            m = torch.nn.Linear(3, 2, device="meta")                             # no data at all
            m(torch.randn(4, 3, device="meta", requires_grad=True)).sum().backward()
            with torch.no_grad():  # inner ops torchtrace does not see
                while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 2), (torch.tensor(0), torch.ones(2)))
    assert nt.is_nested and torch.allclose(gx, x.cos())
    g = t.graph.validate()
    assert "aten.cos.default" in {n.op for n in g.nodes}
    made = next(n for n in g.nodes if n.short_op.startswith("_nested_tensor_from_tensor_list"))
    assert g.value(made.outputs[0]).shape == (2, -1)
    assert g.meta["record_errors"]["count"] == 1 and "while_loop" in g.meta["record_errors"]["first"]
    assert any("could not record" in str(w.message) for w in caught)
    assert {gi.norm for gi in g.autograd.grads} == {None}  # meta gradients hold no numbers
    # every view says what is missing, as it says a truncated pass is (they said nothing)
    said = f"{g.meta['record_errors']['count']} op(s) not fully recorded (meta.record_errors)"
    for fmt in ("text", "terminal", "mermaid"):
        assert said in torchtrace.render(g, fmt), fmt
    assert said in str(g)


def test_jagged_nested_tensors_save_and_record(tmp_path):
    """A jagged NestedTensor's shape holds a symbolic size (j0, a new one each
    time one is built): the IR has -1 there, in memory as in the file, so two
    identical passes are identical, and a Recorder stores them as one variant."""
    lin = nn.Linear(8, 4)
    a, b = torch.randn(3, 8), torch.randn(5, 8)

    def step():
        nt = torch.nested.nested_tensor([a, b], layout=torch.jagged)
        return lin(nt).values().sum()

    step()  # (torch makes a dummy NestedTensor the first time one is built)
    graphs = []
    for _ in range(2):
        with torchtrace.trace(lin) as t:
            step()
        graphs.append(t.graph)
    g = graphs[0]
    assert all(type(d) is int for v in g.values for d in v.shape)
    jagged = [v for v in g.values if -1 in v.shape]
    assert jagged and all(len(v.shape) == 3 and v.shape[1] == -1 for v in jagged)  # (2, j, 8)-like
    assert torchtrace.diff(*graphs).is_empty and graphs[0].fingerprints == graphs[1].fingerprints
    assert torchtrace.load(torchtrace.save(g, tmp_path / "g.json")) == g
    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for _ in range(3):
            step()
    assert rec.recorded == 3
    from torchtrace.store import Store
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert len({(r.structure_fp, r.shapes_fp) for r in store.passes()}) == 1  # one variant


def test_while_loop_on_item_is_one_witness_per_check():
    def shrink(h):
        while h.abs().max().item() > 1.0:  # WHILE-ITEM
            h = h / 2
        return h

    x = torch.tensor([5.0, -3.0])
    with torchtrace.trace() as t:
        shrink(x)
    line = next(i for i, s in enumerate(open(__file__).read().splitlines(), 1) if "# WHILE-ITEM" in s
                and "while" in s)
    reads = [(n.witness.value, n.source.line) for n in t.graph.witnesses()]
    # 5 -> 2.5 -> 1.25 -> 0.625: three True reads, then the False that ends the loop
    assert reads == [(5.0, line), (2.5, line), (1.25, line), (0.625, line)]


@pytest.mark.parametrize("name", ["gpt2", "lstm", "resnet_block", "transformer_encoder"])
def test_generated_arg_readers_record_what_the_general_loop_records(name, monkeypatch):
    """The per-schema readers (OpInfo.reader) are a shortcut of RecordingMode._read_args:
    with them turned off, forward+backward gives the same IR, field for field."""
    from torchtrace.record import opinfo

    def record():
        torch.manual_seed(0)
        model, args, kwargs = CASES[name]()
        with torchtrace.trace(model) as t:
            _first(model(*args, **kwargs)).float().sum().backward()
        d = t.graph.to_dict()
        d["meta"].pop("created", None)
        return d, t.graph

    fast, g = record()
    calls = []
    monkeypatch.setattr(opinfo.OpInfo, "reader", lambda self, n: calls.append(n) or False)
    monkeypatch.setattr(opinfo.OpInfo, "readers", property(lambda self: {}))
    slow, _ = record()
    assert calls, "the general loop was not used"
    assert fast == slow
    assert any(n.args for n in g.nodes) and any(len(n.inputs) > 1 for n in g.nodes)


def test_module_paths_follow_the_model_between_traces():
    """Module paths are remembered across traces; renaming a child, or moving it
    into a ModuleList, must show in the next trace."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) if hasattr(self, "a") else self.b(x) if hasattr(self, "b") else self.items[0](x)

    net, x = Net(), torch.randn(2, 4)

    def paths():
        with torchtrace.trace(net) as t:
            net(x)
        return [m.path for m in t.graph.modules]

    assert paths() == ["", "a"]
    lin = net.a
    del net.a
    net.b = lin
    assert paths() == ["", "b"]
    del net.b
    net.items = nn.ModuleList([lin])
    assert paths() == ["", "items.0"]


def test_torchs_own_dummy_nested_tensor_is_no_input():
    """The first jagged NestedTensor of a process makes torch build a dummy one on
    the meta device; built inside a trace, that was the call's `input0`. (A fresh
    process: torch makes it once.)"""
    import subprocess
    import sys

    code = ("import torch, torch.nn as nn, torchtrace\n"
            "m = nn.Linear(4, 3)\n"
            "with torchtrace.trace(m) as t:\n"
            "    m(torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(5, 4)], layout=torch.jagged))\n"
            "print(sorted({v.role for v in t.graph.values if v.device == 'meta'} - {'activation'}))\n"
            "print(sorted(v.name for v in t.graph.values if v.role == 'input'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "['constant']"  # torch's dummy: there, and not an input
    assert out[1] == "[]"  # the call's argument is made inside the block: no input at all


def test_torchtrace_warnings_never_raise_into_the_users_code():
    """Under `-W error` a warning is an exception: the max_ops warning, issued in
    the op that went over, killed the script inside its model. It now comes when
    the pass is built, and where a filter makes it an error it is printed instead."""
    import subprocess
    import sys

    code = ("import torch, torchtrace\n"
            "m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))\n"
            "with torchtrace.trace(m, max_ops=3) as t:\n"
            "    y = m(torch.ones(2, 4))\n"
            "print(len(t.graph.nodes), t.graph.meta['truncated'], y.shape)\n")
    res = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "3 True torch.Size([2, 1])\n"
    assert "stopped recording after max_ops=3 ops" in res.stderr


def test_gradient_processing_before_the_step_is_optimizer_phase():
    """clip_grad_norm_ between backward and opt.step() read the gradients as
    phase forward: it was drawn in the forward view. A loss read after backward
    stays forward."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with torchtrace.trace(m) as t:
        loss = m(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)  # LINE:clip
        loss.item()  # LINE:item
        opt.step()
    g = t.graph
    clip = [n for n in g.nodes if n.source is not None and n.source.line == zoo.marked_line(__file__, "clip")]
    assert clip and {n.phase for n in clip} == {"optimizer"}
    assert {n.short_op for n in clip} & {"_foreach_norm", "linalg_vector_norm", "_foreach_mul_", "mul_.Tensor"}
    [item] = [n for n in g.nodes if n.source is not None and n.source.line == zoo.marked_line(__file__, "item")]
    assert item.phase == "forward"
    assert all(n.phase == "forward" for n in g.nodes if n.module is not None and n.phase != "backward")


def test_grad_scaler_s_unscaling_is_optimizer_phase_and_its_loss_scaling_forward():
    """(An audit.) `scaler.unscale_(opt)` computes the inverse scale (`reciprocal`,
    `full`) before the fused unscale op: those ops were phase forward, drawn in the
    forward view; `scaler.scale(loss)` is the loss's, forward."""
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(8, 4)
    with torchtrace.trace(m) as t:
        loss = m(x).pow(2).mean()
        scaler.scale(loss).backward()  # LINE:scale
        scaler.unscale_(opt)  # LINE:unscale
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)  # LINE:scaler_clip
        scaler.step(opt)  # LINE:scaler_step
        scaler.update()
    g = t.graph

    def at(marker: str) -> list:
        return [n for n in g.nodes if n.source is not None and n.source.line == zoo.marked_line(__file__, marker)]
    unscale = [n for n in at("unscale") if n.short_op in ("reciprocal", "full")]
    assert len(unscale) == 2 and {n.phase for n in unscale} == {"optimizer"}
    assert [n.short_op for n in at("scale") if n.phase == "forward"][-1] == "mul.Tensor"
    # (a review: the scaler's branch came before the one that follows the gradients it unscaled)
    assert at("scaler_clip") and {n.phase for n in at("scaler_clip")} == {"optimizer"}
    assert {n.phase for n in at("scaler_step") if n.witness is not None} == {"optimizer"}


def test_a_gradient_penalty_stays_forward():
    """autograd.grad(create_graph=True)'s results feed the loss (a gradient
    penalty, MAML's inner step): forward ops, not gradient processing."""
    torch.manual_seed(0)
    d = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(5, 4, requires_grad=True)
    with torchtrace.trace(d) as t:
        out = d(x)
        g, = torch.autograd.grad(out.sum(), x, create_graph=True)
        gp = ((g.norm(2, dim=1) - 1) ** 2).mean()  # LINE:penalty
        (out.mean() + gp).backward()
    line = zoo.marked_line(__file__, "penalty")
    ops = [n for n in t.graph.nodes if n.source is not None and n.source.line == line]
    assert {n.phase for n in ops} == {"forward", "backward"}  # its ops, and their backward
    assert not any(n.phase == "optimizer" for n in t.graph.nodes)


def test_a_hand_written_update_does_not_make_the_next_forward_optimizer_phase():
    """`w -= lr * w.grad` is the update (optimizer phase); the next iteration's
    forward reads the updated `w` and is forward again (it was optimizer)."""
    torch.manual_seed(0)
    w, x = torch.randn(4, 1, requires_grad=True), torch.randn(8, 4)
    with torchtrace.trace() as t:
        for _ in range(3):
            loss = (x @ w).pow(2).mean()  # LINE:fwd
            loss.backward()
            with torch.no_grad():
                w -= 0.1 * w.grad  # LINE:update
                w.grad.zero_()
    g = t.graph
    fwd = [n for n in g.nodes if n.source is not None and n.source.line == zoo.marked_line(__file__, "fwd")
           and n.phase != "backward"]
    assert len(fwd) == 9 and {n.phase for n in fwd} == {"forward"}  # mm, pow, mean: three times
    update = [n for n in g.nodes if n.source is not None and n.source.line == zoo.marked_line(__file__, "update")]
    assert {n.phase for n in update} == {"optimizer"}


def test_optimizer_step_markers_are_optimizer_phase():
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    with torchtrace.trace(m) as t:
        m(torch.randn(3, 4)).sum().backward()
        opt.step()
    marks = [n for n in t.graph.nodes if "annotation" in n.tags and n.phase != "backward"]
    assert marks and {n.phase for n in marks} == {"optimizer"}


@pytest.mark.parametrize("set_to_none", [False, True])
def test_zero_grad_is_optimizer_phase(set_to_none):
    """Optimizer.zero_grad's markers and, with set_to_none=False, its zero_ of each
    .grad took the phase around them: forward at the top of a step, drawn in the
    forward view. The next forward is forward again."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(3, 4)
    m(x).sum().backward()
    with torchtrace.trace(m) as t:
        opt.zero_grad(set_to_none=set_to_none)  # LINE:zero
        m(x).sum().backward()
        opt.step()
    line = zoo.marked_line(__file__, "zero")
    zero = [n for n in t.graph.nodes if n.source is not None and n.source.line == line]
    assert len(zero) == (2 if set_to_none else 6) and {n.phase for n in zero} == {"optimizer"}
    assert [n.short_op for n in zero if "annotation" not in n.tags] == ([] if set_to_none else ["zero_"] * 4)
    assert {n.phase for n in t.graph.nodes if n.module is not None and n.phase != "backward"} == {"forward"}


def test_a_user_mode_exited_inside_the_block_does_not_break_its_end():
    """A mode entered before the trace and exited inside it: torch pops the top
    mode, ours, so the trace's exit popped the user's mode and then raised
    "trying to pop from empty mode stack". The trace's end now completes the
    user's exit: no mode is left, as without the trace."""
    from torch.utils._python_dispatch import TorchDispatchMode, _pop_mode

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    m, x = torch.nn.Linear(2, 2), torch.randn(1, 2)
    user = Counting()
    user.__enter__()
    try:
        t = torchtrace.trace(m)
        t.__enter__()
        m(x)
        user.__exit__(None, None, None)  # pops ours: torch pops the top mode
        t.__exit__(None, None, None)
        assert _get_current_dispatch_mode_stack() == []
        assert [n.op for n in t.graph.nodes][:2] == ["aten.t.default", "aten.addmm.default"]
        assert not nn_module._global_forward_pre_hooks and not nn_module._global_forward_hooks
    finally:
        while torch._C._len_torch_dispatch_stack():
            _pop_mode()


def test_a_users_torch_function_mode_sees_only_the_programs_calls():
    """The build read tensors (`untyped_storage`, `numel`, Node edges) through the
    user's TorchFunctionMode, which saw 24 calls where the program made 3."""
    from torch.overrides import TorchFunctionMode

    class Calls(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    m, x = nn.Sequential(nn.Linear(4, 4), nn.Tanh()), torch.randn(3, 4)
    seen = []
    for traced in (False, True):
        with Calls() as mode:
            with torchtrace.trace(m) if traced else contextlib.nullcontext():
                m(x).sum().backward()
        seen.append(mode.calls)
    assert seen[0] == seen[1] and len(seen[0]) >= 4


def test_a_root_call_returning_a_nested_tensor_runs_and_is_recorded(tmp_path):
    """A strided NestedTensor has no sizes: reading the root call's output
    raised out of the user's `m(x)`; now the call returns it, and the graph
    holds it, its ragged size -1."""
    m = nn.Linear(8, 4)
    x = torch.nested.nested_tensor([torch.randn(2, 8), torch.randn(3, 8)])
    plain = m(x).unbind()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torchtrace.trace(m) as t:
            y = m(x)
        with torchtrace.Recorder(tmp_path / "r.db") as rec:
            rec.step(0)
            m(x)
    assert all(torch.equal(a, b) for a, b in zip(plain, y.unbind()))
    g = t.graph
    assert g.meta.get("error") is None and "record_errors" not in g.meta
    (lin,) = [n for n in g.nodes if n.op == "aten.linear.default"]
    assert g.outputs == lin.outputs and g.value(lin.outputs[0]).shape == (2, -1, 4)
    assert [g.value(v).shape for v in lin.inputs] == [(2, -1, 8), (4, 8), (4,)]


def test_misused_exits_are_refused_and_leave_the_open_recorder_alone(tmp_path):
    """A second `__exit__` of a Recorder ended another Recorder's turn in the
    thread (its mark_step() did nothing); a trace's raised a bare AssertionError."""
    m, x = nn.Linear(2, 2), torch.randn(1, 2)
    r1 = torchtrace.Recorder(tmp_path / "a.db")
    with r1:
        m(x)
    with torchtrace.Recorder(tmp_path / "b.db") as r2:
        with pytest.raises(UsageError, match="this Recorder is not open.*its block ended already"):
            r1.__exit__(None, None, None)
        torch.ones(3).add(1)
        torchtrace.mark_step()
        torch.ones(3).mul(2)
        torchtrace.mark_step()
        torch.ones(3).sub(2)
        with pytest.raises(UsageError, match="already active"):
            with torchtrace.Recorder(tmp_path / "c.db"):
                pass
    assert r2.recorded == 3
    t = torchtrace.trace(m)
    with pytest.raises(UsageError, match="this trace is not running.*never entered"):
        t.__exit__(None, None, None)
    with t:
        m(x)
    with pytest.raises(UsageError, match="this trace is not running.*ended already"):
        t.__exit__(None, None, None)


def test_every_cleanup_step_runs_when_one_is_interrupted(monkeypatch):
    """A KeyboardInterrupt landing in the removal of the autograd hooks skipped
    the steps after it: the inference_mode patch and the compiler stance stayed."""
    import torch._dynamo.eval_frame as ef
    from torchtrace.record.autograd import AutogradTracker

    close, calls = AutogradTracker.close, []

    def interrupted(self):
        close(self)
        if sys._getframe(1).f_code.co_name in ("stop", "every"):  # (Capture.stop's call, not new_pass's)
            calls.append(1)
            if len(calls) == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(AutogradTracker, "close", interrupted)
    m, x = nn.Linear(2, 2), torch.randn(1, 2)
    exit_before, stance = torch.inference_mode.__exit__, ef._stance
    with pytest.raises(KeyboardInterrupt):
        with torchtrace.trace(m):
            m(x).sum().backward()
    assert calls and torch.inference_mode.__exit__ is exit_before and ef._stance is stance
    assert "data" not in torch.Tensor.__dict__  # (the `.data` setter, patches.py)
    assert not _get_current_dispatch_mode_stack() and not nn_module._global_forward_hooks


def test_a_stance_the_user_sets_inside_the_block_is_kept():
    import torch._dynamo.eval_frame as ef

    before = ef._stance
    m = nn.Linear(2, 2)
    try:
        with torchtrace.trace(m):
            m(torch.ones(1, 2))
            torch.compiler.set_stance("fail_on_recompile")
        assert ef._stance.stance == "fail_on_recompile"
    finally:
        ef._set_stance(before)
    with torchtrace.trace(m):
        m(torch.ones(1, 2))
    assert ef._stance is before


def test_an_op_whose_event_an_interrupt_cut_off_leaves_a_valid_graph():
    """SIGINT to a distributed run landed between an op's output value and its
    event: the stored pass had an activation without producer, and reading it
    (the run's rank report) failed. Its output is a constant now."""
    import weakref as _weakref

    from torchtrace.validate import validate_graph

    m, x = nn.Linear(2, 2), torch.randn(1, 2)
    lost = torch.ones(3)
    with torchtrace.trace(m) as t:
        m(x)
        mode = t._capture.mode
        mode.vmeta.append((lost.dtype, lost.device, None, *lost.shape))  # the op's output, then the interrupt
        mode.vrefs.append(_weakref.ref(lost))
        mode.vmap[id(lost)] = len(mode.vmeta) - 1
    g = t.graph
    validate_graph(g)
    assert g.values[-1].role == "constant" and [n.short_op for n in g.nodes] == ["t", "addmm"]


def test_a_lazy_modules_first_call_is_recorded_whole():
    """A LazyLinear materializes its parameters on its first call: `.data` of an
    UninitializedParameter (a `detach` whose input raises on `.shape`) made every
    such op a record error, and the parameter lost its name. The result is the
    untraced one, bit for bit."""
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.LazyLinear(2))

    x = torch.randn(3, 5)
    want = build()(x)
    m = build()
    with torchtrace.trace(m) as t:
        got = m(x)
    assert torch.equal(got, want)
    g = t.graph
    assert "record_errors" not in g.meta
    vals = {v.id: v for v in g.values}
    inits = [n for n in g.nodes if n.op == "aten.uniform_.default"]
    assert [vals[n.outputs[0]].name for n in inits] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [vals[n.outputs[0]].shape for n in inits] == [(4, 5), (4,), (2, 4), (2,)]
    addmm = [n for n in g.nodes if n.op == "aten.addmm.default"]
    assert [vals[addmm[i].inputs[0]].name for i in range(2)] == ["0.bias", "2.bias"]
    assert addmm[1].inputs[1] == g.nodes[g.nodes.index(addmm[0]) + 1].outputs[0]  # relu's output


def test_data_swapped_under_a_tensor_is_read_as_it_is_now():
    """`t.data = other` is no op a dispatch mode sees: after `model.double()` (or
    `p.data = ...` in a pruning pre-hook) inside a trace, the pass read the
    parameters as the values they were, f32 and their old shapes. The values now
    say what the tensors are (the real tensors are the oracle)."""
    m, x = nn.Linear(4, 3), torch.randn(2, 4)

    def prune(mod, args):
        mod.weight.data = mod.weight.data[:2].clone()
        mod.bias.data = mod.bias.data[:2].clone()

    seen = {}

    def keep(mod, args, out):
        seen[len(seen)] = (mod.weight.dtype, tuple(mod.weight.shape), out.dtype, tuple(out.shape))

    m.register_forward_hook(keep)
    with torchtrace.trace(m) as t:
        m(x)
        m.double()
        m(x.double())
        h = m.register_forward_pre_hook(prune)
        m(x.double())
        h.remove()
    g = t.graph
    vals = {v.id: v for v in g.values}
    addmm = [n for n in g.nodes if n.op == "aten.addmm.default"]
    weights = [vals[n.inputs[0]] for n in g.nodes if n.op == "aten.t.default"]
    assert [w.name for w in weights] == ["weight"] * 3
    assert [(w.dtype, w.shape) for w in weights] == [(str(d).replace("torch.", ""), s) for d, s, _, _ in seen.values()]
    assert [(vals[n.outputs[0]].dtype, vals[n.outputs[0]].shape) for n in addmm] == [
        (str(d).replace("torch.", ""), s) for _, _, d, s in seen.values()]
    assert [vals[n.inputs[0]].shape for n in addmm] == [(3,), (3,), (2,)]
    assert "data" not in torch.Tensor.__dict__  # the patch is gone with the trace


def test_the_data_patch_stays_until_the_last_trace_ends_and_goes_on_errors():
    m = nn.Linear(2, 2)
    outer = torchtrace.trace(m)
    outer.__enter__()
    try:
        with pytest.raises(ValueError), torchtrace.trace(m):
            assert "data" in torch.Tensor.__dict__
            raise ValueError("user error")
        assert "data" in torch.Tensor.__dict__  # the outer trace still holds it
        p = nn.Parameter(torch.zeros(3))
        p.data = torch.ones(5)
        assert torch.equal(p, torch.ones(5)) and type(p) is nn.Parameter and torch.equal(p.data, torch.ones(5))
        with pytest.raises(RuntimeError, match="Deleting tensor data is not allowed"):  # (torch's own error)
            del p.data
    finally:
        outer.__exit__(None, None, None)
    assert "data" not in torch.Tensor.__dict__


def test_the_fast_path_of_a_transformer_encoder_with_a_padding_mask_is_recorded_whole():
    """In eval, `nn.TransformerEncoder` with a key padding mask packs the batch
    into a strided NestedTensor, which has no `.shape`: every op on it was a
    record error and the graph kept 6 ops. Its ragged dim is now -1; the ops
    are the ones torch's profiler sees, and the output is the untraced one."""
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2).eval()
    x, pad = torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's "nested tensors are a prototype")
        with torch.profiler.profile() as prof:
            want = enc(x, src_key_padding_mask=pad)
        with torchtrace.trace(enc) as t:
            got = enc(x, src_key_padding_mask=pad)
    assert torch.equal(got, want)
    g = t.graph
    assert "record_errors" not in g.meta
    top = [e.name for e in prof.events() if e.name.startswith("aten::") and not any(
        p.name.startswith("aten::") for p in [e.cpu_parent] if p is not None)]
    assert [n.op.split(".")[1] for n in g.nodes] == [name[len("aten::"):] for name in top]
    fwd = [n for n in g.nodes if n.short_op.startswith("_transformer_encoder_layer_fwd")]
    assert len(fwd) == 2 and fwd[1].inputs[0] == fwd[0].outputs[0]
    assert [g.value(n.outputs[0]).shape for n in fwd] == [(2, -1, 8)] * 2
    assert g.outputs == [n for n in g.nodes if n.short_op.startswith("to_padded_tensor")][0].outputs


def test_a_trace_ended_in_another_thread_is_refused_and_ends_in_its_own():
    """Its dispatch mode is on the entering thread's stack: an exit from another
    thread ended the trace there and left the mode on for the rest of the process."""
    import threading
    m, x = nn.Linear(2, 2), torch.ones(1, 2)
    t = torchtrace.trace(m)
    t.__enter__()
    try:
        m(x)
        errors = []

        def end() -> None:
            try:
                t.__exit__(None, None, None)
            except UsageError as e:
                errors.append(e)
        th = threading.Thread(target=end)
        th.start()
        th.join()
        assert len(errors) == 1 and "another thread" in str(errors[0])
        m(x)  # (still recording)
    finally:
        t.__exit__(None, None, None)
    assert torch._C._len_torch_dispatch_stack() == 0
    assert [n.short_op for n in t.graph.nodes] == ["t", "addmm"] * 2


def test_a_trace_nested_in_another_gives_the_outer_graph_the_tags_a_lone_trace_gives():
    """(A 2026-11-28 audit.) The outer trace saw every op as issued by the inner
    trace's handler, torchtrace's own code: autograd's own detaches lost
    `autograd_internal`, AccumulateGrad's `add_` lost `accumulate_grad`, and a
    user's `.detach()` right after an op could pass for autograd's. Its structure
    fingerprint differed from a lone trace of the same step, and so did a
    Recorder's stored pass with a trace() inside it."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    m(x).sum().backward()  # (.grad exists: AccumulateGrad adds into it)

    def step():
        h = m[0](x)
        kept = h.detach()  # the user's own detach, right after the op that made h
        (m[2](m[1](h)).log_softmax(-1).sum() + kept.sum()).backward()

    with torchtrace.trace(m) as lone:
        step()
    with torchtrace.trace(m) as outer:
        with torchtrace.trace(m) as inner:
            step()
    tags = [[(n.op, n.phase, n.tags) for n in t.graph.nodes] for t in (lone, inner, outer)]
    assert tags[0] == tags[1] == tags[2]
    assert any("autograd_internal" in t for _, ph, t in tags[0] if ph == "backward")
    assert any("accumulate_grad" in t for _, _, t in tags[0])
    user = [t for op, ph, t in tags[0] if op == "aten.detach.default" and ph == "forward"]
    assert ("view",) in user  # (the user's detach is no bookkeeping, in any of the three)
    assert lone.graph.fingerprints == outer.graph.fingerprints
