"""torchtrace.diff: which read is named when several differ -- the `if` that
reads tensor data itself, a number read into a name that a changed op's
arguments are computed from -- and reads that torch makes without tagging the
op (TransformerEncoder's padding-mask test)."""
from __future__ import annotations

import torch
import torch.nn as nn

import torchtrace
import zoo
from zoo import record


def line_of(marker: str) -> int:
    return zoo.marked_line(__file__, marker)


def where(marker: str) -> str:
    return f"`test_diff_reads_named.py:{line_of(marker)}`"


class MaxThenIf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        best = max([x[0, 0], x[0, 1]])  # LINE:max
        if best > 1.5:  # LINE:if
            h = h.relu()
        return h


def test_an_if_that_reads_tensor_data_itself_is_named_before_the_read_that_made_its_name():
    torch.manual_seed(0)
    m = MaxThenIf()
    a, b = record(m, torch.tensor([[1., 2, 3, 4]])), record(m, torch.tensor([[0., -2, 0, 0]]))
    # both lines read (Python compares two 0-d tensors at `max`, then one with 1.5 at the `if`)
    assert [n.source.line for n in a.witnesses()] == [line_of("max"), line_of("if")]
    d = torchtrace.diff(a, b)
    assert d.why() == [f"{where('if')} read True in A, False in B (or, read earlier, {where('max')} read True in A, "
                       "False in B) \u2192 1 op only in A (in `<root>`)"]


class SliceByCount(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if gate.item() > 0:  # LINE:gate
            h = h * 3
        n = int((x > 0).sum())  # LINE:count
        return h[:, :1 + n % 4]


def _slice_hunk(d):
    return next(h for h in d.hunks if h.kind == "changed" and any(p.a.short_op == "slice.Tensor" for p in h.changed))


def test_a_number_read_into_a_name_that_a_changed_slice_bound_uses_is_named():
    torch.manual_seed(0)
    m = SliceByCount()
    x1, x2 = torch.tensor([[1., 1, -1, -1]]), torch.tensor([[-1., -1, -1, -1]])  # n = 2 (end 3), n = 0 (end 1)
    one = torch.tensor(1.)
    d = torchtrace.diff(record(m, x1, one), record(m, x2, one))
    h = _slice_hunk(d)
    assert h.witness is not None and h.witness.line == line_of("count") and not h.witness.weak
    assert d.why() == [f"{where('count')} read 2 in A, 0 in B (passed on as `n`, in `slice.Tensor`'s end) \u2192 the "
                       "same ops with other shapes (1 op changed): size 3 \u2192 1 in 1 value"]
    # the gate read differs too, and steered the `mul` only in A: the slice's end is still the count's
    d = torchtrace.diff(record(m, x1, one), record(m, x2, -one))
    hunks = [(h.kind, h.witness.line if h.witness else None) for h in d.hunks]
    assert hunks == [("structural", line_of("gate")), ("changed", line_of("count"))]


def test_transformer_encoders_padding_mask_test_is_a_witness():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    enc = nn.TransformerEncoder(layer, 2).eval()
    x = torch.randn(2, 5, 16)
    left = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])  # left-aligned: the nested fast path
    other = torch.tensor([[False] * 5, [True] + [False] * 4])  # not: the dense path
    graphs = []
    for mask in (left, other):
        with torch.no_grad():
            want = enc(x, src_key_padding_mask=mask)
            with torchtrace.trace(enc) as t:
                got = enc(x, src_key_padding_mask=mask)  # LINE:enc
        assert torch.equal(want, got)
        graphs.append(t.graph)
    reads = [[(n.short_op, n.witness.value) for n in g.witnesses()
              if n.short_op == "_nested_tensor_from_mask_left_aligned"] for g in graphs]
    assert reads == [[("_nested_tensor_from_mask_left_aligned", True)],
                     [("_nested_tensor_from_mask_left_aligned", False)]]
    why = torchtrace.diff(*graphs).why()
    assert why and why[0].startswith(f"{where('enc')} read True in A, False in B \u2192 "), why


class TwoFlags(nn.Module):
    """Two flags read up front, then an `if` on each: both `if`s' ops can fall in one hunk."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.f(x)
        big = bool(h.mean() > 0)  # LINE:big
        spiky = bool(h.max() > 5)  # LINE:spiky
        if big:
            h = torch.tanh(h)
        if spiky:
            h = h * 0.5
        return h


def _flags(m: TwoFlags, x: torch.Tensor, b0: float, b1: float = 0.0):
    with torch.no_grad():
        m.f.weight.zero_()
        m.f.bias.zero_()
        m.f.bias[0], m.f.bias[1] = b0, b1
        h = m.f(x)
        flags = (bool(h.mean() > 0), bool(h.max() > 5))
    return flags, record(m, x)


def test_the_ifs_of_two_flags_read_up_front_each_name_their_read():
    torch.manual_seed(0)
    m, x = TwoFlags(), torch.randn(2, 8)
    (fa, a), (fb, b) = _flags(m, x, 10.0), _flags(m, x, -1.0)
    assert (fa, fb) == ((True, True), (False, False))  # both `if`s ran in A only: one hunk of tanh and mul
    spiky, big = f"{where('spiky')} read True in A, False in B", f"{where('big')} read True in A, False in B"
    others = "(and, for other ops of these,"
    assert torchtrace.diff(a, b).why() == [f"{big} {others} {spiky}) \u2192 2 ops only in A (in `<root>`)"]
    (fa, a), (fb, b) = _flags(m, x, 1.0), _flags(m, x, 6.0, -8.0)
    assert (fa, fb) == ((True, False), (False, True))  # tanh only in A, mul only in B
    # (B's mul aligns before A's tanh: its `if`'s read is named first)
    assert torchtrace.diff(a, b).why() == [f"{where('spiky')} read False in A, True in B {others} {big}) \u2192 1 op "
                                           "only in A, 1 op only in B (in `<root>`)"]


class NestedFlags(nn.Module):
    """A flag read up front decides a block; a count read after it decides nothing (the same in both)."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        flag = bool(x.sum() > 0)  # LINE:outer_flag
        n = int((x > 0).sum())
        if flag:
            h = h.relu()
            if n > 1:
                h = h * 2
        return h


def test_an_if_inside_a_branch_the_other_pass_never_entered_names_nothing_more():
    torch.manual_seed(0)
    m = NestedFlags()
    d = torchtrace.diff(record(m, torch.tensor([[1., 2, 3, 4]])), record(m, torch.tensor([[-5., 1, 1, 1]])))
    assert d.why() == [f"{where('outer_flag')} read True in A, False in B \u2192 2 ops only in A (in `<root>`)"]


class NoisyWhenTraining(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if torch.is_grad_enabled():  # LINE:grad_if
            h = h + 0.01 * torch.randn_like(h)
        return self.b(torch.relu(h))


def test_the_users_own_if_on_grad_mode_is_named_not_torchs_fused_kernels():
    torch.manual_seed(0)
    m, x = NoisyWhenTraining(), torch.randn(2, 8)
    a = record(m, x, train=True)
    b = record(m, x)  # (under no_grad)
    assert torchtrace.diff(a, b).why() == [
        f"grad mode train in A, no_grad in B: the `if` at {where('grad_if')} tests it "
        "\u2192 3 ops only in A (in `<root>`)"]


class PrintThenFlag(nn.Module):
    """Prints its activation, then a Python flag (or grad mode) decides a relu."""

    def __init__(self, flag: bool) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.flag = flag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        print(h)
        if self.flag:
            h = h.relu()
        if torch.is_grad_enabled():  # LINE:print_grad_if
            h = h * 2
        return h


def test_a_print_is_never_named_for_what_python_state_or_grad_mode_decided(capsys):
    torch.manual_seed(0)
    m, x = PrintThenFlag(False), torch.randn(2, 4)
    a = record(m, x)
    m.flag = True
    b = record(m, x * 2)  # (other data printed, and the flag flipped)
    assert torchtrace.diff(a, b).why() == ["no tensor read differs before it: decided by Python state (arguments, "
                                           "flags, caches) \u2192 1 op only in B (in `<root>`)"]
    m.flag = False
    a, b = record(m, x), record(m, x, train=True)  # (the same numbers printed, `grad_fn=...` only in B's text)
    reads = [[n.witness.value for n in g.witnesses()] for g in (a, b)]
    assert reads[0] == reads[1] and len(reads[0]) == 1
    assert torchtrace.diff(a, b).why() == [f"grad mode no_grad in A, train in B: the `if` at {where('print_grad_if')} "
                                           "tests it \u2192 1 op only in B (in `<root>`)"]
    capsys.readouterr()


class KeptText(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        self.text = str(h)  # LINE:kept_text
        if "nan" in self.text:
            h = torch.nan_to_num(h)
        return h


def test_a_tensors_text_kept_in_an_attribute_is_named_for_the_branch_it_decides():
    torch.manual_seed(0)
    m = KeptText()
    d = torchtrace.diff(record(m, torch.ones(2, 4)), record(m, torch.full((2, 4), float("nan"))))
    why = d.why()
    assert len(why) == 1 and why[0].startswith(f"{where('kept_text')} read [[") and "maybe not" not in why[0], why
    assert why[0].endswith("[[nan, nan, nan, nan], [nan, nan, nan, nan]] in B \u2192 1 op only in B (in `<root>`)")


class CountTested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        h = self.l(x)
        n = int((x > 0).sum())
        return h[:, :k] if n > 0 else h  # (`n` only picks the arm, the same in both passes)


def test_a_count_read_into_a_name_the_ops_line_only_tests_is_not_named_for_its_args():
    torch.manual_seed(0)
    m = CountTested()
    d = torchtrace.diff(record(m, torch.tensor([[1., 1, -1, -1]]), 3), record(m, torch.tensor([[1., 1, 1, -1]]), 1))
    assert d.why() == ["same ops, other shapes (1 op changed): size 3 \u2192 1 in 1 value"]


class Logged(nn.Module):
    """Logs its activation in several styles, then a flag decides a relu."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.flag, self.verbose = False, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        print("is it not finite? or fine? for step:", h)
        print(h) if self.verbose else None
        print(
            h)
        if self.flag:
            h = h.relu()
        return h


def test_prints_with_branch_words_in_their_text_or_a_conditional_around_them_are_logs(capsys):
    assert _logged_why(Logged, "flag", True) == ["no tensor read differs before it: decided by Python state "
                                                 "(arguments, flags, caches) \u2192 1 op only in B (in `<root>`)"]
    capsys.readouterr()


class GradGated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.noisy = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if torch.is_grad_enabled():  # LINE:outer_grad
            if self.noisy:
                h = h + 0.01 * torch.randn_like(h)
        if h.requires_grad:  # LINE:act_flag
            h = h * 2
        return h


def test_a_grad_mode_if_around_a_flags_if_and_an_activations_requires_grad_are_named():
    torch.manual_seed(0)
    m, x = GradGated(), torch.randn(2, 8)
    why = torchtrace.diff(record(m, x, train=True), record(m, x)).why()
    assert why == [f"grad mode train in A, no_grad in B: the `if` at {where('outer_grad')} tests it \u2192 4 ops only "
                   "in A (in `<root>`)"], why


class CountedSlice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        n = int((x > 0).sum())  # LINE:n_read
        return torch.stack([h[:, i] for i in range(8) if i % 2], 1)[:, :1 + n % 4]


def test_a_comprehensions_if_does_not_hide_the_names_after_it():
    torch.manual_seed(0)
    m = CountedSlice()
    x1 = torch.tensor([[1., 1] + [-1.] * 6])
    x2 = torch.tensor([[1.] * 5 + [-1.] * 3])
    why = torchtrace.diff(record(m, x1), record(m, x2)).why()
    assert len(why) == 1 and why[0].startswith(f"{where('n_read')} read 2 in A, 5 in B (passed on as `n`, in "
                                               "`slice.Tensor`'s end)"), why


class OneLinePrints(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.verbose, self.deep = True, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        if self.verbose: print(h)  # noqa: E701
        for row in h: print(row)  # noqa: E701
        if self.deep:
            h = h.relu()
        return h


def test_prints_in_one_line_blocks_are_logs_too(capsys):
    assert _logged_why(OneLinePrints, "deep", False) == ["no tensor read differs before it: decided by Python "
                                                         "state (arguments, flags, caches) \u2192 1 op only in A "
                                                         "(in `<root>`)"]
    capsys.readouterr()


class Reassigned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        n = int((x > 0).sum())
        self.seen = n
        n = k + 1
        return self.fc(x)[:, :n]


def test_a_count_whose_name_is_assigned_again_before_the_op_is_not_named_for_it():
    torch.manual_seed(0)
    m = Reassigned()
    d = torchtrace.diff(record(m, torch.tensor([[1., 1, 1, 1]]), 1), record(m, torch.tensor([[1., 1, 1, -1]]), 2))
    assert d.why() == ["same ops, other shapes (1 op changed): size 2 \u2192 3 in 1 value"]


class Trimmed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int((x > 0).sum())  # LINE:trimmed_read
        n = n - 1
        if n > 2:
            n = 2
        return self.fc(x)[:, :n]


def test_a_count_assigned_again_from_itself_is_still_named_for_the_op():
    torch.manual_seed(0)
    m = Trimmed()
    d = torchtrace.diff(record(m, torch.tensor([[1., 1, -1, -1]])), record(m, torch.tensor([[1., 1, 1, 1]])))
    assert d.why() == [f"{where('trimmed_read')} read 2 in A, 4 in B (passed on as `n`, in `slice.Tensor`'s end) "
                       "\u2192 the same ops with other shapes (1 op changed): size 1 \u2192 2 in 1 value"]


class GradTernary(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        return (h * 2) if torch.is_grad_enabled() else h.relu()  # LINE:grad_ternary


def test_a_grad_mode_conditional_expression_on_the_ops_line_is_named():
    torch.manual_seed(0)
    m, x = GradTernary(), torch.randn(2, 4)
    assert torchtrace.diff(record(m, x, train=True), record(m, x)).why() == [
        f"grad mode train in A, no_grad in B: the `if` at {where('grad_ternary')} tests it \u2192 1 op only in A, "
        "1 op only in B (in `<root>`)"]


def _logged_why(make, flag, value):
    """The why-lines of a model that prints its activation three times, against itself
    with ``flag`` set to ``value`` and another input (the prints read other numbers)."""
    torch.manual_seed(0)
    m, x = make(), torch.randn(2, 4)
    a = record(m, x)
    setattr(m, flag, value)
    assert len(list(a.witnesses())) == 3
    return torchtrace.diff(a, record(m, x * 2)).why()
