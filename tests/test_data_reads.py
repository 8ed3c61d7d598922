"""Reads of tensor data that reach no dispatcher -- ``tolist()``, ``numpy()`` and
NumPy's ``np.asarray(t)`` -- are witnesses, like ``.item()``, and change nothing
the user's program computes (torchtrace/record/dataread.py)."""
from __future__ import annotations

import ast
import hashlib
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import torchtrace
from torchtrace.record.dataread import handed_value


class Packed(nn.Module):
    """Branches on ``lengths.tolist()`` and on a NumPy copy of an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if max(lengths.tolist()) > 2:
            h = h * 2
        if np.asarray(h.detach()).sum() > 0:
            h = h + 1
        return h


def _line(fn, text: str) -> int:
    import inspect
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, s in enumerate(lines) if text in s)


def _reads(g):
    return [n for n in g.nodes if n.op.startswith("torchtrace.")]


def test_tolist_and_numpy_reads_are_witnesses_with_their_input_module_line_and_numbers():
    torch.manual_seed(0)
    m, x, lengths = Packed(), torch.randn(2, 4), torch.tensor([3, 1, 2])
    with torchtrace.trace(m) as t:
        m(x, lengths)
    g = t.graph
    tolist, numpy = _reads(g)
    assert (tolist.op, numpy.op) == ("torchtrace.tolist.default", "torchtrace.numpy.default")
    assert "witness" in tolist.tags and "witness" in numpy.tags
    # the tensor read is the value each read takes in: the input, and the activation's detach
    assert g.value(tolist.inputs[0]).name == "lengths"
    detach = next(n for n in g.nodes if n.outputs == numpy.inputs)
    assert detach.op == "aten.detach.default" and tolist.outputs == () == numpy.outputs
    assert tolist.source.line == _line(Packed.forward, "lengths.tolist()")
    assert numpy.source.line == _line(Packed.forward, "np.asarray")
    assert g.module(tolist.module).path == "" and g.module(numpy.module).path == ""
    assert tolist.witness.value == "[3, 1, 2]"
    # the numbers as read: the text reads back as the same float32 values, bit for bit
    h = (m.fc(x) * 2).detach()
    assert torch.equal(torch.tensor(ast.literal_eval(numpy.witness.value), dtype=torch.float32), h)


def test_a_branch_on_tolist_is_named_in_the_diff_of_two_passes():
    torch.manual_seed(0)
    m, x = Packed(), torch.randn(3, 4)
    graphs = []
    for lengths in (torch.tensor([3, 1, 2]), torch.tensor([1, 1, 2])):
        with torchtrace.trace(m) as t:
            m(x, lengths)
        graphs.append(t.graph)
    text = str(torchtrace.diff(*graphs))
    line = _line(Packed.forward, "lengths.tolist()")
    assert "read [3, 1, 2] in A, [1, 1, 2] in B → 1 op only in A" in text
    assert f":{line}` read [3, 1, 2]" in text


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_a_small_read_keeps_numbers_that_give_back_the_data(dtype):
    torch.manual_seed(1)
    t = torch.randn(2, 3).to(dtype)
    value = handed_value(t, t.tolist())
    assert torch.equal(torch.tensor(ast.literal_eval(value), dtype=dtype), t)
    assert value.count(",") == 5 and value.startswith("[[")


def test_a_large_read_keeps_a_digest_that_tells_other_data_apart_and_a_0_dim_read_its_number():
    a, b = torch.arange(100.0), torch.arange(100.0)
    b[57] = -1
    da, db = handed_value(a, a.tolist()), handed_value(b, b.tolist())
    assert da.startswith("<100 values, sha256 ") and da != db
    assert handed_value(a, a.numpy()) == da == handed_value(a.clone(), a.clone().tolist())
    assert handed_value(torch.tensor(2.5), 2.5) == 2.5 and handed_value(torch.tensor(True), True) is True
    with torchtrace.trace() as t:
        if torch.tensor(0.25).tolist() > 0:
            a.numpy()
    assert [n.witness.value for n in _reads(t.graph)] == [0.25, da]


def _run(reads: bool):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    h = m[0](x)
    out = []
    if reads:
        out += [h.tolist(), h.detach().numpy().copy(), np.asarray(h.detach()).copy()]
    loss = m[2](m[1](h)).pow(2).sum()
    loss.backward()
    return out, loss, [p.grad for p in m.parameters()]


def test_results_autograd_and_the_op_to_node_join_are_as_without_the_reads():
    """The ops of ours make no autograd Node and leave the sequence number alone
    (a custom op without an autograd kernel moved it): what the program computes and
    the join of each forward op to the Node it made are as without a trace."""
    s0 = torch._C._autograd._get_sequence_nr()
    plain = _run(True)
    plain_steps = torch._C._autograd._get_sequence_nr() - s0
    with torchtrace.trace() as t:
        s0 = torch._C._autograd._get_sequence_nr()
        traced = _run(True)
        traced_steps = torch._C._autograd._get_sequence_nr() - s0
    assert traced_steps == plain_steps
    assert plain[0][0] == traced[0][0] and all(np.array_equal(a, b) for a, b in zip(plain[0][1:], traced[0][1:]))
    assert torch.equal(plain[1], traced[1]) and all(map(torch.equal, plain[2], traced[2]))
    g = t.graph
    assert len(_reads(g)) == 3
    made = {a.op: a.name for a in g.autograd.nodes if a.op is not None}
    want = {"aten.addmm.default": "AddmmBackward0", "aten.tanh.default": "TanhBackward0",
            "aten.pow.Tensor_Scalar": "PowBackward0", "aten.sum.default": "SumBackward0"}
    for n in g.nodes:
        if n.phase == "forward" and n.op in want:
            assert made[n.id] == want[n.op], n


def test_numpy_still_shares_memory_and_errors_are_torch_s_own():
    x = torch.zeros(3)
    with torchtrace.trace():
        a = x.numpy()
        with pytest.raises(RuntimeError, match="requires grad"):
            torch.zeros(2, requires_grad=True).numpy()
        assert torch.ones(2, requires_grad=True).numpy(force=True).tolist() == [1.0, 1.0]
    a[1] = 7
    assert x.tolist() == [0.0, 7.0, 0.0]


def test_nothing_stays_patched_and_no_op_of_ours_is_issued_outside_a_trace():
    with pytest.raises(ValueError):
        with torchtrace.trace():
            torch.ones(2).tolist()
            raise ValueError("boom")
    assert "tolist" not in torch.Tensor.__dict__ and "numpy" not in torch.Tensor.__dict__
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist

    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Watch():
        torch.ones(2).tolist()
    # a mode of the user's innermost inside a trace: the read is not noted, and the mode sees no op of ours
    with torchtrace.trace() as t:
        with Watch():
            torch.ones(2).tolist()
    assert not any(s.startswith("torchtrace.") for s in seen) and not _reads(t.graph)


def test_unsampled_steps_of_a_recorder_issue_no_op_of_ours(tmp_path):
    seen = []
    real = torchtrace.record.dataread._note

    def counting(name, t, out, caller):
        seen.append(torch.utils._python_dispatch._get_current_dispatch_mode())
        real(name, t, out, caller)

    m = nn.Linear(2, 2)
    torchtrace.record.dataread._note = counting
    try:
        with torchtrace.Recorder(tmp_path / "t.db", every=2) as rec:
            for step in range(4):
                rec.step(step)
                m(torch.ones(1, 2)).tolist()
    finally:
        torchtrace.record.dataread._note = real
    assert len(seen) == 4 and [s is None for s in seen] == [False, True, False, True]
    from torchtrace.store import Store
    with Store(tmp_path / "t.db", readonly=True) as store:
        graphs = [g for _, g in store.graphs()]
    assert [[n.op for n in _reads(g)] for g in graphs] == [["torchtrace.tolist.default"]] * 2


class Logged(torch.Tensor):
    """A subclass whose __torch_function__ logs every function it sees."""
    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_subclass_s_torch_function_sees_the_read_but_not_the_op_of_ours():
    x = torch.arange(3.0).as_subclass(Logged)
    with torchtrace.trace() as t:
        assert x.tolist() == [0.0, 1.0, 2.0]
    assert Logged.seen and not any("torchtrace" in s for s in Logged.seen)
    assert [n.witness.value for n in _reads(t.graph)] == ["[0.0, 1.0, 2.0]"]


def test_the_graph_with_reads_saves_validates_and_renders(tmp_path):
    torch.manual_seed(0)
    m = Packed()
    with torchtrace.trace(m) as t:
        m(torch.randn(3, 4), torch.tensor([3, 1, 2]))
    path = tmp_path / "g.json"
    torchtrace.save(t.graph, path)
    back = torchtrace.load(path)
    assert [n.witness for n in _reads(back)] == [n.witness for n in _reads(t.graph)]
    assert "read [3, 1, 2]" in torchtrace.render(back, "mermaid").replace("#91;", "[").replace("#93;", "]")
    assert "torchtrace.tolist v" in str(back) and "-> [3, 1, 2]" in str(back)
    assert sys.modules.get("torchtrace.record.dataread") is not None


def test_nested_traces_each_record_the_read_once():
    x = torch.tensor([2, 7])
    with torchtrace.trace() as outer:
        with torchtrace.trace() as inner:
            assert x.tolist() == [2, 7]
    for t in (inner, outer):
        assert [(n.op, n.witness.value) for n in _reads(t.graph)] == [("torchtrace.tolist.default", "[2, 7]")]


def test_a_mode_of_the_user_s_around_the_trace_gets_no_op_of_ours_and_reads_still_work():
    """(A review.) A FakeTensorMode, or any mode that takes aten ops only, entered
    before the trace got `torchtrace.tolist` and refused it: `x.tolist()` raised."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    class AtenOnly(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace != "aten":
                raise NotImplementedError(f"{func} is not an aten op")
            return func(*args, **(kwargs or {}))

    for mode in (AtenOnly(), FakeTensorMode()):
        x = torch.tensor([1, 2, 3])
        with mode:
            with torchtrace.trace() as t:
                assert x.tolist() == [1, 2, 3]
        assert not _reads(t.graph)


def test_reads_of_float16_extremes_bfloat16_and_conjugates_say_what_was_read():
    half = torch.tensor([1.0, -65504.0], dtype=torch.float16)  # (float16's max: "7e+04" overflows it)
    text = handed_value(half, half.tolist())
    assert torch.equal(torch.tensor(ast.literal_eval(text), dtype=torch.float16), half)
    bf = torch.tensor([0.1, 1 / 3], dtype=torch.bfloat16)
    assert handed_value(bf, bf.tolist()) == "[0.1, 0.334]"  # (the fewest digits that give the bfloat16 back)
    z = torch.arange(10.0) * (1 + 1j)
    assert handed_value(z.conj(), z.conj().tolist()) == handed_value(z.conj().resolve_conj(), z.conj().tolist())
    # (audit: complex64 parts were written in float64's digits, where float32 reads take float32's)
    c = torch.tensor([3.064304828643799 + 0j, -0.005192190408706665 - 0.5924021005630493j, 2.5j, complex(-0.0, 1.0)])
    text = handed_value(c, c.tolist())
    assert text == "[(3.0643048+0j), (-0.0051921904-0.5924021j), 2.5j, (-0+1j)]", text
    assert torch.equal(torch.tensor([complex(x) for x in text[1:-1].split(", ")], dtype=torch.complex64), c)
    big = torch.zeros(2_000_000)  # (8 MB: counted, not digested)
    assert handed_value(big, big.numpy()) == "<2000000 values>"


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_a_trace_s_own_read_of_a_nested_tensor_s_sizes_is_no_read_of_the_program():
    """The inner trace's handler reads a strided NestedTensor's sizes with tolist():
    the outer trace recorded it as the program's read."""
    with torchtrace.trace() as outer:
        with torchtrace.trace():
            nt = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)])
            (nt * 2).sin()
    assert not _reads(outer.graph)


class Printing(nn.Module):
    """Prints its activation, then branches on the text of another."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        print(h)
        if "nan" in str(h * 1):
            h = torch.nan_to_num(h)
        return h


def test_a_tensors_printed_text_is_a_read_of_the_numbers_it_shows(capsys):
    torch.manual_seed(0)
    m = Printing()
    graphs = []
    for x in (torch.randn(2, 4), torch.full((2, 4), float("nan"))):
        with torchtrace.trace(m) as t:
            out = m(x)
        assert "tensor([[" in capsys.readouterr().out  # (printed as without a trace)
        assert torch.equal(out, m(x))  # (nan_to_num'd in the second pass)
        capsys.readouterr()
        graphs.append(t.graph)
        reads = [n for n in t.graph.witnesses() if n.op == "torchtrace.repr.default"]
        assert [n.source.line for n in reads] == [_line(Printing.forward, "print(h)"), _line(Printing.forward, '"nan"')]
        assert t.graph.value(reads[0].inputs[0]).shape == (2, 4)
    # the numbers, as a tolist() read gives them (not the text's `grad_fn=<AddmmBackward0>`): bit for bit
    first = next(n for n in graphs[0].witnesses() if n.op == "torchtrace.repr.default")
    torch.manual_seed(0)
    m2, x = Printing(), torch.randn(2, 4)
    assert torch.equal(torch.tensor(ast.literal_eval(first.witness.value), dtype=torch.float32), m2.fc(x).detach())
    nan = next(n for n in graphs[1].witnesses() if n.op == "torchtrace.repr.default")
    assert nan.witness.value == "[[nan, nan, nan, nan], [nan, nan, nan, nan]]"
    line = _line(Printing.forward, '"nan"')
    why = torchtrace.diff(*graphs).why()
    assert len(why) == 1 and why[0].startswith(f"`test_data_reads.py:{line}` read ") and \
        why[0].endswith("\u2192 1 op only in B (in `<root>`)") and "read earlier" not in why[0], why  # (not the print)


def test_the_text_of_a_meta_tensor_is_no_read_and_that_of_a_parameter_is():
    p = nn.Parameter(torch.ones(2))
    with torchtrace.trace() as t:
        text = repr(torch.ones(2, device="meta"))
        shown = f"{p}"
    assert "meta" in text and shown.startswith("Parameter containing:")
    assert [(n.op, n.witness.value) for n in t.graph.witnesses()] == [("torchtrace.repr.default", "[1.0, 1.0]")]
    sparse = torch.eye(2).to_sparse()
    with torchtrace.trace() as t:
        text = str(sparse)  # (no numbers to read as a list: the text, on one line)
    line = " ".join(text.split())  # (past 80 characters: its digest)
    assert len(line) > 80 and [n.witness.value for n in t.graph.witnesses()] == [
        f"<4 values, sha256 {hashlib.sha256(line.encode()).hexdigest()[:12]}>"]
