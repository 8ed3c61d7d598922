"""Tables and target checks for bench.py results."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

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
# report
# ---------------------------------------------------------------------------------------------
def _f(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return fmt.format(x)


def _ms(d: Dict[str, float]) -> str:
    return f"{d['median_s'] * 1e3:.3g} ± {d['iqr_s'] * 1e3:.2g}"


def _table(L: List[str], title: str, head: str, sep: str, rows: Iterable[str]) -> None:
    """A markdown section: title, header, alignment row, rows, blank line."""
    L.extend([title, head, sep, *rows, ""])


def _pass(r: Dict[str, Any]) -> str:
    return "fwd" if r["phase"] == "fwd" else "fwd+bwd"


def _overhead_row(r: Dict[str, Any], ext: Dict[str, Any]) -> str:
    e = ext.get(r["model"], {}) if r["phase"] == "fwd" else {}
    tv = _f(e.get("torchview_x_empty"), "{:.1f}") if r["phase"] == "fwd" else "—"
    tl = _f(e.get("torchlens_x_empty"), "{:.0f}") if r["phase"] == "fwd" else "—"
    return (f"| {r['model']} | {_pass(r)} | {r['ops']} "
            f"| {_ms(r['times']['plain'])} | {r['empty_x_plain']:.2f} | {r['capture_x_plain']:.2f} "
            f"| **{r['capture_x_empty']:.2f}** | {_f(r.get('reused_x_empty'))} | {r['trace_x_plain']:.2f} "
            f"| +{r['empty_us_per_op_vs_plain']:.1f} | +{r['capture_us_per_op_vs_plain']:.1f} "
            f"| +{r['capture_us_per_op_vs_empty']:.1f} | {tv} | {tl} |")


def _external_row(m: str, e: Dict[str, Any]) -> str:
    if "error" in e:
        return f"| {m} | error: {e['error'][-120:]!r} | | | |"
    t = e["times"]
    cells = [f"{_ms(t[tool])} ({e[f'{tool}_x_plain']:.1f}, {e[f'{tool}_x_empty']:.1f})" if tool in t
             else "n/a (" + e.get(f"{tool}_error", "not installed")[:60] + ")" for tool in ("torchview", "torchlens")]
    return f"| {m} | {_ms(t['plain'])} | {_ms(t['empty'])} | {cells[0]} | {cells[1]} |"


def _memory_row(r: Dict[str, Any], ph: str) -> str:
    d = r[ph]
    heap = "n/a (slow model)"
    if "heap_growth_bytes_per_trace" in r:
        heap = (f"{r['heap_growth_bytes_per_trace']:.0f} B "
                f"({r['heap_growth_bytes_per_empty_pass']:.0f} B) over {r['heap_traces']}")
    return (f"| {r['model']} | {ph} | {d['produced']} | {d['alive_untraced']} | {d['alive_traced']} "
            f"| **{d['retained_tensors']} ({d['retained_bytes']} B)** | {heap} |")


def report(results: Dict[str, Any]) -> str:
    L: List[str] = []
    env = results["env"]
    L.append(f"torch {env['torch']}, python {env['python']}, {env['machine']}, threads={env['threads']}, "
             f"gc.collect per sample={env['collect']}, start state={env.get('start_state', 'as-left')}; "
             "times are medians ± IQR (ms)\n")
    ov = results.get("overhead", [])
    ext = {e["model"]: e for e in results.get("external", [])}
    if ov:
        _table(L, "### Capture overhead (train mode, grad on)\n",
               "| model | pass | ops | plain ms | empty mode ×plain | capture ×plain | **capture ×empty** "
               "| capture, one Capture reused ×empty | trace() e2e ×plain | empty µs/op | capture µs/op (vs plain) "
               "| capture µs/op (vs empty) | torchview ×empty | torchlens ×empty |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
               (_overhead_row(r, ext) for r in ov))
        _table(L, "### IR build and JSON (per recorded op)\n",
               "| model | pass | nodes | build µs/op | encode µs/op | **build+encode µs/op** | file save µs/op "
               "| load µs/op | **JSON B/op** | gzip B/op |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
               (f"| {r['model']} | {_pass(r)} | {r['ir']['nodes']} "
                f"| {r['ir']['build_us_per_op']:.1f} | {r['ir']['encode_us_per_op']:.1f} "
                f"| **{r['ir']['build_encode_us_per_op']:.1f}** | {r['ir']['save_us_per_op']:.1f} "
                f"| {_f(r['ir'].get('load_us_per_op'), '{:.1f}')} | **{_f(r['ir']['json_bytes_per_op'], '{:.0f}')}** | {_f(r['ir']['gz_bytes_per_op'], '{:.0f}')} |"
                for r in ov))
    ss = results.get("startstate", [])
    if ss:
        states = list(ss[0]["states"])
        _table(L, "### Start state before each sample (capture ×empty / one Capture reused ×empty)\n",
               "| model | pass | " + " | ".join(f"{s}: plain ms | {s}: capture | {s}: reused" for s in states) + " |",
               "|---|---|" + "---:|" * (3 * len(states)),
               (f"| {r['model']} | {_pass(r)} | " + " | ".join(
                   f"{_ms(d['plain'])} | {d['capture_x_empty']:.2f} | {d['reused_x_empty']:.2f}"
                   for d in r["states"].values()) + " |" for r in ss))
    if ext:
        _table(L, "### torchview / torchlens (forward, child process)\n",
               "| model | plain ms | empty ms | torchview ms (×plain, ×empty) | torchlens ms (×plain, ×empty) |",
               "|---|---:|---:|---:|---:|", (_external_row(m, e) for m, e in ext.items()))
    st = results.get("steps", [])
    if st:
        _table(L, "### Training step under Recorder(every=K)\n",
               "| model | plain step ms | **non-sampled ×plain** | sampled step ×plain | "
               "next step (build + store) ×plain | samples |",
               "|---|---:|---:|---:|---:|---:|",
               (f"| {r['model']} | {_ms(r['plain'])} | **{r['nonsampled_x_plain']:.3f}** "
                f"| {r['sampled_x_plain']:.2f} | {r['storing_x_plain']:.2f} | {r['nonsampled']['n']} |" for r in st))
    pt = results.get("posttrace", [])
    if pt:
        _table(L, "### Plain forward after a trace ended (three processes, interleaved)\n",
               "| model | never-traced ms | after-trace ms | **after ×never** | 2nd never-traced ×never "
               "| objects left | hooks/modes left |",
               "|---|---:|---:|---:|---:|---:|---:|",
               (f"| {r['model']} | {_ms(r['times']['never'])} | {_ms(r['times']['traced'])} "
                f"| **{r['traced_x_never_both']:.3f}** | {r['never2_x_never']:.3f} "
                f"| {r['child_state']['traced']['objects_delta'] - r['child_state']['never']['objects_delta']:+d} "
                f"| {r['child_state']['traced']['global_hooks']}/{r['child_state']['traced']['dispatch_modes']} |"
                for r in pt))
    mem = results.get("memory", [])
    if mem:
        _table(L, "### Memory after a trace block (graph kept, outputs dropped)\n",
               "| model | pass | tensors produced | alive untraced | alive traced | **retained** | "
               "heap growth / trace (/ empty-mode pass) |",
               "|---|---|---:|---:|---:|---:|---:|",
               (_memory_row(r, ph) for r in mem for ph in ("fwd", "fwdbwd")))
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
        _table(L, "### Targets (issue #7)\n", "| target | measured | limit | met |", "|---|---:|---:|---|",
               (f"| {t['what']} | {_f(t['value'], '{:.3g}')} | {t['limit']} "
                f"| {'yes' if t['met'] else ('n/a' if t['met'] is None else '**no**')} |" for t in tg))
    return "\n".join(L)


def check_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    out = []

    def add(what: str, value: Optional[float], limit: float, le: bool = True) -> None:
        met = None if value is None else (value <= limit if le else value < limit)
        out.append({"what": what, "value": value, "limit": limit, "met": met})

    for r in results.get("overhead", []):
        for key, label in (("capture_x_empty", "capture"), ("reused_x_empty", "capture, one Capture reused")):
            if key not in r:  # a saved run from before the reused variant
                continue
            if r["phase"] == "fwd" and r["model"] in TARGETS["capture_vs_empty_fwd"]:
                add(f"{label} ×empty, {r['model']} fwd", r[key], TARGETS["capture_vs_empty_fwd"][r["model"]])
            if r["phase"] == "fwdbwd":
                add(f"{label} ×empty, {r['model']} fwd+bwd", r[key], TARGETS["capture_vs_empty_fwdbwd"])
    for r in results.get("startstate", []):
        limit = (TARGETS["capture_vs_empty_fwd"].get(r["model"]) if r["phase"] == "fwd"
                 else TARGETS["capture_vs_empty_fwdbwd"])
        for state, d in r["states"].items() if limit is not None else ():
            for key, label in (("capture_x_empty", "capture"), ("reused_x_empty", "reused")):
                add(f"{label} ×empty, {r['model']} {_pass(r)}, start state {state}", d[key], limit)
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


