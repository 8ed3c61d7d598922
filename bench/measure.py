"""Timed sections of bench.py that run in this process: overhead (plain /
empty mode / capture / trace, with the IR build) and memory after a trace."""
from __future__ import annotations

import argparse
import gc
import gzip
import os
import sys
import time
import tracemalloc
import weakref
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import models  # noqa: E402
from harness import (START_STATES, Empty, Stats, Timed, Variant, count_ops, interleave,  # noqa: E402
                     plan_reps, start_state)

import torchtrace  # noqa: E402
from torchtrace.record.capture import Capture  # noqa: E402
from torchtrace.serialize import encode, load, save  # noqa: E402

_perf = time.perf_counter

# ---------------------------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------------------------
def _phase_fn(w: models.Workload, phase: str) -> Callable[[], Any]:
    if phase == "fwd":
        return w.forward
    loss = w.loss

    def fwdbwd() -> None:
        loss().backward()

    return fwdbwd


class CaptureVariant(Variant):
    """``Capture(model)`` made untimed; timed: ``start()``, the pass, ``stop()``.
    After each sample (untimed for the ratio, timed on its own): the IR build
    (``finish_pass``), ``serialize.encode`` and ``torchtrace.save`` to a file.

    The next sample's ``Capture`` is made right after that, not just before the
    sample: making one walks the model's modules and parameters, which warms
    the caches the pass then reads (two same-process comparisons, GPT-2 tiny
    forward: ×empty 1.23 and 1.24 with the Capture made just before the clock,
    1.27 and 1.30 made earlier). The start-state step (``harness.start_state``)
    runs between the two, so every variant's sample starts from the same state."""

    name = "capture"

    def __init__(self, w: models.Workload, fn: Callable[[], Any], zero: Callable[[], None], tmpdir: str,
                 collect: bool) -> None:
        self.w, self.fn, self.zero, self.collect = w, fn, zero, collect
        self.path = os.path.join(tmpdir, f"{w.name}.json")
        self.build, self.encode, self.save = Stats(), Stats(), Stats()
        self.bytes: List[int] = []
        self.nodes: List[int] = []
        self.gz_bytes: Optional[int] = None
        self.c: Optional[Capture] = None
        self.out: Any = None

    def before(self) -> None:
        self.zero()
        if self.c is None:
            self.c = Capture(self.w.model)

    def run(self) -> float:
        c, fn = self.c, self.fn
        assert c is not None
        t0 = _perf()
        c.start()
        try:
            out = fn()
        finally:
            c.stop()
        t = _perf() - t0
        self.out = out  # alive during the build, as in `with trace(m): out = m(x)`
        return t

    def after(self) -> None:
        c = self.c
        assert c is not None
        if self.collect:
            gc.collect()
        t0 = _perf()
        g = c.finish_pass()
        t1 = _perf()
        data = encode(g)
        t2 = _perf()
        save(g, self.path)
        t3 = _perf()
        self.build.samples.append(t1 - t0)
        self.encode.samples.append(t2 - t1)
        self.save.samples.append(t3 - t2)
        self.bytes.append(len(data))
        self.nodes.append(len(g.nodes))
        if self.gz_bytes is None:
            self.gz_bytes = len(gzip.compress(data, mtime=0))
        self.out = None
        self.c = Capture(self.w.model)


class ReusedVariant(CaptureVariant):
    """One ``Capture`` for every sample, as ``Recorder`` keeps one for a
    training loop: timed as ``capture``; after each sample the pass is built
    (untimed) and the Capture starts its next pass."""

    name = "reused"

    def __init__(self, w: models.Workload, fn: Callable[[], Any], zero: Callable[[], None], tmpdir: str) -> None:
        super().__init__(w, fn, zero, tmpdir, collect=False)
        self.c = Capture(w.model)

    def after(self) -> None:
        assert self.c is not None
        self.c.finish_pass()
        self.out = None


class TraceVariant(Variant):
    """End to end: ``with torchtrace.trace(model): <pass>`` (IR build included)."""

    name = "trace"

    def __init__(self, w: models.Workload, fn: Callable[[], Any], zero: Callable[[], None]) -> None:
        self.w, self.fn, self.zero = w, fn, zero
        self.t: Any = None

    def before(self) -> None:
        self.zero()

    def run(self) -> float:
        fn, model = self.fn, self.w.model
        t0 = _perf()
        with torchtrace.trace(model) as t:
            out = fn()
        dt = _perf() - t0
        del out
        self.t = t
        return dt

    def after(self) -> None:
        self.t = None


class EmptyVariant(Variant):
    name = "empty"

    def __init__(self, fn: Callable[[], Any], zero: Callable[[], None]) -> None:
        self.fn, self.zero = fn, zero

    def before(self) -> None:
        self.zero()

    def run(self) -> float:
        fn = self.fn
        t0 = _perf()
        with Empty():
            self.out = fn()
        return _perf() - t0

    def after(self) -> None:
        self.out = None


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
def bench_overhead(w: models.Workload, phase: str, opts: argparse.Namespace, tmpdir: str,
                   state: Optional[str] = None, budget: Optional[float] = None) -> Dict[str, Any]:
    """plain / empty / capture / reused / trace() interleaved; every sample
    starts from ``state`` (``opts.start_state`` unless given, see
    ``harness.start_state``)."""
    state = state or opts.start_state
    fn = _phase_fn(w, phase)
    zero = (lambda: w.model.zero_grad(set_to_none=True)) if phase == "fwdbwd" else (lambda: None)
    zero()
    n_ops = count_ops(fn)
    zero()
    cap = CaptureVariant(w, fn, zero, tmpdir, opts.collect)
    variants: List[Variant] = [Timed("plain", fn, zero), EmptyVariant(fn, zero), cap,
                               ReusedVariant(w, fn, zero, tmpdir), TraceVariant(w, fn, zero)]
    budget = (budget or opts.budget) * (1.5 if phase == "fwdbwd" else 1.0)
    prepare = start_state(state, fn)
    reps = plan_reps(variants, budget, opts.min_reps, opts.max_reps, prepare)
    deadline = _perf() + 3 * budget
    stats = interleave(variants, reps, warmup=opts.warmup, collect=opts.collect, deadline=deadline, prepare=prepare)
    # keep only the IR samples of the timed rounds (the first ones came from warm-up/probe)
    k = len(stats["capture"].samples)
    for s in (cap.build, cap.encode, cap.save):
        s.samples[:] = s.samples[-k:]
    # loading the last saved file: timed apart, after the rounds (between samples, the
    # objects a load makes and frees would set the state of the next sample)
    loads = Stats()
    for _ in range(max(5, min(k, 30))):
        t0 = _perf()
        load(cap.path)
        loads.samples.append(_perf() - t0)
    plain, empty = stats["plain"].median, stats["empty"].median
    res: Dict[str, Any] = {"model": w.name, "phase": phase, "ops": n_ops, "reps": k, "start_state": state,
                           "times": {name: s.as_dict() for name, s in stats.items()}}
    for name in ("empty", "capture", "reused", "trace"):
        m = stats[name].median
        res[f"{name}_x_plain"] = m / plain
        res[f"{name}_us_per_op_vs_plain"] = (m - plain) / n_ops * 1e6
        if name != "empty":
            res[f"{name}_x_empty"] = m / empty
            res[f"{name}_us_per_op_vs_empty"] = (m - empty) / n_ops * 1e6
    res["plain_us_per_op"] = plain / n_ops * 1e6
    nodes = cap.nodes[-1] if cap.nodes else n_ops
    res["ir"] = {"nodes": nodes, "build": cap.build.as_dict(), "encode": cap.encode.as_dict(),
                 "save": cap.save.as_dict(), "json_bytes": cap.bytes[-1] if cap.bytes else None,
                 "gz_bytes": cap.gz_bytes,
                 "build_us_per_op": cap.build.median / nodes * 1e6,
                 "encode_us_per_op": cap.encode.median / nodes * 1e6,
                 "build_encode_us_per_op": (cap.build.median + cap.encode.median) / nodes * 1e6,
                 "save_us_per_op": cap.save.median / nodes * 1e6,
                 "load_us_per_op": loads.median / nodes * 1e6,
                 "json_bytes_per_op": (cap.bytes[-1] / nodes) if cap.bytes else None,
                 "gz_bytes_per_op": (cap.gz_bytes / nodes) if cap.gz_bytes else None}
    if nodes != n_ops:
        res["note"] = f"graph has {nodes} nodes, the empty mode saw {n_ops} ops"
    return res


def bench_start_states(w: models.Workload, phase: str, opts: argparse.Namespace, tmpdir: str) -> Dict[str, Any]:
    """The same comparison from each start state in turn (half the budget each):
    how much the ratios depend on what ran just before a sample."""
    rows = {s: bench_overhead(w, phase, opts, tmpdir, state=s, budget=opts.budget / 2) for s in START_STATES}
    keys = ("capture_x_empty", "reused_x_empty", "empty_x_plain")
    return {"model": w.name, "phase": phase,
            "states": {s: {"plain": r["times"]["plain"], "reps": r["reps"], **{k: r[k] for k in keys}}
                       for s, r in rows.items()}}


class Probe(TorchDispatchMode):
    """Weak references to every tensor an op returns (entered outside the trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: List[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor):
                self.refs.append((weakref.ref(o), o.untyped_storage().nbytes(), str(func)))
        return out


def _alive(refs: List[tuple], keep: set) -> List[tuple]:
    out = []
    for r, nbytes, op in refs:
        t = r()
        if t is not None and id(t) not in keep:
            out.append((nbytes, op))
    return out


def bench_memory(w: models.Workload, opts: argparse.Namespace) -> Dict[str, Any]:
    """Tensors produced inside a trace block that are still alive after it
    (the graph kept, the outputs dropped), against the same pass untraced."""
    model = w.model
    keep = {id(t) for t in list(model.parameters()) + list(model.buffers())}
    res: Dict[str, Any] = {"model": w.name}
    for phase in ("fwd", "fwdbwd"):
        fn = _phase_fn(w, phase)
        counts = {}
        for traced in (False, True):
            model.zero_grad(set_to_none=True)
            gc.collect()
            p = Probe()
            with p:
                if traced:
                    with torchtrace.trace(model) as t:
                        out = fn()
                else:
                    out = fn()
            del out
            model.zero_grad(set_to_none=True)
            gc.collect()
            alive = _alive(p.refs, keep)
            counts[traced] = (len(alive), sum(b for b, _ in alive), sorted({op for _, op in alive})[:5],
                              len(p.refs))
            if traced:
                graph_nodes = len(t.graph.nodes)  # the graph itself stays alive during the check
        res[phase] = {"produced": counts[True][3], "alive_untraced": counts[False][0],
                      "alive_traced": counts[True][0], "retained_tensors": counts[True][0] - counts[False][0],
                      "retained_bytes": counts[True][1] - counts[False][1], "alive_ops": counts[True][2],
                      "graph_nodes": graph_nodes}
    # Python heap growth per pass after a long warm-up: trace blocks (graph dropped)
    # against the same passes under the empty mode (torch's own caches grow a little too)
    t0 = _perf()
    w.forward()
    if _perf() - t0 < 0.02:
        def traced() -> None:
            with torchtrace.trace(model):
                w.forward()

        def empty() -> None:
            with Empty():
                w.forward()

        res["heap_growth_bytes_per_trace"] = _heap_growth(traced, 50, opts.heap_traces)
        res["heap_growth_bytes_per_empty_pass"] = _heap_growth(empty, 50, opts.heap_traces)
        res["heap_traces"] = opts.heap_traces
    return res


def _heap_growth(fn: Callable[[], None], warm: int, n: int) -> float:
    for _ in range(warm):
        fn()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            fn()
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - base) / n
    finally:
        tracemalloc.stop()


