"""torchtrace left on for long (a 2026-11-28 audit): what a trace or a Recorder
keeps after many models and steps."""
from __future__ import annotations

import functools
import gc
import weakref

import torch
import torch.nn as nn

import torchtrace


def _hooked(m: nn.Module) -> nn.Module:
    """A forward set on the instance, as accelerate's `add_hook_to_module` does."""
    old = m.forward

    def new_forward(module, *args, **kwargs):
        return old(*args, **kwargs)
    m.forward = functools.update_wrapper(functools.partial(new_forward, m), old)
    return m


def test_a_model_whose_forward_is_set_on_the_instance_is_let_go_after_its_trace():
    """The root call's signature was cached by its forward, held strongly: a
    `functools.partial` holding the model kept it, its parameters and gradients
    alive for good (1 MB a model in the audit's sweep)."""
    refs = []
    for _ in range(5):
        m = _hooked(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)))
        x = torch.randn(2, 8)
        with torchtrace.trace(m) as t:
            m(x).sum().backward()
        assert [v.role for v in t.graph.values if v.shape == (2, 8)][0] == "input"
        refs.append(weakref.ref(m))
        del t, m
    gc.collect()
    assert [r() for r in refs] == [None] * 5


def test_a_recorder_over_models_built_anew_each_step_keeps_no_table_growing(tmp_path):
    """Each step's new model left an entry (a dead weak reference) in two tables
    of the Recorder for as long as it was open: 0.8 a step in the audit."""
    with torchtrace.Recorder(tmp_path / "t.db", every=1) as rec:
        for i in range(200):
            rec.step(i)
            m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
            m(torch.randn(2, 4)).sum().backward()
            del m
            if i % 50 == 0:
                gc.collect()
        sizes = (len(rec._roots), len(rec.capture._roots_seen))
    assert max(sizes) <= 64, sizes
    assert rec.recorded == 200
