"""Views: cut a Graph down to what a reader can take in -- collapse module
calls below a depth, fold repeated blocks and loops, filter phases, hide
bookkeeping, focus on one module. Every renderer draws the ``View`` built
here; nothing in this package imports torch.

    view = build_view(graph, depth=2, phase="both")
    for depth, item in view.walk(): ...
"""
from __future__ import annotations

from typing import Any, List, Optional

from ..ir import Graph
from ..textform import cut_off_note, one_line, plural, unrecorded_note
from .build import Assembler
from .fold import Folder
from .groups import Group, build_groups, iter_groups
from .model import BOX_KINDS, CLUSTER_KINDS, SOURCE_KINDS, Box, Cluster, Edge, View
from .options import BOOKKEEPING, PHASE_CHOICES, VIEW_OPTIONS, ViewOptions, as_dict, view_options
from .select import Selection

__all__ = ["build_view", "View", "Box", "Edge", "Cluster", "ViewOptions", "view_options", "VIEW_OPTIONS",
           "PHASE_CHOICES", "BOOKKEEPING", "BOX_KINDS", "SOURCE_KINDS", "CLUSTER_KINDS", "Prepared", "ended_by"]


def ended_by(graph: Graph) -> str:
    """The exception that ended the pass (``meta.error``: "FloatingPointError"), "" for a
    pass that ran to its end. Such a pass holds only the ops before the raise: every view
    says so, as it says a truncated one is cut off, or its drawing reads as a whole step."""
    error = graph.meta.get("error")
    return one_line(str(error)) if error else ""


class Prepared:
    """What does not depend on depth: selection, group tree, fold signatures."""

    def __init__(self, graph: Graph, opts: ViewOptions) -> None:
        self.graph = graph
        self.opts = opts
        self.sel = Selection(graph, opts)
        self.top: Group = build_groups(self.sel)
        self.folder = Folder(self.sel)
        self.max_depth = max((g.depth for g in iter_groups(self.top)), default=-1)

    def assemble(self, depth: int, chunk: Optional[int] = None) -> Assembler:
        return Assembler(self.sel, self.top, self.folder, self.opts, depth, chunk).run()


def build_view(graph: Graph, options: Optional[ViewOptions] = None, **opts: Any) -> View:
    """The view of ``graph`` under ``options`` (or keyword options; see
    ``ViewOptions`` for each one and its default)."""
    if not isinstance(graph, Graph):
        from ..errors import UsageError

        raise UsageError("build_view() needs a Graph", expected="a torchtrace.Graph", found=type(graph).__name__,
                         fix="load one with torchtrace.load(path) or record one with torchtrace.trace()")
    o = options if options is not None else view_options(**opts)
    if options is not None and opts:
        o = view_options(**{**as_dict(options), **opts})
    prep = Prepared(graph, o)
    return _finish(prep, *_choose(prep))


def _choose(prep: Prepared) -> tuple:
    """(assembler, depth, auto?) honouring ``depth`` or picking the deepest
    depth within ``max_boxes``; chunks ops when even that does not fit."""
    o = prep.opts
    full = prep.max_depth + 1  # every module call expanded
    auto = o.depth is None
    if not auto:
        asm = prep.assemble(o.depth)
    elif o.max_boxes is None:
        asm = prep.assemble(full)
    else:
        asm = prep.assemble(min(1, full))
        for d in range(asm.depth + 1, full + 1):
            nxt = prep.assemble(d)
            if _size(nxt) > o.max_boxes:
                break
            asm = nxt
    if auto and o.max_boxes is not None and _size(asm) > o.max_boxes:
        limit = o.max_boxes
        while limit >= 1:
            chunked = prep.assemble(asm.depth, chunk=limit)
            if _size(chunked) <= o.max_boxes or limit == 1:
                asm = chunked
                break
            limit //= 2
        if _size(asm) > o.max_boxes and asm.depth > 0:  # (the whole model as one box, if that draws fewer)
            whole = prep.assemble(0)
            asm = whole if _size(whole) < _size(asm) else asm
    return asm, auto


def _size(asm: Assembler) -> int:
    return asm.size()


def _finish(prep: Prepared, asm: Assembler, auto: bool) -> View:
    edges, extra = asm.edges()
    boxes = list(asm.boxes.values()) + extra
    sel, o = prep.sel, prep.opts
    alerts: List[str] = []  # (what the pass is missing: the drawings show these, not only in comments)
    if cut_off_note(prep.graph):
        alerts.append(f"TRUNCATED: {cut_off_note(prep.graph)}")
    if ended_by(prep.graph):
        alerts.append(f"ENDED WITH {ended_by(prep.graph)}: the ops after the raise did not run")
    notes: List[str] = list(alerts)
    if unrecorded_note(prep.graph):
        notes.append(unrecorded_note(prep.graph))
    if sel.out_of_phase:
        notes.append(f"phase {sel.phase}: {sel.out_of_phase} ops of other phases not shown")
    if o.focus is not None:
        notes.append(f"focus {o.focus!r}: {len(sel.focus_calls)} call(s)")
    if sel.hidden:
        notes.append(f"{plural(len(sel.hidden), 'op')} tagged {', '.join(o.hide)} hidden")
    if asm.collapsed:
        how = f" (auto, max_boxes={o.max_boxes})" if auto else ""  # (a Mermaid fit's depth is not the user's)
        notes.append(f"depth {asm.depth}{how}: {plural(asm.collapsed, 'module call')} collapsed into boxes")
    notes.extend(f"folded {one_line(f)}" for f in asm.folds)  # (a ModuleDict key may hold a line break)
    if asm.chunked:
        notes.append(f"{asm.chunked} ops grouped into chunk boxes to stay within max_boxes={o.max_boxes}")
    if auto and o.max_boxes is not None and _size(asm) > o.max_boxes:
        notes.append(f"max_boxes={o.max_boxes} cannot be met: {_size(asm)} boxes is the fewest this view draws")
    resolved = {**as_dict(o), "depth": asm.depth, "phase": sel.phase}
    stats = {"ops": len(prep.graph.nodes), "shown": len(sel.nodes), "hidden": len(sel.hidden),
             "boxes": len(boxes), "edges": len(edges), "clusters": len(asm.clusters), "folds": len(asm.folds),
             "full_depth": prep.max_depth + 1}  # (the depth that expands every module call)
    return View(tuple(boxes), tuple(edges), tuple(asm.clusters), tuple(notes), resolved, stats, tuple(alerts))
