"""Tensors pointed at other data inside a pass (a 2026-11-27 audit): `p.data = t`
(what `vector_to_parameters`, `Module.to()` and pruning hooks do) and
`Tensor.set_`. The recorded edges are checked against what the values depend on
(the tensors themselves, run with and without the write), and the results
against an untraced run, bitwise."""
from __future__ import annotations

from typing import Callable, Set

import pytest
import torch
import torch.nn as nn

import torchtrace


def _ancestors(g, vid: str) -> Set[str]:
    """The ids of the nodes value ``vid`` was computed from."""
    made = g.producers()
    seen: Set[str] = set()
    todo = [vid]
    while todo:
        n = made.get(todo.pop())
        if n is not None and n not in seen:
            seen.add(n)
            todo.extend(g.node(n).inputs)
    return seen


def _only(g, short_op: str):
    """The one forward op of this kind."""
    [n] = [n for n in g.nodes if n.short_op == short_op and n.phase == "forward"]
    return n


def _build_and_load(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    vec = torch.cat([torch.arange(6.0) * 0.5, torch.tensor([1.0, -1.0])])
    nn.utils.vector_to_parameters(vec, model.parameters())
    return model(x)


def test_a_read_of_a_parameter_after_vector_to_parameters_depends_on_the_op_that_built_the_vector():
    """`vector_to_parameters` sets `param.data = vec[a:b].view_as(param).data`,
    which no dispatch mode sees: the model's later read of the parameter came
    in as the parameter from outside, linked to no op that built `vec`."""
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    plain_model, traced_model = nn.Linear(3, 2), nn.Linear(3, 2)
    plain = _build_and_load(plain_model, x)
    plain.sum().backward()
    with torchtrace.trace(traced_model) as t:
        got = _build_and_load(traced_model, x)
        got.sum().backward()
    assert torch.equal(got, plain) and torch.equal(got, x @ traced_model.weight.T + traced_model.bias)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(plain_model.parameters(), traced_model.parameters()))
    g = t.graph.validate()
    cat, addmm, tr = _only(g, "cat"), _only(g, "addmm"), _only(g, "t")
    weight, bias = g.value(tr.inputs[0]), g.value(addmm.inputs[0])
    assert (weight.role, weight.name, weight.shape) == ("param", "weight", (2, 3))
    assert (bias.role, bias.name, bias.shape) == ("param", "bias", (2,))
    made = g.producers()
    for v in (weight, bias):  # made by the `.data` read (a detach) of a view of the vector
        n = g.node(made[v.id])
        assert n.short_op == "detach" and g.node(made[n.inputs[0]]).short_op == "view"
        assert cat.id in _ancestors(g, v.id)
        assert v.alias_of == cat.outputs[0]  # (its storage: the vector's)
    assert cat.id in _ancestors(g, addmm.outputs[0])
    assert {gi.name: gi.value for gi in g.autograd.grads} == {"weight": weight.id, "bias": bias.id}


def _swap_then_write_source(p: torch.Tensor, write: bool) -> torch.Tensor:
    t = torch.arange(3.0) * 3
    p.data = t
    p + 1  # (a read of p: made by the `mul`)
    if write:
        t.add_(10)
    return p.sum()


def _swap_then_write_target(p: torch.Tensor, write: bool) -> torch.Tensor:
    t = torch.arange(3.0) * 3
    p.data = t
    if write:
        with torch.no_grad():
            p.add_(10)
    return t.sum()


def _swap_view_then_write_target(p: torch.Tensor, write: bool) -> torch.Tensor:
    t = torch.arange(3.0) * 3
    p.data = t
    w = p.view(3)  # (a view taken after: of the storage `p` shows now)
    if write:
        with torch.no_grad():
            p.add_(10)
    return w.sum()


@pytest.mark.parametrize("scenario", [_swap_then_write_source, _swap_then_write_target, _swap_view_then_write_target])
def test_a_data_assignment_links_later_reads_to_the_data_s_maker_and_to_writes_through_either(scenario):
    """`p.data = t` in a pass: the next read of `p` came in as `p` from outside (no
    edge from the op that made `t`), and `p` and `t` were two storages: a write
    through one was not seen by a later read of the other."""
    def run(write: bool) -> torch.Tensor:
        return scenario(nn.Parameter(torch.zeros(3)), write)

    depends = not torch.equal(run(True), run(False))
    assert depends  # (the oracle: the data says the read sees the write)
    want = run(True)
    p = nn.Parameter(torch.zeros(3))
    with torchtrace.trace() as tr:
        got = scenario(p, True)
    assert torch.equal(got, want)
    g = tr.graph.validate()
    mul, write, read = _only(g, "mul.Tensor"), _only(g, "add_.Tensor"), _only(g, "sum")
    assert (write.id in _ancestors(g, read.outputs[0])) == depends
    assert mul.id in _ancestors(g, read.outputs[0])
    if scenario is _swap_then_write_source:
        add = _only(g, "add.Tensor")
        assert g.producers()[add.inputs[0]] == mul.id  # `p + 1` reads what `mul` made ...
        assert (g.value(add.inputs[0]).role, g.value(add.inputs[0]).name) == ("param", "p")  # ... still `p`
    else:  # (p's write is a write of a parameter, and a version of the value `mul` made it)
        written = g.value(write.outputs[0])
        assert written.role == "param" and g.producers()[written.version_of] == mul.id


def _through_source(a: torch.Tensor, buf: torch.Tensor, write: bool) -> torch.Tensor:
    a.set_(buf)
    if write:
        buf.add_(1)
    return a.sum()


def _through_target(a: torch.Tensor, buf: torch.Tensor, write: bool) -> torch.Tensor:
    a.set_(buf)
    if write:
        a.add_(1)
    return buf.sum()


def _old_view_read(a: torch.Tensor, buf: torch.Tensor, write: bool) -> torch.Tensor:
    v = a.view(2, 2)
    a.set_(buf)
    if write:
        a.add_(1)
    return v.sum()


def _old_view_write(a: torch.Tensor, buf: torch.Tensor, write: bool) -> torch.Tensor:
    v = a[:2]
    a.set_(buf)
    if write:
        v.add_(1)
    return a.sum()


def _new_view_through_target(a: torch.Tensor, buf: torch.Tensor, write: bool) -> torch.Tensor:
    a.set_(buf)
    w = a.view(2, 2)  # (a review: a view taken after `set_` missed later writes through `a` or `buf`)
    if write:
        a.add_(1)
    return w.sum()


def _new_view_through_source(a: torch.Tensor, buf: torch.Tensor, write: bool) -> torch.Tensor:
    a.set_(buf)
    w = a.view(2, 2)
    if write:
        buf.add_(1)
    return w.sum()


_SET_CASES = [_through_source, _through_target, _old_view_read, _old_view_write, _new_view_through_target,
              _new_view_through_source]


@pytest.mark.parametrize("made", ["in the pass", "before the pass"])
@pytest.mark.parametrize("scenario", _SET_CASES, ids=[f.__name__.strip("_") for f in _SET_CASES])
def test_set_points_the_tensor_at_the_source_s_storage(scenario: Callable, made: str):
    """`a.set_(buf)` was taken for a write of `a`'s storage: a write through
    `buf` was not seen by a later read of `a` (nor the other way), and a view of
    `a` taken before it stayed `a`'s alias (a write to `a` versioned it, a write
    to it versioned `a`). The data is the oracle: a read depends on a write
    exactly when running without the write changes what it reads."""
    def fresh():
        return torch.zeros(4), torch.full((4,), 2.0)

    depends = not torch.equal(scenario(*fresh(), True), scenario(*fresh(), False))
    assert depends == (scenario not in (_old_view_read, _old_view_write))
    want = scenario(*fresh(), True)
    outside = fresh()
    with torchtrace.trace() as t:
        got = scenario(*(fresh() if made == "in the pass" else outside), True)
    assert torch.equal(got, want)
    g = t.graph.validate()
    set_, write, read = _only(g, "set_.source_Tensor"), _only(g, "add_.Tensor"), _only(g, "sum")
    assert (write.id in _ancestors(g, read.outputs[0])) == depends
    assert len(set_.outputs) == 1  # (the tensor it points elsewhere: set_ writes no storage)
    target, source = g.value(set_.outputs[0]), set_.inputs[1]
    assert target.alias_of == (g.value(source).alias_of or source)  # (it shares the source's storage)


def test_a_data_assignment_on_a_parameter_subclass_makes_one_value():
    """(A review: a Parameter subclass with its own `__torch_function__`, such as a
    lazy module's UninitializedParameter, runs the `.data` setter again inside
    torch's: the op that made the new data got two values of the parameter.)"""
    m, x = nn.LazyLinear(2), torch.randn(1, 3)
    with torchtrace.trace(m) as t:
        got = m(x)
    assert torch.equal(got, x @ m.weight.T + m.bias)
    g = t.graph.validate()
    made = [(n.short_op, [g.value(v).name for v in n.outputs if g.value(v).role == "param"])
            for n in g.nodes if any(g.value(v).role == "param" for v in n.outputs)]
    assert sorted(names for op, names in made if op == "empty.memory_format") == [["bias"], ["weight"]], made
