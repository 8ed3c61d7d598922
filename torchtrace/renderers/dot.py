"""Graphviz output: DOT source built with the ``graphviz`` package, and
SVG/PNG/PDF laid out by the ``dot`` binary.

Module calls are nested clusters; op boxes show the op and its output type;
edges between ops carry the tensor types; inputs, parameters and outputs
have shapes of their own; witnesses are red with the value Python read;
backward ops are orange. ``digraph(view)`` is the building block other
renderers (diffs) reuse: it accepts per-box extra attributes.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import graphviz

from ..errors import RenderError, UsageError
from ..views import SOURCE_KINDS, Box, Cluster, View
from ..textform import one_line
from ._escape import IdMaker, dot_html, dot_text, dot_tooltip, shorten
from ._style import ALERT, CLUSTER, MUTED, PALETTE, box_style, cluster_style, edge_color

IMAGE_FORMATS = ("svg", "png", "pdf")
MAX_LAYOUT_EDGES = 2000  # a view (graph or diff) laid out as an image: check_layout_size
DIRECTIONS = ("TB", "LR", "BT", "RL")
OPTIONS = ("direction",)
LINE_WIDTH = 48        # characters per label line before it is cut with …
# Above either size, dot's network simplex is bounded and edges are drawn straight.
# Spline routing is what explodes: a 274-box, 356-edge forward+backward view took 21 s
# (0.5 s so), a 387-box, 475-edge diff 27 s (0.7 s), a 766-box, 921-edge one over
# 100 s (5.6 s); forward views of 130-200 boxes lay out in 0.05 s either way.
BIG_GRAPH = 200        # boxes
BIG_EDGES = 250        # edges
# Edges that span many ranks become chains of virtual nodes, which mincross and network simplex
# then work through: a MobileNetV2 forward+backward view, unfolded (1,035 edges, ~97,000 rank
# steps spanned), took 97 s with the settings above, ~5 s with these.
LONG_SPANS = 60_000
INSTALL_FIX = ("install Graphviz so the `dot` program is on PATH: apt-get install graphviz / "
               "brew install graphviz / conda install graphviz; or render fmt='dot' (text) or 'mermaid'")

SHAPES = {"op": "box", "module": "box3d", "chunk": "folder", "input": "invhouse", "output": "house",
          "param": "note", "buffer": "note", "constant": "note"}

Extra = Callable[[Any], Mapping[str, str]]


class DotMissing(RenderError):
    """The Graphviz ``dot`` program is not installed (SVG/PNG/PDF need it)."""


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise UsageError("bad value for direction", expected="one of " + ", ".join(DIRECTIONS),
                         found=repr(direction), fix="pass direction='TB' (top to bottom) or 'LR'")
    return direction


def html_label(title: str, lines: tuple = (), *, title_size: Optional[int] = None) -> str:
    """An HTML-like label: bold title, smaller muted lines; all text escaped."""
    head = dot_html(shorten(title, LINE_WIDTH)) or " "  # dot rejects an empty <B></B>
    head = f'<FONT POINT-SIZE="{title_size}">{head}</FONT>' if title_size else head
    parts = [f"<B>{head}</B>"]
    for line in lines:
        text = dot_html(shorten(line, LINE_WIDTH)) or " "
        parts.append(f'<FONT POINT-SIZE="9" COLOR="{MUTED}">{text}</FONT>')
    return "<" + "<BR/>".join(parts) + ">"


def box_attrs(b: Box) -> Dict[str, str]:
    fill, border, text = PALETTE[box_style(b)]
    attrs = {"label": html_label(b.title, b.lines), "shape": SHAPES[b.kind], "fillcolor": fill, "color": border,
             "fontcolor": text, "style": "filled" if b.kind != "op" else "rounded,filled",
             "tooltip": dot_tooltip(b.tooltip or b.title)}
    if b.kind in SOURCE_KINDS and b.kind != "input":
        attrs["fontsize"] = "9"
    if b.repeat > 1:
        attrs["peripheries"] = "2"
    if b.witness:
        attrs["penwidth"] = "2"
    if b.phase != "forward" and b.kind in ("op", "module"):
        attrs["style"] += ",dashed"
    return attrs


def cluster_attrs(c: Cluster) -> Dict[str, str]:
    fill, border = CLUSTER[cluster_style(c)]
    style = "rounded,filled" + (",dashed" if c.kind == "loop" or c.phase != "forward" else "")
    return {"label": html_label(c.title, (c.note,) if c.note else (), title_size=10), "style": style,
            "fillcolor": fill, "color": border,
            "penwidth": "2" if c.repeat > 1 else "1", "labeljust": "l", "fontcolor": MUTED,
            "tooltip": dot_tooltip(c.tooltip or c.title)}


def digraph(view: View, *, direction: str = "TB", name: str = "torchtrace",
            extra_box: Optional[Extra] = None, extra_edge: Optional[Extra] = None) -> graphviz.Digraph:
    """The view as a ``graphviz.Digraph``. ``extra_box(box)``/``extra_edge(edge)``
    may return attributes that override the defaults (used by diff renderers)."""
    check_direction(direction)
    node_id, cluster_id = IdMaker("n"), IdMaker("cluster")
    graph_attr = {"rankdir": direction, "fontname": "Helvetica", "fontsize": "10", "nodesep": "0.25",
                  "ranksep": "0.3", "newrank": "true"}
    if len(view.boxes) > BIG_GRAPH or len(view.edges) > BIG_EDGES:
        graph_attr.update(nslimit="2", mclimit="0.5", splines="line")
        if rank_spans(view) > LONG_SPANS:
            graph_attr.update(nslimit="0.01", mclimit="0.05")
    comment = "torchtrace view: " + "; ".join(view.notes) if view.notes else "torchtrace view"
    dot = graphviz.Digraph(name=name, comment=one_line(comment), graph_attr=graph_attr,
                           node_attr={"fontname": "Helvetica", "fontsize": "10", "margin": "0.12,0.04",
                                      "height": "0.3"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "8", "fontcolor": MUTED,
                                      "arrowsize": "0.6"})
    kids = view.children()

    def fill(sub: graphviz.Digraph, cid: Optional[str]) -> None:
        clusters, boxes = kids.get(cid, ([], []))
        for item in sorted([*clusters, *boxes], key=lambda x: x.order):
            if isinstance(item, Box):
                attrs = box_attrs(item)
                if extra_box is not None:
                    attrs.update(extra_box(item))
                sub.node(node_id(item.id), **attrs)
            else:
                with sub.subgraph(name=cluster_id(item.id)) as inner:
                    inner.attr(**cluster_attrs(item))
                    fill(inner, item.id)

    fill(dot, None)
    if not view.boxes:  # (an empty SVG says nothing: the reason was only in the comment)
        dot.node(node_id("empty"), label=dot_text("nothing to draw: no ops in this view"), shape="plaintext",
                 fontcolor=MUTED)
    kinds = {b.id: b.kind for b in view.boxes}
    phases = {b.id: b.phase for b in view.boxes}
    for e in view.edges:
        from_source = kinds[e.src] in SOURCE_KINDS
        attrs = {"color": edge_color(e.phase, from_source)}
        if not from_source and kinds[e.dst] != "output" and e.label and phases[e.src] == phases[e.dst]:
            attrs["label"] = dot_text(shorten(e.label, LINE_WIDTH))
        if e.phase != "forward":
            attrs["style"] = "dashed"
        if extra_edge is not None:
            attrs.update(extra_edge(e))
        dot.edge(node_id(e.src), node_id(e.dst), **attrs)
    _alert(dot, view)
    return dot


def _alert(dot: graphviz.Digraph, view: View) -> None:
    """Draw the view's alerts (a pass cut off, or ended by an exception) as the graph's title:
    the comment holding the notes is not drawn, and the image of the ops before a raise
    reads as a whole step. Set after the clusters, which would otherwise inherit it."""
    if view.alerts:
        dot.attr(label=dot_text("\n".join(shorten(a, 2 * LINE_WIDTH) for a in view.alerts)), labelloc="t",
                 fontcolor=ALERT, fontsize="11")


def to_dot(view: View, *, direction: str = "TB") -> str:
    return digraph(view, direction=direction).source


def rank_spans(view: View) -> int:
    """The ranks the edges skip, summed, with each box ranked by its longest path
    from a source (what ``dot`` fills with virtual nodes, roughly)."""
    out: Dict[str, List[str]] = {}
    waiting: Dict[str, int] = {b.id: 0 for b in view.boxes}
    for e in view.edges:
        if e.src != e.dst and e.src in waiting and e.dst in waiting:
            out.setdefault(e.src, []).append(e.dst)
            waiting[e.dst] += 1
    rank = dict.fromkeys(waiting, 0)
    ready = [b for b, n in waiting.items() if n == 0]
    while ready:  # (boxes on a cycle, if any, keep rank 0)
        b = ready.pop()
        for d in out.get(b, ()):
            rank[d] = max(rank[d], rank[b] + 1)
            waiting[d] -= 1
            if waiting[d] == 0:
                ready.append(d)
    return sum(max(0, rank.get(e.dst, 0) - rank.get(e.src, 0) - 1) for e in view.edges)


def layout(dot: graphviz.Digraph, fmt: str) -> bytes:
    """Run the ``dot`` binary; a clear error when it is missing or fails."""
    if fmt not in IMAGE_FORMATS:
        raise RenderError("unknown image format", expected="one of " + ", ".join(IMAGE_FORMATS),
                          found=repr(fmt), fix="pick one of the listed formats")
    try:
        return dot.pipe(format=fmt, quiet=True)  # (its stderr is quoted in the error; echoed, it lands in a script's)
    except graphviz.ExecutableNotFound:
        raise DotMissing(f"rendering {fmt} needs the Graphviz `dot` program", expected="`dot` on PATH",
                          found="no `dot` executable", fix=INSTALL_FIX) from None
    except graphviz.CalledProcessError as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else str(err.stderr)
        raise RenderError(f"`dot` failed to lay out the graph as {fmt}", expected="exit status 0",
                          found=f"exit status {err.returncode}: {shorten(stderr.strip(), 400)}",
                          fix="report this as a torchtrace bug with the DOT source (fmt='dot')") from None


def check_layout_size(view: View, *, default: str, fix: str) -> None:
    """Refuse an image of a view over ``MAX_LAYOUT_EDGES`` edges (5,300 kept `dot` busy for
    minutes); ``default`` says how small the view is without options, ``fix`` how to draw less.
    DOT text (format "dot") is never capped."""
    if len(view.edges) > MAX_LAYOUT_EDGES:
        raise RenderError("too many edges for `dot` to lay out",
                          expected=f"a view of at most {MAX_LAYOUT_EDGES:,} edges ({default})",
                          found=f"{len(view.edges):,} edges, {len(view.boxes):,} boxes",
                          fix=f"{fix}; or take the DOT source (format 'dot') and run `dot` on it yourself")


def render_graphviz(graph: Any, fmt: str, options: Any, *, direction: str = "TB") -> Any:
    """``fmt`` "dot": DOT source (str); "svg": str; "png"/"pdf": bytes."""
    from ..views import build_view

    view = build_view(graph, options)
    dot = digraph(view, direction=direction)
    if fmt == "dot":
        return dot.source
    check_layout_size(view, default="the default view collapses to at most 50 boxes",
                      fix="draw less: a smaller depth, fold on, one phase, or a focus on a module")
    data = layout(dot, fmt)
    return data.decode("utf-8") if fmt == "svg" else data
