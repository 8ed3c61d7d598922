"""torchtrace.diff: how aligned ops' tensors differ in type -- inputs paired
with inputs and outputs with outputs, dtype-only changes, hunk counts."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import torchtrace
import zoo


class Norm(nn.Module):
    """A layer norm with or without its weight: native_layer_norm gets one more input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor, relu: bool, weighted: bool) -> torch.Tensor:
        if relu:
            x = x.relu()
        h = self.fc(self.fc(self.fc(x)))
        h = h * 2
        h = h + 1
        h = h - 1
        return F.layer_norm(h, (4,), self.w if weighted else None)


_record = zoo.record


def test_an_op_given_one_more_input_is_no_shape_change():
    m = Norm()
    x = torch.ones(2, 4)
    d = torchtrace.diff(_record(m, x, False, False), _record(m, x, False, True))
    (h,) = d.hunks
    (p,) = h.changed
    assert p.a.short_op.startswith("native_layer_norm") and "shape" not in p.what
    assert [t.describe() for t in h.types] == ["B passes one more input, f32[4]"]
    assert [t.describe() for t in d.types] == ["B passes one more input, f32[4]"]
    assert h.explanation.startswith("B passes one more input, f32[4] \u2192 1 op changed")
    assert [t.describe() for t in d.mirror().types] == ["A passes one more input, f32[4]"]


def test_the_hunk_count_counts_every_numbered_hunk():
    m = Norm()
    x = torch.ones(2, 4)
    d = torchtrace.diff(_record(m, x, False, False), _record(m, x, True, True))
    assert [h.kind for h in d.hunks] == ["structural", "changed"]
    assert d.summary() == "structure differs: 2 hunks (1 structural, 1 changed); 0 ops only in A, 1 only in B, 1 changed"
    assert "# 2. " in str(d)


def test_a_dtype_only_change_says_dtypes():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    half = copy.deepcopy(m).to(torch.bfloat16)
    x = torch.ones(2, 4)
    d = torchtrace.diff(_record(m, x), _record(half, x.to(torch.bfloat16)))
    assert d.kind == "shapes"
    assert d.summary().startswith("same structure, dtypes differ: ")
    assert d.why()[0].startswith(f"same ops, other dtypes ({d.changed} ops changed): input `")
    assert "\ndtypes: " in str(d)
    both = torchtrace.diff(_record(m, x), _record(half, torch.ones(3, 4, dtype=torch.bfloat16)))
    assert both.why()[0].startswith(f"same ops, other shapes and dtypes ({both.changed} ops changed): ")


class Upcast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x).float().relu()  # .float() copies only when the dtype differs
        return self.out(h.to(x.dtype)) + h.to(x.dtype).sum()


def test_casts_that_run_only_when_the_dtype_differs_are_said_to_be_that():
    torch.manual_seed(0)
    m = Upcast()
    half = copy.deepcopy(m).to(torch.bfloat16)
    x = torch.ones(2, 4)
    d = torchtrace.diff(_record(m, x), _record(half, x.to(torch.bfloat16)))
    casts = "dtype casts run only in B: .to()/.float()/autocast copy only when the dtype differs (tensors f32 \u2192 bf16)"
    assert d.why() == [f"{casts} \u2192 3 hunks, each 1 op only in B (in `<root>`)"]
    assert d.mirror().why()[0].startswith("dtype casts run only in A: ") and "bf16 \u2192 f32" in d.mirror().why()[0]


def test_extra_inputs_are_counted_as_inputs_not_ops():
    """`torch.stack` of 3 tensors against 5: one op with two more inputs (it said
    "one more input, i64[2] (2 ops)")."""
    def run(n: int):
        with torchtrace.trace() as t:
            outs = [torch.ones(2, dtype=torch.long) * i for i in range(n)]
            torch.stack(outs)  # (one line for both passes)
        return t.graph

    d = torchtrace.diff(run(3), run(5))
    [stack] = [h for h in d.changed_hunks if any(p.a.short_op == "stack" for p in h.changed)]
    assert "B passes 2 more inputs, i64[2] each" in [t.describe() for t in stack.types]
    assert "A passes 2 more inputs, i64[2] each" in [t.describe() for t in d.mirror().hunks[stack.index].types]


def test_a_shape_read_after_the_changed_ops_is_not_their_cause():
    """A batch of 2 against 3, every row kept by `h[h.sum(1) > -100]`: the mask's
    read comes after the Linear whose shapes changed; the input is the cause."""
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x).relu()
            return h[h.sum(1) > -100].sum()

    torch.manual_seed(0)
    m = Masked()

    def run(n: int):
        x = torch.randn(n, 4)
        with torchtrace.trace(m) as t:
            m(x)  # (one line for both passes)
        return t.graph

    d = torchtrace.diff(run(2), run(3))
    assert all(h.witness is None for h in d.changed_hunks if h.span[0] <= 2)
    assert d.why()[0].startswith("same ops, other shapes") and "input `x` f32[2,4] \u2192 f32[3,4]" in d.why()[0]
    assert "read shape" not in d.why()[0]


def test_an_output_torch_did_not_compute_is_paired_by_type():
    """A frozen first layer: BatchNorm's backward computes no grad_input
    (output_mask [False, True, True]) and returns two tensors, not three. Paired
    by position, its weight gradient f32[8] was "one more output" and the
    input gradient's f32[4,8] a "rank 2 → 1" change."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(4, 4)

    def step() -> torchtrace.Graph:
        m.zero_grad(set_to_none=True)
        with torchtrace.trace(m) as t:
            m(x).sum().backward()
        return t.graph

    a = step()
    m[0].requires_grad_(False)
    b = step()
    [h] = [h for h in torchtrace.diff(a, b).changed_hunks if h.module == "1"]
    assert [p.a.op for p in h.changed] == ["aten.native_batch_norm_backward.default"]
    assert [t.describe() for t in h.types] == ["A returns one more output, f32[4,8]"]


class TopK(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l, self.k = nn.Linear(4, 4), 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        kept = h[h[:, 0] > 0]  # a shape read
        return h.topk(self.k, dim=-1)[0].sum() + kept.view(int((h[:, 0] > 0).sum()), 2, 2).sum()


def test_an_argument_that_decided_new_shapes_is_named_and_sizes_that_follow_a_read_are_not():
    """`topk(self.k)` with k 2 -> 3, the same inputs: the why said only "size 2 -> 3
    in 2 values". Integer args of resized ops stay out where the inputs changed or
    a read of data explains the shapes (a view's sizes after boolean indexing)."""
    torch.manual_seed(0)
    m, x = TopK(), torch.randn(6, 4)
    a = zoo.record(m, x)
    m.k = 3
    b = zoo.record(m, x)
    [why] = torchtrace.diff(a, b).why()
    assert why.endswith("size 2 \u2192 3 in 2 values; aten.topk k=2 \u2192 3 (1 op)"), why
    m.k = 2
    [why] = torchtrace.diff(a, zoo.record(m, -x)).why()
    assert "read shape" in why and "aten.view size" not in why, why
