"""Inputs a pass was given but read with no op (a 2026-11-28 audit of diff
explanations): ``meta.unread_inputs``, and a diff that does not take them for
inputs only the other pass had."""
from __future__ import annotations

import json

import jsonschema
import torch
import torch.nn as nn

import torchtrace
from torchtrace.ir import Graph

from test_ir import SCHEMA


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.use_mask = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.use_mask:
            h = h.masked_fill(mask, 0.0)
        return h


class Memo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.cache: dict = {}

    def forward(self, x: torch.Tensor, key: str) -> torch.Tensor:
        if key not in self.cache:
            self.cache[key] = self.a(x).detach()
        return self.cache[key] * 2


def _traced(m: nn.Module, *args) -> Graph:
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(*args)
    return t.graph


def test_an_input_a_flag_left_unread_is_in_meta_and_no_input_change(tmp_path):
    """`if self.use_mask:` off in B: B read `mask` with no op, and the diff said
    "input `mask` only in A (b8[2,4])" where both passes were given it."""
    torch.manual_seed(0)
    m, x, mask = Masked(), torch.randn(2, 4), torch.rand(2, 4) > 0.5
    a = _traced(m, x, mask)
    m.use_mask = False
    b = _traced(m, x, mask)
    assert "unread_inputs" not in a.meta
    assert b.meta["unread_inputs"] == [{"name": "mask", "shape": [2, 4], "dtype": "bool"}]
    torchtrace.save(b, tmp_path / "b.json")
    loaded = torchtrace.load(tmp_path / "b.json")
    assert loaded == b
    jsonschema.validate(json.loads((tmp_path / "b.json").read_text()), json.loads(SCHEMA.read_text()))
    for d in (torchtrace.diff(a, b), torchtrace.diff(b, a), torchtrace.diff(a, loaded)):
        assert d.inputs == () or all(c.name != "mask" for c in d.inputs), d.inputs
        [why] = d.why()
        assert "mask" not in why and "decided by Python state" in why, why


def test_a_cached_result_that_reads_no_input_is_put_down_to_python_state():
    """The second call hits the module's cache and reads `x` with no op: it was
    "input `x` only in A (f32[2,4]) (ops computed from it)"."""
    torch.manual_seed(0)
    m, x = Memo(), torch.randn(2, 4)
    a, b = _traced(m, x, "k"), _traced(m, x, "k")
    assert b.meta["unread_inputs"] == [{"name": "x", "shape": [2, 4], "dtype": "float32"}]
    [why] = torchtrace.diff(a, b).why()
    assert "input `x`" not in why and "decided by Python state" in why, why


def test_an_input_given_to_one_pass_only_is_still_said():
    """What the rule is for: `mask` passed to A only (B passes None)."""
    class Optional_(nn.Module):
        def forward(self, x, mask=None):
            return x if mask is None else x.masked_fill(mask, 0.0)

    x, mask = torch.randn(2, 4), torch.rand(2, 4) > 0.5
    m = Optional_()
    [why] = torchtrace.diff(_traced(m, x, mask), _traced(m, x)).why()
    assert "input `mask` only in A (b8[2,4])" in why, why
