"""Tables and target checks for bench.py results."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

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


