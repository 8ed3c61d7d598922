"""The view as plain text: one line per box, frames as indented braces,
each box naming the boxes it reads. Deterministic and diff-friendly.

    # torchtrace view: depth=3 fold=on phase=forward; 170 of 394 ops, 41 boxes, 45 edges
    in0   input_ids  i64[1,8]
    GPT2LMHeadModel {
      transformer · GPT2Model {
        b0    view  i64[1,8]  <- in0
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..ir import Graph
from ..views import Box, View, ViewOptions, build_view
from ._escape import IdMaker, clean

PREFIX = {"input": "in", "param": "p", "buffer": "p", "constant": "p", "output": "out"}


def _in_reading_order(view: View) -> List[Tuple[int, Any]]:
    """``view.walk()``, with each input, parameter or constant box moved up among
    the items of its frame to just before the first one that reads it (a backward
    view's saved forward values, a tied embedding drawn where both its readers
    are, came after the frames that read them): every box is named before use."""
    readers: Dict[str, List[str]] = {}
    for e in view.edges:
        readers.setdefault(e.src, []).append(e.dst)
    walked = list(view.walk())

    def level(lo: int, hi: int, depth: int) -> List[Tuple[int, Any]]:
        starts = [k for k in range(lo, hi) if walked[k][0] == depth] + [hi]
        groups = list(zip(starts, starts[1:]))
        where = {walked[k][1].id: g for g, (a, b) in enumerate(groups) for k in range(a, b)}
        order = []
        for g, (a, b) in enumerate(groups):
            item = walked[a][1]
            first = min((where[d] for d in readers.get(item.id, ()) if d in where), default=g) \
                if b == a + 1 and isinstance(item, Box) and item.kind in PREFIX and item.kind != "output" else g
            order.append((first - 0.5 if first < g else g, g))
        out: List[Tuple[int, Any]] = []
        for _, g in sorted(order):
            a, b = groups[g]
            out += [walked[a]] + level(a + 1, b, depth + 1)
        return out

    return level(0, len(walked), 0)


def view_text(view: View) -> str:
    makers: Dict[str, IdMaker] = {}
    ids: Dict[str, str] = {}
    walked = _in_reading_order(view)
    for _, item in walked:  # number boxes in drawing order
        if isinstance(item, Box):
            prefix = PREFIX.get(item.kind, "b")
            ids[item.id] = makers.setdefault(prefix, IdMaker(prefix))(item.id)
    for b in view.boxes:  # boxes outside every frame are walked too; this is a guard
        ids.setdefault(b.id, makers.setdefault("b", IdMaker("b"))(b.id))
    reads: Dict[str, List[str]] = {}
    for e in view.edges:
        reads.setdefault(e.dst, []).append(ids[e.src])
    o = view.options
    head = (f"# torchtrace view: depth={o.get('depth')} fold={'on' if o.get('fold') else 'off'} "
            f"phase={o.get('phase')}; {view.stats.get('shown', 0)} of {view.stats.get('ops', 0)} ops, "
            f"{len(view.boxes)} boxes, {len(view.edges)} edges")
    lines = [head] + [f"# {clean(n)}" for n in view.notes]
    depth_open: List[int] = []
    for depth, item in walked:
        while depth_open and depth_open[-1] >= depth:
            lines.append("  " * depth_open.pop() + "}")
        pad = "  " * depth
        if isinstance(item, Box):
            parts = [f"{ids[item.id]:<5} {item.title}"]
            if item.lines:
                parts.append(" | ".join(item.lines))
            if item.phase != "forward" and item.kind in ("op", "module", "chunk"):
                parts.append(f"[{item.phase}]")
            if item.id in reads:
                parts.append("<- " + ", ".join(reads[item.id]))
            lines.append(pad + clean("  ".join(parts)).replace("\n", " "))
        else:
            lines.append(pad + clean(item.title + (f" | {item.note}" if item.note else "")).replace("\n", " ") + " {")
            depth_open.append(depth)
    while depth_open:
        lines.append("  " * depth_open.pop() + "}")
    return "\n".join(lines) + "\n"


def render_text(graph: Graph, options: ViewOptions) -> str:
    return view_text(build_view(graph, options))
