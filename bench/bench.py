"""torchtrace overhead benchmark (issue #7).

    python bench/bench.py                 # full run (all models, ~15-25 min on 2 cores)
    python bench/bench.py --quick         # mlp + gpt2-tiny, small budgets (~3 min)
    python bench/bench.py --models mlp,gpt2-tiny --sections overhead,ir --json out.json

Sections (``--sections``, default all):
  overhead    plain / empty TorchDispatchMode / torchtrace capture / end-to-end
              ``torchtrace.trace``, forward and forward+backward, interleaved
  ir          IR build (``Capture.finish_pass``), JSON encode, file save, bytes
              per op -- measured on the capture samples of ``overhead``
  memory      tensors alive after a trace block (weakrefs from a probe mode)
              and Python heap growth per trace (tracemalloc)
  steps       a training step under ``Recorder(every=K)``: non-sampled steps
              vs plain, plus the sampled step and the step that stores it
  posttrace   plain forward in a process that ran a trace vs never-traced
              processes (three child processes, samples interleaved by pipe)
  external    torchview / torchlens forward, in a child process (torchlens
              wraps torch functions for the rest of the process)
  render      DOT text, dot layout, Mermaid for GPT-2 with 2/12/48 layers,
              from bench/bench_render.py (owned by the renderer work)

Nothing here is part of the test suite. See bench/README.md.
"""
from __future__ import annotations

import argparse
import gc
import gzip
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
import weakref
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import harness  # noqa: E402
import models  # noqa: E402
from harness import Empty, Stats, Timed, Variant, count_ops, interleave, plan_reps  # noqa: E402

import torchtrace  # noqa: E402
from torchtrace.record.capture import Capture  # noqa: E402
from torchtrace.serialize import encode, save  # noqa: E402

_perf = time.perf_counter
SECTIONS = ("overhead", "ir", "memory", "steps", "posttrace", "external", "render")
QUICK_MODELS = ("mlp", "gpt2-tiny")

TARGETS = {
    "capture_vs_empty_fwd": {"mlp": 1.3, "gpt2-tiny": 1.3, "gpt2-small": 1.05},
    "capture_vs_empty_fwdbwd": 1.5,
    "ir_us_per_op": 10.0,
    "json_bytes_per_op": 500.0,
    "dot_layout_48_s": 5.0,
    "nonsampled_vs_plain": 1.02,
    "posttrace_vs_never": 1.02,
}


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
    (``finish_pass``), ``serialize.encode`` and ``torchtrace.save`` to a file."""

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
        self.c = self.out = None


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
            fn()
        return _perf() - t0


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
def bench_overhead(w: models.Workload, phase: str, opts: argparse.Namespace, tmpdir: str) -> Dict[str, Any]:
    fn = _phase_fn(w, phase)
    zero = (lambda: w.model.zero_grad(set_to_none=True)) if phase == "fwdbwd" else (lambda: None)
    zero()
    n_ops = count_ops(fn)
    zero()
    cap = CaptureVariant(w, fn, zero, tmpdir, opts.collect)
    variants: List[Variant] = [Timed("plain", fn, zero), EmptyVariant(fn, zero), cap, TraceVariant(w, fn, zero)]
    budget = opts.budget * (1.5 if phase == "fwdbwd" else 1.0)
    reps = plan_reps(variants, budget, opts.min_reps, opts.max_reps)
    deadline = _perf() + 3 * budget
    stats = interleave(variants, reps, warmup=opts.warmup, collect=opts.collect, deadline=deadline)
    # keep only the IR samples of the timed rounds (the first ones came from warm-up/probe)
    k = len(stats["capture"].samples)
    for s in (cap.build, cap.encode, cap.save):
        s.samples[:] = s.samples[-k:]
    plain, empty = stats["plain"].median, stats["empty"].median
    res: Dict[str, Any] = {"model": w.name, "phase": phase, "ops": n_ops, "reps": k,
                           "times": {name: s.as_dict() for name, s in stats.items()}}
    for name in ("empty", "capture", "trace"):
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
                 "json_bytes_per_op": (cap.bytes[-1] / nodes) if cap.bytes else None,
                 "gz_bytes_per_op": (cap.gz_bytes / nodes) if cap.gz_bytes else None}
    if nodes != n_ops:
        res["note"] = f"graph has {nodes} nodes, the empty mode saw {n_ops} ops"
    return res


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


def bench_steps(w: models.Workload, opts: argparse.Namespace, tmpdir: str,
                recorders: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A training step (zero_grad, forward, loss, backward, SGD step) under
    ``Recorder(store, every=K)``. Blocks rotate: B plain steps, then a
    Recorder block of B+2 steps (step 0 sampled, step 1 stores it at its root
    call, steps 2.. not sampled). Every step is one sample. ``recorders``
    (name -> Recorder class) adds blocks for other recorder implementations."""
    from torchtrace.store import Store

    model = w.model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    loss_fn = w.loss

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    store = Store(os.path.join(tmpdir, f"steps-{w.name}.db"))
    B = opts.step_block
    recs = {"rec": torchtrace.Recorder}
    recs.update(recorders or {})
    kinds = ["plain", *recs]
    st = {k: {"nonsampled": Stats(), "sampled": Stats(), "storing": Stats()} for k in recs}
    plain = Stats()
    for _ in range(opts.warmup):
        step()
    t_probe = _perf()
    step()
    t_probe = _perf() - t_probe
    if t_probe > 0.5:
        store.close()
        return {"model": w.name, "skipped": f"step takes {t_probe:.1f} s: hook costs per step are far below noise"}
    per_round = t_probe * len(kinds) * (B + 2)
    blocks = max(2, min(opts.max_reps, int(opts.budget * 2 / max(per_round, 1e-9))))
    blocks = min(blocks, max(4, opts.max_reps // B))
    for b in range(blocks + 1):  # round 0 is warm-up
        for j in range(len(kinds)):
            kind = kinds[(b + j) % len(kinds)]
            if kind == "plain":
                for _ in range(B):
                    if opts.collect:
                        gc.collect()
                    t0 = _perf()
                    step()
                    dt = _perf() - t0
                    if b:
                        plain.samples.append(dt)
            else:
                rec = recs[kind](store, every=B + 10)
                with rec:
                    for i in range(B + 2):
                        if opts.collect:
                            gc.collect()
                        t0 = _perf()
                        step()
                        dt = _perf() - t0
                        if b:
                            st[kind]["sampled" if i == 0 else "storing" if i == 1 else "nonsampled"].samples.append(dt)
                assert rec.recorded == 1, rec.recorded
    store.close()
    p = plain.median
    res: Dict[str, Any] = {"model": w.name, "blocks": blocks, "block": B, "plain": plain.as_dict()}
    for k, d in st.items():
        pre = "" if k == "rec" else f"{k}_"
        for part, stats in d.items():
            res[pre + part] = stats.as_dict()
            res[f"{pre}{part}_x_plain"] = stats.median / p
    return res


def bench_steps_child(model_name: str, opts: argparse.Namespace) -> Dict[str, Any]:
    """``bench_steps`` in a fresh process: what a training script sees, not a
    process that already ran every other section (that state showed up as
    several % on the MLP's 1.6 ms step)."""
    cmd = [sys.executable, __file__, "--child", f"steps:{model_name}", "--budget", str(opts.budget),
           "--max-reps", str(opts.max_reps), "--warmup", str(opts.warmup), "--step-block", str(opts.step_block),
           "--threads", str(opts.threads)] + ([] if opts.collect else ["--no-gc-collect"])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"model": model_name, "skipped": "error: " + (p.stderr or "")[-400:]}
    return json.loads(lines[-1])


# -- post-trace: three child processes driven by pipes ------------------------------------------
def child_posttrace(model_name: str, traced: bool) -> None:
    """Child: build the model; trace once if told; then answer 'run N' with N
    plain-forward sample times (JSON, one line) until 'quit'."""
    harness.setup_process(1)
    w = models.MODELS[model_name]()
    fn = w.forward
    for _ in range(20):
        fn()
    info: Dict[str, Any] = {"traced": traced}
    gc.collect()
    n0 = len(gc.get_objects())
    if traced:
        with torchtrace.trace(w.model) as t:
            out = fn()
        del out, t
        w.model.zero_grad(set_to_none=True)
        with torchtrace.trace(w.model) as t:
            w.loss().backward()
        del t
        w.model.zero_grad(set_to_none=True)
    else:  # the same passes, untraced
        fn()
        w.loss().backward()
        w.model.zero_grad(set_to_none=True)
    gc.collect()
    from torch.nn.modules import module as M
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    info.update(objects_delta=len(gc.get_objects()) - n0,
                global_hooks=len(M._global_forward_hooks) + len(M._global_forward_pre_hooks)
                + len(M._global_backward_hooks) + len(M._global_backward_pre_hooks),
                dispatch_modes=len(_get_current_dispatch_mode_stack()))
    harness.freeze_heap()
    for _ in range(10):
        fn()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        n = int(cmd[1])
        ts = []
        for _ in range(n):
            gc.collect()
            t0 = _perf()
            fn()
            ts.append(_perf() - t0)
        print(json.dumps(ts), flush=True)


def bench_posttrace(model_name: str, opts: argparse.Namespace) -> Dict[str, Any]:
    """Plain forward in a process after a finished trace (forward and
    forward+backward) vs two never-traced processes; the parent interleaves
    small batches of samples across the three, so machine drift hits all."""
    roles = [("never", False), ("traced", True), ("never2", False)]
    procs = {}
    try:
        for role, traced in roles:
            procs[role] = subprocess.Popen(
                [sys.executable, __file__, "--child", f"posttrace:{model_name}:{int(traced)}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        info = {role: json.loads(procs[role].stdout.readline()) for role, _ in roles}
        samples: Dict[str, List[float]] = {role: [] for role, _ in roles}
        # probe the forward time to size the batches
        procs["never"].stdin.write("run 5\n")
        t_fwd = sorted(json.loads(procs["never"].stdout.readline()))[2]
        batch = max(1, int(0.05 / max(t_fwd, 1e-9)))
        rounds = max(6, min(400, int(opts.budget / max(3 * batch * t_fwd, 1e-9))))
        for r in range(rounds):
            for k in range(3):
                role = roles[(r + k) % 3][0]
                procs[role].stdin.write(f"run {batch}\n")
                samples[role].extend(json.loads(procs[role].stdout.readline()))
    finally:
        for p in procs.values():
            try:
                p.stdin.write("quit\n")
                p.stdin.close()
            except Exception:
                pass
            p.wait(timeout=60)
    st = {role: Stats(samples[role]) for role in samples}
    never = st["never"].median
    return {"model": model_name, "rounds": rounds, "batch": batch,
            "times": {k: v.as_dict() for k, v in st.items()},
            "traced_x_never": st["traced"].median / never,
            "never2_x_never": st["never2"].median / never,
            "traced_x_never_both": st["traced"].median / ((never + st["never2"].median) / 2),
            "child_state": info}


# -- torchview / torchlens in a child ------------------------------------------------------------
def child_external(model_name: str, reps: int, budget: float) -> None:
    harness.setup_process(1)
    w = models.MODELS[model_name]()
    model, fn = w.model, w.forward
    n_ops = count_ops(fn)
    out: Dict[str, Any] = {"model": model_name, "ops": n_ops}
    try:
        import torchview
        out["torchview_version"] = getattr(torchview, "__version__", "?")
    except Exception as e:  # noqa: BLE001
        torchview = None
        out["torchview_error"] = f"{type(e).__name__}: {e}"
    try:
        import torchlens
        out["torchlens_version"] = getattr(torchlens, "__version__", "?")
    except Exception as e:  # noqa: BLE001
        torchlens = None
        out["torchlens_error"] = f"{type(e).__name__}: {e}"
    x = w.x
    variants: List[Variant] = [Timed("plain", fn), EmptyVariant(fn, lambda: None)]
    if torchview is not None:
        # the model's own (train) mode; depth=100 (full nesting, like ours): torchview 0.2.7's
        # default depth=3 raises KeyError on transformers' GPT-2. torchview runs under no_grad.
        variants.append(Timed("torchview", lambda: torchview.draw_graph(model, input_data=x, mode="train",
                                                                        depth=100)))
    harness.freeze_heap()
    n = plan_reps(variants, budget, 3, reps)
    stats = interleave(variants, n, warmup=2, deadline=_perf() + 3 * budget)
    if torchlens is not None:
        # torchlens wraps torch functions on first use and leaves them wrapped,
        # so it runs after the interleaved block (its ratios use that block's plain/empty)
        import warnings
        warnings.filterwarnings("ignore")
        tl = Timed("torchlens", lambda: torchlens.trace(model, x))
        try:
            stats.update(interleave([tl], max(3, min(reps, n // 4)), warmup=1,
                                    deadline=_perf() + 2 * budget))
        except Exception as e:  # noqa: BLE001
            out["torchlens_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    out["times"] = {k: v.as_dict() for k, v in stats.items()}
    print(json.dumps(out), flush=True)


def bench_external(model_name: str, opts: argparse.Namespace) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", f"external:{model_name}:{opts.max_reps}:{opts.budget}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"model": model_name, "error": (p.stderr or "")[-800:]}
    res = json.loads(lines[-1])
    t = res["times"]
    plain, empty = t["plain"]["median_s"], t["empty"]["median_s"]
    for tool in ("torchview", "torchlens"):
        if tool in t:
            res[f"{tool}_x_plain"] = t[tool]["median_s"] / plain
            res[f"{tool}_x_empty"] = t[tool]["median_s"] / empty
    return res


# -- render rows: delegated to bench/bench_render.py ----------------------------------------------
_RENDER_COLS = ("model", "view", "ops", "boxes", "edges", "view_ms", "dot_text_ms", "dot_layout_svg_ms",
                "mermaid_ms", "mermaid_chars")


def bench_render_rows(opts: argparse.Namespace) -> Dict[str, Any]:
    """bench/bench_render.py belongs to the renderer work: if it exposes
    ``measure(layers=..., reps=...) -> list[dict]`` that is used; otherwise its
    ``main(argv)`` runs with stdout captured and its table is parsed."""
    import contextlib
    import io

    layers = (2, 12) if opts.quick else (2, 12, 48)
    reps = 1 if opts.quick else 3
    try:
        import bench_render  # type: ignore
    except Exception as e:  # noqa: BLE001
        return {"status": "pending", "why": f"bench/bench_render.py not importable ({type(e).__name__}: {e})"}
    measure = getattr(bench_render, "measure", None)
    if callable(measure):
        params = inspect.signature(measure).parameters
        kw = {k: v for k, v in (("layers", layers), ("reps", reps)) if k in params}
        return {"status": "ok", "via": "bench_render.measure", "rows": list(measure(**kw))}
    buf = io.StringIO()
    argv = ["--reps", str(reps), "--layers", *map(str, layers)]
    try:
        with contextlib.redirect_stdout(buf):
            bench_render.main(argv)
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "why": f"bench_render.main: {type(e).__name__}: {e}", "raw": buf.getvalue()}
    rows, header_seen = [], False
    for ln in buf.getvalue().splitlines():
        if ln.startswith("---"):
            header_seen = True
            continue
        parts = ln.split()
        if not header_seen or len(parts) != len(_RENDER_COLS):
            continue
        row: Dict[str, Any] = dict(zip(_RENDER_COLS, parts))
        for k in _RENDER_COLS[2:]:
            row[k] = int(row[k]) if k in ("ops", "boxes", "edges", "mermaid_chars") else float(row[k])
        row["layers"] = int(row["model"].rsplit("-", 1)[-1])
        rows.append(row)
    if not rows:
        return {"status": "error", "why": "could not parse bench_render output", "raw": buf.getvalue()}
    return {"status": "ok", "via": f"bench_render.main({' '.join(argv)})", "rows": rows, "raw": buf.getvalue()}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _f(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return fmt.format(x)


def _ms(d: Dict[str, float]) -> str:
    return f"{d['median_s'] * 1e3:.3g} ± {d['iqr_s'] * 1e3:.2g}"


def report(results: Dict[str, Any]) -> str:
    L: List[str] = []
    env = results["env"]
    L.append(f"torch {env['torch']}, python {env['python']}, {env['machine']}, threads={env['threads']}, "
             f"gc.collect per sample={env['collect']}; times are medians ± IQR (ms)\n")
    ov = results.get("overhead", [])
    ext = {e["model"]: e for e in results.get("external", [])}
    if ov:
        L.append("### Capture overhead (train mode, grad on)\n")
        L.append("| model | pass | ops | plain ms | empty mode ×plain | capture ×plain | **capture ×empty** "
                 "| trace() e2e ×plain | empty µs/op | capture µs/op (vs plain) | capture µs/op (vs empty) "
                 "| torchview ×empty | torchlens ×empty |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in ov:
            e = ext.get(r["model"], {}) if r["phase"] == "fwd" else {}
            tv = _f(e.get("torchview_x_empty"), "{:.1f}") if r["phase"] == "fwd" else "—"
            tl = _f(e.get("torchlens_x_empty"), "{:.0f}") if r["phase"] == "fwd" else "—"
            L.append(f"| {r['model']} | {'fwd' if r['phase'] == 'fwd' else 'fwd+bwd'} | {r['ops']} "
                     f"| {_ms(r['times']['plain'])} | {r['empty_x_plain']:.2f} | {r['capture_x_plain']:.2f} "
                     f"| **{r['capture_x_empty']:.2f}** | {r['trace_x_plain']:.2f} "
                     f"| +{r['empty_us_per_op_vs_plain']:.1f} | +{r['capture_us_per_op_vs_plain']:.1f} "
                     f"| +{r['capture_us_per_op_vs_empty']:.1f} | {tv} | {tl} |")
        L.append("")
        L.append("### IR build and JSON (per recorded op)\n")
        L.append("| model | pass | nodes | build µs/op | encode µs/op | **build+encode µs/op** | file save µs/op "
                 "| **JSON B/op** | gzip B/op |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in ov:
            ir = r["ir"]
            L.append(f"| {r['model']} | {'fwd' if r['phase'] == 'fwd' else 'fwd+bwd'} | {ir['nodes']} "
                     f"| {ir['build_us_per_op']:.1f} | {ir['encode_us_per_op']:.1f} "
                     f"| **{ir['build_encode_us_per_op']:.1f}** | {ir['save_us_per_op']:.1f} "
                     f"| **{_f(ir['json_bytes_per_op'], '{:.0f}')}** | {_f(ir['gz_bytes_per_op'], '{:.0f}')} |")
        L.append("")
    if ext:
        L.append("### torchview / torchlens (forward, child process)\n")
        L.append("| model | plain ms | empty ms | torchview ms (×plain, ×empty) | torchlens ms (×plain, ×empty) |")
        L.append("|---|---:|---:|---:|---:|")
        for m, e in ext.items():
            if "error" in e:
                L.append(f"| {m} | error: {e['error'][-120:]!r} | | | |")
                continue
            t = e["times"]
            cells = []
            for tool in ("torchview", "torchlens"):
                if tool in t:
                    cells.append(f"{_ms(t[tool])} ({e[f'{tool}_x_plain']:.1f}, {e[f'{tool}_x_empty']:.1f})")
                else:
                    cells.append("n/a (" + e.get(f"{tool}_error", "not installed")[:60] + ")")
            L.append(f"| {m} | {_ms(t['plain'])} | {_ms(t['empty'])} | {cells[0]} | {cells[1]} |")
        L.append("")
    st = results.get("steps", [])
    if st:
        L.append("### Training step under Recorder(every=K)\n")
        L.append("| model | plain step ms | **non-sampled ×plain** | sampled step ×plain | "
                 "next step (build + store) ×plain | samples |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for r in st:
            L.append(f"| {r['model']} | {_ms(r['plain'])} | **{r['nonsampled_x_plain']:.3f}** "
                     f"| {r['sampled_x_plain']:.2f} | {r['storing_x_plain']:.2f} | {r['nonsampled']['n']} |")
        L.append("")
    pt = results.get("posttrace", [])
    if pt:
        L.append("### Plain forward after a trace ended (three processes, interleaved)\n")
        L.append("| model | never-traced ms | after-trace ms | **after ×never** | 2nd never-traced ×never "
                 "| objects left | hooks/modes left |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in pt:
            cs = r["child_state"]["traced"]
            L.append(f"| {r['model']} | {_ms(r['times']['never'])} | {_ms(r['times']['traced'])} "
                     f"| **{r['traced_x_never_both']:.3f}** | {r['never2_x_never']:.3f} "
                     f"| {cs['objects_delta'] - r['child_state']['never']['objects_delta']:+d} "
                     f"| {cs['global_hooks']}/{cs['dispatch_modes']} |")
        L.append("")
    mem = results.get("memory", [])
    if mem:
        L.append("### Memory after a trace block (graph kept, outputs dropped)\n")
        L.append("| model | pass | tensors produced | alive untraced | alive traced | **retained** | "
                 "heap growth / trace (/ empty-mode pass) |")
        L.append("|---|---|---:|---:|---:|---:|---:|")
        for r in mem:
            for ph in ("fwd", "fwdbwd"):
                d = r[ph]
                heap = "n/a (slow model)"
                if "heap_growth_bytes_per_trace" in r:
                    heap = (f"{r['heap_growth_bytes_per_trace']:.0f} B "
                            f"({r['heap_growth_bytes_per_empty_pass']:.0f} B) over {r['heap_traces']}")
                L.append(f"| {r['model']} | {ph} | {d['produced']} | {d['alive_untraced']} | {d['alive_traced']} "
                         f"| **{d['retained_tensors']} ({d['retained_bytes']} B)** | {heap} |")
        L.append("")
    rd = results.get("render")
    if rd is not None:
        L.append("### Render (bench/bench_render.py)\n")
        if rd.get("status") != "ok":
            L.append(f"{rd.get('status')}: {rd.get('why')}\n")
        else:
            rows = rd["rows"]
            L.append(f"via `{rd.get('via')}`\n")
            keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k != "layers"]
            L.append("| " + " | ".join(keys) + " |")
            L.append("|" + "---|" * len(keys))
            for row in rows:
                L.append("| " + " | ".join(_f(row.get(k), "{:.3g}") if isinstance(row.get(k), float)
                                           else str(row.get(k, "")) for k in keys) + " |")
            L.append("")
    tg = results.get("targets")
    if tg:
        L.append("### Targets (issue #7)\n")
        L.append("| target | measured | limit | met |")
        L.append("|---|---:|---:|---|")
        for t in tg:
            L.append(f"| {t['what']} | {_f(t['value'], '{:.3g}')} | {t['limit']} "
                     f"| {'yes' if t['met'] else ('n/a' if t['met'] is None else '**no**')} |")
        L.append("")
    return "\n".join(L)


def check_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    out = []

    def add(what: str, value: Optional[float], limit: float, le: bool = True) -> None:
        met = None if value is None else (value <= limit if le else value < limit)
        out.append({"what": what, "value": value, "limit": limit, "met": met})

    for r in results.get("overhead", []):
        if r["phase"] == "fwd" and r["model"] in TARGETS["capture_vs_empty_fwd"]:
            add(f"capture ×empty, {r['model']} fwd", r["capture_x_empty"],
                TARGETS["capture_vs_empty_fwd"][r["model"]])
        if r["phase"] == "fwdbwd":
            add(f"capture ×empty, {r['model']} fwd+bwd", r["capture_x_empty"], TARGETS["capture_vs_empty_fwdbwd"])
    for r in results.get("overhead", []):
        tag = f"{r['model']} {'fwd' if r['phase'] == 'fwd' else 'fwd+bwd'}"
        add(f"IR build+encode µs/op, {tag}", r["ir"]["build_encode_us_per_op"], TARGETS["ir_us_per_op"])
        add(f"JSON bytes/op, {tag}", r["ir"]["json_bytes_per_op"], TARGETS["json_bytes_per_op"])
    rd = results.get("render")
    if rd is not None:
        v = None
        for row in rd.get("rows", []) if rd.get("status") == "ok" else []:
            if row.get("layers") == 48 and row.get("view") == "default":
                v = row.get("dot_layout_svg_ms", float("nan")) / 1e3
        add("dot layout, 48-layer GPT-2 default view (s)", v, TARGETS["dot_layout_48_s"], le=False)
    for r in results.get("steps", []):
        add(f"non-sampled step ×plain, {r['model']}", r["nonsampled_x_plain"], TARGETS["nonsampled_vs_plain"])
    for r in results.get("posttrace", []):
        add(f"plain fwd after trace ×never, {r['model']}", r["traced_x_never_both"], TARGETS["posttrace_vs_never"])
    for r in results.get("memory", []):
        for ph in ("fwd", "fwdbwd"):
            add(f"tensors retained after block, {r['model']} {ph}", r[ph]["retained_tensors"], 0)
    return out


# ---------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="mlp + gpt2-tiny, small budgets")
    ap.add_argument("--models", help=f"comma list of {','.join(models.MODELS)}")
    ap.add_argument("--sections", help=f"comma list of {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--json", help="write every number (raw samples' stats) here")
    ap.add_argument("--markdown", help="write the tables here too")
    ap.add_argument("--budget", type=float, help="seconds of samples per model and pass (default 20, quick 4)")
    ap.add_argument("--min-reps", type=int, default=None)
    ap.add_argument("--max-reps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--step-block", type=int, default=16, help="non-sampled steps per Recorder block")
    ap.add_argument("--heap-traces", type=int, default=200, help="passes for the heap-growth check")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-gc-collect", dest="collect", action="store_false",
                    help="do not gc.collect() before each sample")
    ap.add_argument("--report-from", metavar="JSON", help="print the tables of a saved --json run and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.report_from:
        with open(opts.report_from, encoding="utf-8") as f:
            saved = json.load(f)
        for row in (saved.get("render") or {}).get("rows", []):
            for k in ("ops", "boxes", "edges", "mermaid_chars"):
                if isinstance(row.get(k), float):
                    row[k] = int(row[k])
        saved["targets"] = check_targets(saved)
        print(report(saved))
        return 0

    if opts.budget is None:
        opts.budget = 4.0 if opts.quick else 20.0
    if opts.min_reps is None:
        opts.min_reps = 5 if opts.quick else 9
    if opts.max_reps is None:
        opts.max_reps = 40 if opts.quick else 300

    if opts.child:
        kind, *rest = opts.child.split(":")
        if kind == "posttrace":
            child_posttrace(rest[0], bool(int(rest[1])))
        elif kind == "external":
            child_external(rest[0], int(rest[1]), float(rest[2]))
        elif kind == "steps":
            harness.setup_process(opts.threads)
            w = models.MODELS[rest[0]]()
            harness.freeze_heap()
            with tempfile.TemporaryDirectory(prefix="torchtrace-bench-") as tmp:
                print(json.dumps(bench_steps(w, opts, tmp)), flush=True)
        return 0
    names = opts.models.split(",") if opts.models else list(QUICK_MODELS if opts.quick else models.MODELS)
    for n in names:
        if n not in models.MODELS:
            ap.error(f"unknown model {n!r}; choose from {', '.join(models.MODELS)}")
    sections = opts.sections.split(",") if opts.sections else list(SECTIONS)
    for s in sections:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    if "ir" in sections and "overhead" not in sections:
        sections.append("overhead")  # IR numbers come from the capture samples

    harness.setup_process(opts.threads)
    results: Dict[str, Any] = {"env": {"torch": torch.__version__, "python": platform.python_version(),
                                       "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                                       "threads": opts.threads, "collect": opts.collect,
                                       "quick": opts.quick, "models": names, "sections": sections}}
    t_start = _perf()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="torchtrace-bench-") as tmpdir:
        built = {}
        for n in names:
            log(f"[build] {n}")
            built[n] = models.MODELS[n]()
        harness.freeze_heap()
        if "overhead" in sections:
            results["overhead"] = []
            for n in names:
                for phase in ("fwd", "fwdbwd"):
                    log(f"[overhead] {n} {phase}")
                    r = bench_overhead(built[n], phase, opts, tmpdir)
                    results["overhead"].append(r)
                    log(f"    ops={r['ops']} reps={r['reps']} capture x{r['capture_x_empty']:.2f} empty, "
                        f"x{r['capture_x_plain']:.2f} plain, +{r['capture_us_per_op_vs_empty']:.1f} us/op; "
                        f"IR {r['ir']['build_encode_us_per_op']:.1f} us/op, "
                        f"{_f(r['ir']['json_bytes_per_op'], '{:.0f}')} B/op")
        if "memory" in sections:
            results["memory"] = []
            for n in names:
                if n == "gpt2-small" and opts.quick:
                    continue
                log(f"[memory] {n}")
                results["memory"].append(bench_memory(built[n], opts))
        if "steps" in sections:
            results["steps"] = []
            for n in names:
                log(f"[steps] {n}")
                r = bench_steps_child(n, opts)
                if "skipped" in r:
                    log(f"    skipped: {r['skipped']}")
                    continue
                results["steps"].append(r)
                log(f"    non-sampled x{r['nonsampled_x_plain']:.3f} plain")
        if "posttrace" in sections:
            results["posttrace"] = []
            for n in names:
                if n in ("gpt2-small", "resnet18"):
                    continue  # compute-bound: a 2% effect would drown in kernel time
                log(f"[posttrace] {n}")
                r = bench_posttrace(n, opts)
                results["posttrace"].append(r)
                log(f"    after-trace x{r['traced_x_never_both']:.3f} never")
        if "external" in sections:
            results["external"] = []
            for n in names:
                log(f"[external] {n}")
                results["external"].append(bench_external(n, opts))
        if "render" in sections:
            log("[render]")
            results["render"] = bench_render_rows(opts)
    results["targets"] = check_targets(results)
    results["env"]["wall_s"] = _perf() - t_start
    text = report(results)
    print(text)
    if opts.markdown:
        with open(opts.markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
