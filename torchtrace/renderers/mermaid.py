"""Mermaid flowcharts that render on GitHub (Mermaid 11) and Mermaid 12.

Nested ``subgraph`` per expanded module call, ids from ``_escape.IdMaker``
(``n0``/``s0``: never a reserved word, never a node/subgraph clash), every
label through ``_escape.mermaid_label``. The layout is pinned to dagre so 11
and 12 draw alike. Mermaid refuses more than 500 edges or 50,000 characters
and a Markdown host cannot raise that: ``fit`` drops edge labels, then
parameters, then collapses depth, until the diagram fits, and says so in a
``%%`` comment. An explicit ``depth`` that does not fit gives way to shallower
depths only down to the default view's (never coarser than it, unless that
does not fit either), and no view is built twice.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Generator, Iterator, List, Optional, Tuple

from ..errors import UsageError
from ..ir import Graph
from ..views import SOURCE_KINDS, Box, View, ViewOptions, build_view
from ._escape import IdMaker, mermaid_comment, mermaid_label, shorten
from ._style import CLUSTER, EDGE, PALETTE, box_style, cluster_style
from .dot import LINE_WIDTH, check_direction

MAX_EDGES = 500      # mermaid's maxEdges default; the 501st edge is a parse error
MAX_CHARS = 50_000   # mermaid's maxTextSize default; above it a placeholder is drawn
FRONTMATTER = ("---", "config:", "  layout: dagre", "  look: classic", "---")
SHAPES = {"op": ('("', '")'), "module": ('[["', '"]]'), "chunk": ('[["', '"]]'), "input": ('(["', '"])'),
          "output": ('(["', '"])'), "param": ('[("', '")]'), "buffer": ('[("', '")]'),
          "constant": ('[("', '")]')}
WITNESS_SHAPE = ('{{"', '"}}')

Extra = Callable[[Any], Optional[str]]


def _label(title: str, lines: Tuple[str, ...] = ()) -> str:
    return mermaid_label("\n".join(shorten(x, LINE_WIDTH) for x in (title, *lines)))


def flowchart(view: View, *, direction: str = "TB", edge_labels: bool = True,
              comments: Tuple[str, ...] = (), class_of: Optional[Extra] = None,
              class_defs: Optional[Dict[str, str]] = None) -> str:
    """The view as Mermaid text. ``class_of(box)`` may name an extra classDef
    (from ``class_defs``: name -> CSS) for a box, e.g. for diffs."""
    check_direction(direction)
    node_id, sub_id = IdMaker("n"), IdMaker("s")
    out: List[str] = list(FRONTMATTER)
    out += [mermaid_comment(c) for c in comments]
    out.append(f"flowchart {direction}")
    defs = {key: f"fill:{f},stroke:{s},color:{t}" for key, (f, s, t) in PALETTE.items()}
    defs.update(class_defs or {})
    used: Dict[str, List[str]] = {}
    kids = view.children()
    styles: List[str] = []

    def emit(cid: Optional[str], indent: str) -> None:
        clusters, boxes = kids.get(cid, ([], []))
        for item in sorted([*clusters, *boxes], key=lambda x: x.order):
            if isinstance(item, Box):
                nid = node_id(item.id)
                left, right = WITNESS_SHAPE if item.witness else SHAPES[item.kind]
                out.append(f"{indent}{nid}{left}{_label(item.title, item.lines)}{right}")
                key = (class_of(item) if class_of else None) or box_style(item)
                used.setdefault(key, []).append(nid)
            else:
                sid = sub_id(item.id)
                out.append(f'{indent}subgraph {sid} ["{_label(item.title, (item.note,) if item.note else ())}"]')
                emit(item.id, indent + "  ")
                out.append(f"{indent}end")
                fill, stroke = CLUSTER[cluster_style(item)]
                dash = ",stroke-dasharray:5 5" if item.kind == "loop" or item.phase != "forward" else ""
                width = ",stroke-width:2px" if item.repeat > 1 else ""
                styles.append(f"style {sid} fill:{fill},stroke:{stroke}{dash}{width}")

    emit(None, "  ")
    if not view.boxes:  # a flowchart without nodes is refused (and `click --> b` parses to nothing)
        out.append(f'  {node_id("empty")}["{mermaid_label("nothing to draw: no ops in this view")}"]')
    kinds = {b.id: b.kind for b in view.boxes}
    phases = {b.id: b.phase for b in view.boxes}
    for e in view.edges:
        arrow = "-->" if e.phase == "forward" else "-.->"
        plain = (not edge_labels or kinds[e.src] in SOURCE_KINDS or kinds[e.dst] == "output" or not e.label
                 or phases[e.src] != phases[e.dst])  # tensors saved for backward: many, long, unlabelled
        text = "" if plain else f'|"{mermaid_label(shorten(e.label, LINE_WIDTH))}"|'
        out.append(f"  {node_id(e.src)} {arrow}{text} {node_id(e.dst)}")
    for key, ids in used.items():
        out.append(f"  classDef {key} {defs[key]}")
        out.append(f"  class {','.join(ids)} {key}")
    out += ["  " + s for s in styles]
    return "\n".join(out) + "\n"


def text_size(text: str) -> int:
    """What mermaid compares with maxTextSize: UTF-16 length without the
    frontmatter and ``%%`` comment lines."""
    lines = text.split("\n")
    if lines and lines[0] == "---":
        lines = lines[lines.index("---", 1) + 1:]
    body = "\n".join(x for x in lines if not x.lstrip().startswith("%%"))
    return sum(2 if ord(c) > 0xFFFF else 1 for c in body)


def fit(graph: Graph, options: ViewOptions, *, direction: str = "TB", edge_labels: bool = True,
        max_edges: int = MAX_EDGES, max_chars: int = MAX_CHARS) -> str:
    """The most detailed diagram of ``graph`` within the limits."""
    for name, value in (("max_edges", max_edges), ("max_chars", max_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"bad value for {name}", expected="a positive integer", found=repr(value),
                             fix=f"leave {name} out to use Mermaid's default limit")
    fitter = _Fit(graph, direction, max_edges, max_chars)
    for attempt in fitter.attempts(options, edge_labels):
        if fitter.fits(attempt):
            return fitter.draw(attempt)
    return _placeholder(fitter.shown, max_edges, max_chars)


Attempt = Tuple[Tuple[str, ...], ViewOptions, bool]  # (what changed, options, edge labels)


class _Fit:
    """Ever smaller versions of a view until one fits. Each set of options is
    built once (a view of thousands of ops takes seconds to build)."""

    def __init__(self, graph: Graph, direction: str, max_edges: int, max_chars: int) -> None:
        self.graph, self.direction, self.max_edges, self.max_chars = graph, direction, max_edges, max_chars
        self.views: Dict[ViewOptions, View] = {}
        self.tried: Dict[Tuple[ViewOptions, bool], bool] = {}
        self.shown = 0

    def view(self, o: ViewOptions) -> View:
        if o not in self.views:
            self.views[o] = build_view(self.graph, o)
            self.shown = self.views[o].stats["shown"]
        return self.views[o]

    def draw(self, attempt: Attempt) -> str:
        changes, o, labels = attempt
        view = self.view(o)
        return flowchart(view, direction=self.direction, edge_labels=labels,
                         comments=_header(view, changes, self.max_edges, self.max_chars))

    def fits(self, attempt: Attempt) -> bool:
        """(The ``%%`` header does not count: the answer depends on the options only.)"""
        _, o, labels = attempt
        if (o, labels) not in self.tried:
            view = self.view(o)
            self.tried[(o, labels)] = (len(view.edges) <= self.max_edges
                                       and text_size(self.draw(attempt)) <= self.max_chars)
        return self.tried[(o, labels)]

    def attempts(self, o: ViewOptions, edge_labels: bool) -> Iterator[Attempt]:
        """An explicit depth that does not fit is tried shallower only while that is still
        more detailed than the default view (automatic depth), which comes next, then what
        the default view would shrink to: never coarser than the default view."""
        if o.depth is None:
            yield from self.shrink(o, edge_labels)
            return
        depth = min(o.depth, self.view(o).stats["full_depth"])  # (deeper draws the same view)
        changes, lean = yield from self.lighter(o, edge_labels)
        auto = self.view(self.lean(o.with_(depth=None)))  # (the default view lightened: fold on, no params)
        chunked = any(b.kind == "chunk" for b in auto.boxes)  # (then its depth unchunked is more detailed)
        shallower = [((*changes, f"depth {o.depth} -> {d}"), lean.with_(depth=d), False)
                     for d in range(auto.options["depth"] + 1 - chunked, depth)]
        best = self.deepest(shallower)
        if best is not None:
            yield best
        yield from self.shrink(o.with_(depth=None), edge_labels, (f"depth {o.depth} -> automatic (the default view)",))

    def deepest(self, shallow_first: List[Attempt]) -> Optional[Attempt]:
        """The deepest that fits, by bisection (a shallower view is taken to be no larger)."""
        lo, hi, best = 0, len(shallow_first) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2 if best is not None else lo  # (the shallowest first: most often none fits)
            if self.fits(shallow_first[mid]):
                best, lo = shallow_first[mid], mid + 1
            else:
                hi = mid - 1
        return best

    def lean(self, o: ViewOptions) -> ViewOptions:
        """``o`` folded and without parameters (their view is ``o``'s folded one when it drew none)."""
        o = o.with_(fold=True)
        if o.params:
            view, o = self.view(o), o.with_(params=False)
            if not any(b.kind in ("param", "buffer", "constant") for b in view.boxes):
                self.views.setdefault(o, view)
        return o

    def lighter(self, o: ViewOptions, edge_labels: bool,
                changes: Tuple[str, ...] = ()) -> Generator[Attempt, None, Tuple[Tuple[str, ...], ViewOptions]]:
        """The view as asked, then without edge labels, folded, without parameters;
        returns the last changes and options."""
        yield changes, o, edge_labels
        if edge_labels:
            changes = (*changes, "edge labels dropped")
            yield changes, o, False
        if not o.fold:
            o, changes = o.with_(fold=True), (*changes, "fold turned on")
            yield changes, o, False
        if o.params:
            folded, o = o, self.lean(o)
            if self.views.get(o) is not self.views[folded]:  # (else it drew none: the same view, not built again)
                changes = (*changes, "parameters not drawn")
                yield changes, o, False
        return changes, o

    def shrink(self, o: ViewOptions, edge_labels: bool, before: Tuple[str, ...] = ()) -> Iterator[Attempt]:
        """The default view (automatic depth), then shallower, then chunked."""
        changes, o = yield from self.lighter(o, edge_labels, before)
        depth = min(self.view(o).options["depth"], self.view(o).stats["full_depth"])  # (of the lightened view)
        for d in range(depth - 1, 0, -1):
            yield (*changes, f"depth {depth} -> {d}"), o.with_(depth=d), False
        budget = o.max_boxes or 400
        while budget > 2:  # automatic depth (1 at most here) chunks long runs of ops
            budget //= 2
            what = f"ops grouped into chunks (max_boxes={budget})"
            yield (*changes, what), o.with_(depth=None, max_boxes=budget), False
        if depth > 0:
            yield (*changes, f"depth {depth} -> 0"), o.with_(depth=0, max_boxes=2), False


def _header(view: View, changes: Tuple[str, ...], max_edges: int, max_chars: int) -> Tuple[str, ...]:
    head = [f"torchtrace view: {view.stats['shown']} of {view.stats['ops']} ops, "
            f"{len(view.boxes)} boxes, {len(view.edges)} edges"]
    if changes:
        head.append(f"collapsed to fit Mermaid limits ({max_edges} edges, {max_chars} chars): "
                    + "; ".join(changes))
    head += list(view.notes)
    return tuple(head)


def _placeholder(shown: int, max_edges: int, max_chars: int) -> str:
    """Last resort (a pathological graph): one box that says why (in lines: a title is cut short)."""
    box = Box("x", "chunk", "graph too large for Mermaid", (f"{shown} ops in this view", "render fmt='svg' instead"))
    return flowchart(View((box,), (), ()), comments=(f"no view fits {max_edges} edges / {max_chars} chars",))


def render_mermaid(graph: Graph, options: ViewOptions, *, markdown: bool = False, direction: str = "TB",
                   edge_labels: bool = True, max_edges: int = MAX_EDGES, max_chars: int = MAX_CHARS) -> str:
    if not isinstance(edge_labels, bool):
        raise UsageError("bad value for edge_labels", expected="True or False", found=repr(edge_labels),
                         fix="pass edge_labels=False to leave tensor types off the arrows")
    text = fit(graph, options, direction=direction, edge_labels=edge_labels, max_edges=max_edges,
               max_chars=max_chars)
    return f"```mermaid\n{text}```\n" if markdown else text


__all__ = ["flowchart", "fit", "render_mermaid", "text_size", "MAX_EDGES", "MAX_CHARS", "EDGE"]
