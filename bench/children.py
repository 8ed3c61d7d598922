"""Sections of bench.py that run in child processes (training steps under a
Recorder, plain speed after a trace, torchview/torchlens) and the render rows
from bench_render.py."""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "bench.py")  # the child processes run bench.py --child ...
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import harness  # noqa: E402
import models  # noqa: E402
from harness import Stats, Timed, Variant, count_ops, interleave, plan_reps  # noqa: E402
from measure import EmptyVariant  # noqa: E402

import torchtrace  # noqa: E402

_perf = time.perf_counter

def _sample(step: Any, collect: bool) -> float:
    if collect:
        gc.collect()
    t0 = _perf()
    step()
    return _perf() - t0


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
                    dt = _sample(step, opts.collect)
                    if b:
                        plain.samples.append(dt)
            else:
                rec = recs[kind](store, every=B + 10)
                with rec:
                    for i in range(B + 2):
                        dt = _sample(step, opts.collect)
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
    cmd = [sys.executable, BENCH, "--child", f"steps:{model_name}", "--budget", str(opts.budget),
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
                [sys.executable, BENCH, "--child", f"posttrace:{model_name}:{int(traced)}"],
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
    cmd = [sys.executable, BENCH, "--child", f"external:{model_name}:{opts.max_reps}:{opts.budget}"]
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


