"""torchtrace overhead benchmark (issue #7).

    python bench/bench.py                 # full run (all models, ~14 min on 2 cores)
    python bench/bench.py --quick         # mlp + gpt2-tiny, small budgets (~3 min)
    python bench/bench.py --models mlp,gpt2-tiny --sections overhead,ir --json out.json

Sections (``--sections``, default all):
  overhead    plain / empty TorchDispatchMode / torchtrace capture / end-to-end
              ``torchtrace.trace``, forward and forward+backward, interleaved
  ir          IR build (``Capture.finish_pass``), JSON encode, file save, bytes
              per op -- measured on the capture samples of ``overhead``
  startstate  the overhead ratios of the small models (mlp, gpt2-tiny) from
              each start state in turn (``--start-state``: warm, cold, as-left)
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
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import harness  # noqa: E402
import models  # noqa: E402
from children import (bench_external, bench_posttrace, bench_render_rows, bench_steps,  # noqa: E402
                      bench_steps_child, child_external, child_posttrace)
from measure import bench_memory, bench_overhead, bench_start_states  # noqa: E402
from report import _f, check_targets, report  # noqa: E402

_perf = time.perf_counter
SECTIONS = ("overhead", "ir", "startstate", "memory", "steps", "posttrace", "external", "render")
QUICK_MODELS = ("mlp", "gpt2-tiny")


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
    ap.add_argument("--start-state", choices=harness.START_STATES, default="warm",
                    help="what runs untimed before every overhead sample (default warm: one plain run)")
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
                                       "start_state": opts.start_state, "quick": opts.quick, "models": names,
                                       "sections": sections}}
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
        if "startstate" in sections:
            results["startstate"] = []
            for n in names:
                if n not in QUICK_MODELS:  # a pass of tens of ms does not feel what ran before it
                    continue
                for phase in ("fwd", "fwdbwd"):
                    log(f"[startstate] {n} {phase}")
                    results["startstate"].append(bench_start_states(built[n], phase, opts, tmpdir))
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
