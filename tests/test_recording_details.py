"""Details of the IR checked against plain torch: the lines of ops that a
user's backward hooks run, ops of code the standard library generates, the
``requires_grad`` of outputs autograd marks non-differentiable once backward
freed them, and the path of a module its caller holds in a container while a
submodule holds it too."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import torchtrace
import zoo


def line_of(marker: str) -> int:
    return zoo.marked_line(__file__, marker)


class Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)  # LINE:linear
        h.register_hook(lambda g: g * 2)  # LINE:tensor_hook
        h.register_hook(lambda g: nn.functional.normalize(g, dim=-1))  # LINE:torch_fn_hook
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t + 0):  # LINE:unpack
            h = h.tanh()  # LINE:tanh
        return self.l2(h)


def test_ops_a_backward_hook_runs_are_at_the_hooks_line_and_formulas_at_their_forward_ops():
    torch.manual_seed(0)
    m = Hooked()
    x = torch.randn(2, 4)
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
    back = [n for n in t.graph.nodes if n.phase == "backward"]
    at = {(n.short_op, n.source.line) for n in back}
    assert ("mul.Tensor", line_of("tensor_hook")) in at  # `g * 2`
    assert {("linalg_vector_norm", line_of("torch_fn_hook")), ("div.Tensor", line_of("torch_fn_hook"))} <= at
    assert ("add.Tensor", line_of("unpack")) in at  # `t + 0`
    assert ("tanh_backward", line_of("tanh")) in at and ("mm", line_of("linear")) in at
    assert not any(n.short_op in ("mul.Tensor", "add.Tensor") and n.source.line in (line_of("linear"), line_of("tanh"))
                   for n in back)


@dataclasses.dataclass
class Cfg:
    scale: torch.Tensor


def test_a_dataclass_eq_reading_tensors_is_at_the_line_that_compared():
    a, b = Cfg(torch.tensor(1.0)), Cfg(torch.tensor(1.0))
    with torchtrace.trace() as t:
        same = a == b  # LINE:eq
    assert same is True
    reads = t.graph.witnesses()
    assert [(n.short_op, n.source.file, n.source.line) for n in reads] == [
        ("_local_scalar_dense", __file__, line_of("eq"))]


class Keep(TorchDispatchMode):
    """Every op's outputs, held (what eager says of them after the block)."""

    def __init__(self) -> None:
        super().__init__()
        self.outs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.outs.append((str(func), out))
        return out


def test_outputs_autograd_marks_non_differentiable_keep_requires_grad_false_after_backward():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 0, 1])
    with torchtrace.trace(m) as t:
        nn.functional.cross_entropy(m(x), y).backward()  # (backward frees the saved mean, rstd, total_weight)
    keep = Keep()
    with keep:
        m(x)
        nn.functional.cross_entropy(m(x), y)
    want = {op: [o.requires_grad for o in out] for op, out in keep.outs if isinstance(out, tuple)}
    assert want["aten.native_layer_norm.default"] == [True, False, False]
    assert want["aten.nll_loss_forward.default"] == [True, False]
    values = {v.id: v for v in t.graph.values}
    got = {n.op: [values[o].requires_grad for o in n.outputs] for n in t.graph.nodes
           if n.phase == "forward" and n.op in want}
    assert got == {op: want[op] for op in got} and set(got) == {
        "aten.native_layer_norm.default", "aten.nll_loss_forward.default"}


def test_several_differentiable_outputs_keep_requires_grad_true_when_gone():
    x = torch.randn(3, 3, requires_grad=True)
    with torchtrace.trace() as t:
        P, L, U = torch.linalg.lu(x)
        (L.sum() + U.sum()).backward()
        del P, U  # (gone by the build: their flags are not read)
    assert [P.requires_grad for P in torch.linalg.lu(x)] == [False, True, True]
    values = {v.id: v for v in t.graph.values}
    lu = next(n for n in t.graph.nodes if n.op == "aten.linalg_lu.default")
    assert [values[o].requires_grad for o in lu.outputs][1:] == [True, True]  # (P, gone too, is not known)


class Holder(nn.Module):
    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sub(x)


class Shared(nn.Module):
    """One Linear held by a submodule (`a.sub`) and by the root's ModuleList (`ml.0`)."""

    def __init__(self, call_a: bool) -> None:
        super().__init__()
        lin = nn.Linear(4, 4)
        self.a = Holder(lin)
        self.ml = nn.ModuleList([lin])
        self.call_a = call_a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.call_a:
            x = self.a(x)
        return self.ml[0](x)


def test_a_module_called_through_its_callers_container_takes_that_path_not_another_submodules():
    for call_a, want in ((False, [("", None), ("ml.0", "")]),
                         (True, [("", None), ("a", ""), ("a.sub", "a"), ("ml.0", "")])):
        torch.manual_seed(0)
        m = Shared(call_a)
        assert [n for n, _ in m.named_modules(remove_duplicate=False)] == ["", "a", "a.sub", "ml", "ml.0"]
        g = zoo.record(m, torch.randn(2, 4))
        paths = {c.id: c.path for c in g.modules}
        assert [(c.path, paths.get(c.parent)) for c in g.modules] == want


class Raises(nn.Module):
    def __init__(self, after: bool) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        if not self.after:
            raise ValueError("boom")
        return h


class Stores(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> None:
        self.out = self.l(x)


def test_a_root_call_that_returned_none_before_the_block_raised_keeps_the_plain_code_outputs():
    m = Stores()
    try:
        with torchtrace.trace(m) as t:
            m(torch.randn(2, 4))
            logits = m.out * 2
            raise RuntimeError("after")
    except RuntimeError:
        pass
    assert t.graph.meta["error"] == "RuntimeError"
    assert [t.graph.value(v).shape for v in t.graph.outputs] == [tuple(logits.shape)]


def test_a_root_call_that_raised_returned_nothing_and_one_that_returned_keeps_its_output():
    for after, want in ((False, 0), (True, 1)):
        m = Raises(after)
        try:
            with torchtrace.trace(m) as t:
                out = m(torch.randn(2, 4))
                raise KeyError("after the call")  # (the block raises either way)
        except (ValueError, KeyError) as e:
            assert type(e) is (KeyError if after else ValueError)
        g = t.graph
        assert g.meta["error"] == ("KeyError" if after else "ValueError")
        assert len(g.outputs) == want
        if after:
            assert g.value(g.outputs[0]).shape == tuple(out.shape)
        assert ("output" in torchtrace.render(g, "mermaid")) == after


class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.utils.checkpoint.checkpoint(self.a, x, use_reentrant=False))


def test_a_checkpoints_recompute_stopping_by_raising_is_no_root_call_that_raised():
    m = Checkpointed()
    with torchtrace.trace(m) as t:
        y = m(torch.randn(4, 8))
        y.sum().backward()  # (the recompute calls `a` again, and stops it by raising, in backward)
    assert t.graph.meta.get("error") is None and [t.graph.value(v).shape for v in t.graph.outputs] == [(4, 8)]


def test_a_root_call_returning_none_inside_an_except_block_did_not_raise():
    m = Stores()
    try:
        raise KeyError("handled")
    except KeyError:
        with torchtrace.trace(m) as t:
            m(torch.randn(2, 4))  # (an exception is being handled: not this call's)
            out = m.out * 2
    assert [t.graph.value(v).shape for v in t.graph.outputs] == [tuple(out.shape)]


def test_gone_outputs_autograd_marks_non_differentiable_after_the_first_ones():
    a = torch.randn(3, 3, requires_grad=True)
    b = torch.randn(3, 2)
    keep = Keep()
    with keep:
        torch.ops.aten._linalg_slogdet(a)
        torch.linalg.lstsq(a, b)
    want = {op: [o.requires_grad for o in out] for op, out in keep.outs if isinstance(out, tuple)}
    with torchtrace.trace() as t:  # (a result of each kept: the pass's autograd graph holds their Nodes)
        kept = torch.ops.aten._linalg_slogdet(a)[1] * 2, torch.linalg.lstsq(a, b)[0] * 2
    assert all(k.requires_grad for k in kept)
    values = {v.id: v for v in t.graph.values}
    got = {n.op: [values[o].requires_grad for o in n.outputs] for n in t.graph.nodes if n.op in want}
    assert got == want and len(got) == 2, (got, want)


class MaybeRaises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, boom: bool = False) -> torch.Tensor:
        h = self.l(x)
        if boom:
            raise ValueError("boom")
        return h


def test_a_root_call_that_raised_keeps_what_an_earlier_root_call_returned():
    m, x = MaybeRaises(), torch.randn(2, 4)
    with torchtrace.trace(m) as t:
        y1 = m(x)
        try:
            m(x, boom=True)
        except ValueError:
            pass
    assert [t.graph.value(v).shape for v in t.graph.outputs] == [tuple(y1.shape)]
