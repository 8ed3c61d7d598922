"""Renderings of a ``GraphDiff``: text (``difftext``: a unified diff, the
explanation first), Markdown, DOT/SVG and Mermaid (added ops green, removed red, changed
amber, unchanged runs collapsed into one box).

``render_diff(diff, fmt, **opts)`` is what ``torchtrace.render`` calls for a
``GraphDiff``. Options: ``context`` (unchanged ops kept around each hunk,
default 3); text/markdown: ``max_ops`` and ``max_changed`` (rows shown per
structural / changed hunk); dot/svg/mermaid: ``direction``, ``level`` (how
much to collapse, see ``diffview``; dot/svg without it: collapsed until at most
``DOT_MAX_EDGES`` edges; an image over ``dot.MAX_LAYOUT_EDGES`` is refused, as a
graph view's is, the DOT text never); mermaid: ``max_edges``, ``max_chars``
(collapse further until the diagram fits); markdown: ``diagram`` (include
the Mermaid drawing, default True). The drawings are a ``views.View``
(``diffview``) drawn by ``dot.digraph`` and ``mermaid.flowchart``; all DOT
and Mermaid escaping comes from ``_escape``.
"""
from __future__ import annotations

import difflib
import textwrap
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import RenderError, UsageError
from ._escape import markdown_text, one_line
from .difftext import body_lines, detail_lines, label, render_text

if TYPE_CHECKING:  # pragma: no cover
    from ..compare import GraphDiff

COLORS = {  # fill, border: green added, red removed, amber changed
    "only_b": ("#d4f7d4", "#1a7f37"),
    "only_a": ("#fbd5d5", "#cf222e"),
    "changed": ("#fff1c2", "#bf8700"),
    "same": ("#ffffff", "#8c959f"),
    "context": ("#f6f8fa", "#8c959f"),
}


OPTIONS: Dict[str, Tuple[str, ...]] = {
    "text": ("context", "max_ops", "max_changed"),
    "markdown": ("context", "max_ops", "max_changed", "diagram", "direction", "level", "max_edges", "max_chars"),
    "dot": ("context", "direction", "level"),
    "mermaid": ("context", "direction", "level", "max_edges", "max_chars"),
}
for _fmt in ("svg", "png", "pdf"):
    OPTIONS[_fmt] = OPTIONS["dot"]
OPTIONS["terminal"] = OPTIONS["text"]
FORMATS = tuple(OPTIONS)


def render_diff(diff: "GraphDiff", fmt: str = "text", **opts: Any) -> Union[str, bytes]:
    """Draw ``diff`` as ``fmt`` (see ``FORMATS``); bytes for png/pdf."""
    fmt = "markdown" if fmt == "md" else fmt
    if fmt not in OPTIONS:
        near = difflib.get_close_matches(str(fmt), list(OPTIONS), n=1)
        raise UsageError(f"unknown diff format {fmt!r}", expected="one of " + ", ".join(OPTIONS), found=repr(fmt),
                         fix=(f"did you mean {near[0]!r}? " if near else "") + "pass one of the listed formats")
    for name in opts:
        if name not in OPTIONS[fmt]:
            near = difflib.get_close_matches(name, OPTIONS[fmt], n=1)
            raise UsageError(f"unknown option {name!r} for a diff as {fmt!r}", expected="one of "
                             + ", ".join(OPTIONS[fmt]), found=repr(name),
                             fix=(f"did you mean {near[0]!r}? " if near else "") + "pass only the listed options")
    for name in ("context", "max_ops", "max_changed"):  # (counts of rows)
        _count(name, opts.get(name, 0))
    if fmt in ("text", "terminal"):
        return render_text(diff, **opts)
    if fmt == "markdown":
        return render_markdown(diff, **opts)
    if fmt == "mermaid":
        return render_mermaid(diff, **opts)
    from ..diffview import LEVELS
    from .dot import check_layout_size, layout

    dv = _dot_view(diff, **opts)
    if fmt != "dot":  # (the text is never capped)
        check_layout_size(dv.view, default=f"without a level, a diff collapses to at most {DOT_MAX_EDGES} edges",
                          fix=f"draw less: a higher level (up to {LEVELS - 1}), or leave level out")
    dot = digraph(diff, dv=dv, **opts)
    if fmt == "dot":
        return dot.source
    data = layout(dot, fmt)
    return data.decode("utf-8") if fmt == "svg" else data


# -- text ------------------------------------------------------------------

# -- markdown ----------------------------------------------------------------

def render_markdown(diff: "GraphDiff", *, context: int = 3, max_ops: int = 40, max_changed: int = 8,
                    diagram: bool = True, **opts: Any) -> str:
    if not isinstance(diagram, bool):
        raise UsageError("diagram takes True or False", expected="a bool (draw the Mermaid diagram or not)",
                         found=repr(diagram), fix="pass diagram=False to leave the diagram out")
    _mermaid_options(**opts)  # (checked whether or not a diagram is drawn)
    out = [f"**torchtrace diff**: {diff.summary()}", ""]
    out.append(f"- A: {markdown_text(label(diff.a))}")
    out.append(f"- B: {markdown_text(label(diff.b))}")
    why = diff.why()
    if why:
        out += ["", "**Why**", ""]
        out.extend(f"- {markdown_text(one_line(line))}" for line in why)
    details = detail_lines(diff)
    if details:
        out += ["", "**Details**", ""]
        out.extend(f"- {markdown_text(one_line(line))}" for line in details)
    if diff.hunks:
        text = "\n".join(body_lines(diff, context=context, max_ops=max_ops, max_changed=max_changed)).strip("\n")
        fence = "```"
        while fence in text:
            fence += "`"
        out += ["", fence + "diff", text, fence]
        if diagram:
            try:
                drawn = render_mermaid(diff, context=context, **opts).rstrip("\n")
            except RenderError as e:  # (too big for one diagram: the text above still says it all)
                out += ["", f"_(no diagram: {markdown_text(e.problem)}; {markdown_text(e.found or '')})_"]
            else:
                out += ["", "```mermaid", drawn, "```"]
    return "\n".join(out) + "\n"


# -- drawings ------------------------------------------------------------------

def _title(diff: "GraphDiff", notes: Sequence[str] = ()) -> List[str]:
    lines = ["torchtrace diff: " + diff.summary()]
    why = diff.why()
    lines += why[:4] + ([f"... {len(why) - 4} more causes"] if len(why) > 4 else [])
    return lines + list(notes)


# edges a diff drawn by `dot` may have unless a level is asked for (as many as Mermaid
# allows): a diff of two unrelated 2,000-op graphs at level 0 is ~2,000 edges, which
# `dot` lays out for minutes; at this size it takes under a second
DOT_MAX_EDGES = 500


def _dot_view(diff: "GraphDiff", *, context: int = 3, level: Optional[int] = None, **_: Any) -> Any:
    """The ``DiffView`` drawn by ``digraph``: without a ``level``, the most
    detailed level with at most ``DOT_MAX_EDGES`` edges."""
    from ..diffview import LEVELS, build_diff_view

    if level is not None:
        return build_diff_view(diff, context=context, level=_level(level))
    for lv in range(LEVELS):  # (the view's notes say how far it collapsed)
        dv = build_diff_view(diff, context=context, level=lv)
        if len(dv.view.edges) <= DOT_MAX_EDGES:
            break
    return dv


def digraph(diff: "GraphDiff", *, context: int = 3, direction: str = "TB", level: Optional[int] = None,
            dv: Any = None, **_: Any) -> Any:
    """The diff as a ``graphviz.Digraph``: ops only in B green, only in A
    red (dashed edges), changed amber, unchanged runs as grey folders. ``dv``:
    the ``DiffView`` to draw, when the caller built it (see ``_dot_view``)."""
    from ._escape import dot_text
    from .dot import digraph as view_digraph

    if dv is None:
        dv = _dot_view(diff, context=context, level=level)

    def box(b: Any) -> Dict[str, str]:
        status = dv.status[b.id]
        fill, border = COLORS[status if b.kind != "chunk" or status != "same" else "context"]
        attrs = {"fillcolor": fill, "color": border}
        if status != "same":
            attrs["penwidth"] = "2"
        return attrs

    def edge(e: Any) -> Dict[str, str]:
        status = dv.edge_status[(e.src, e.dst)]
        if status == "same":
            return {}
        return {"color": COLORS[status][1], "style": "dashed" if status == "only_a" else "solid", "penwidth": "1.5"}

    g = view_digraph(dv.view, direction=direction, name="torchtrace_diff", extra_box=box, extra_edge=edge)
    g.attr(label=dot_text("\n".join(_title(diff, dv.view.notes))), labelloc="t", fontsize="11")
    return g


STATUS_CLASS = {"only_b": "added", "only_a": "removed", "changed": "changed", "same": "same",
                "context": "context"}


def _class_defs() -> Dict[str, str]:
    out = {}
    for status, name in STATUS_CLASS.items():
        fill, border = COLORS[status]
        width = "2px" if status in ("only_a", "only_b", "changed") else "1px"
        dash = ",stroke-dasharray:4 2" if status == "context" else ""
        out[name] = f"fill:{fill},stroke:{border},stroke-width:{width},color:#1b2a41{dash}"
    out["note"] = "fill:#f6f8fa,stroke:#d0d7de,color:#1b2a41"
    return out


def render_mermaid(diff: "GraphDiff", *, context: int = 3, direction: str = "TB", level: int = 0,
                   max_edges: Optional[int] = None, max_chars: Optional[int] = None, **_: Any) -> str:
    """A Mermaid flowchart (``mermaid.flowchart`` over the diff's view),
    collapsed level by level until it has at most ``max_edges`` edges and
    ``max_chars`` characters (Mermaid's defaults, which Markdown hosts
    cannot raise). Removed edges are dashed red, added ones green."""
    from ..diffview import LEVELS, build_diff_view
    from .mermaid import text_size

    direction, level, max_edges, max_chars = _mermaid_options(direction, level, max_edges, max_chars)
    for lv in range(level, LEVELS):
        dv = build_diff_view(diff, context=context, level=lv)
        text = _mermaid(diff, dv, direction, edge_labels=lv == 0)
        if len(dv.view.edges) <= max_edges and text_size(text) <= max_chars:
            return text
    raise RenderError("the diff does not fit in one Mermaid diagram",
                      expected=f"at most {max_edges} edges and {max_chars} characters",
                      found=f"{len(dv.view.edges)} edges, {text_size(text)} characters after collapsing",
                      fix="render it as 'svg' or 'dot', or compare smaller graphs")


def _mermaid(diff: "GraphDiff", dv: Any, direction: str, edge_labels: bool) -> str:
    from ..views import Box, View
    from .mermaid import flowchart

    note = Box(id="why", kind="chunk", title=diff.summary(), lines=_wrapped(diff.why()[:4]), order=-1)
    view = View((note, *dv.view.boxes), dv.view.edges, dv.view.clusters, dv.view.notes)

    def class_of(b: Any) -> str:
        if b.id == "why":
            return "note"
        status = dv.status[b.id]
        return STATUS_CLASS["context" if b.kind == "chunk" and status == "same" else status]

    text = flowchart(view, direction=direction, edge_labels=edge_labels, comments=tuple(_title(diff, dv.view.notes)),
                     class_of=class_of, class_defs=_class_defs())
    links: Dict[str, List[str]] = {}
    for k, e in enumerate(view.edges):  # flowchart writes the edges in this order
        status = dv.edge_status[(e.src, e.dst)]
        if status != "same":
            links.setdefault(status, []).append(str(k))
    for status, idx in links.items():
        dash = ",stroke-dasharray:4 3" if status == "only_a" else ""
        text += f"  linkStyle {','.join(idx)} stroke:{COLORS[status][1]},stroke-width:2px{dash}\n"
    return text


def _wrapped(lines: Sequence[str], most: int = 12) -> Tuple[str, ...]:
    """Lines of at most LINE_WIDTH characters (a label cuts longer ones), the
    continuation indented; at most ``most`` of them."""
    from .dot import LINE_WIDTH

    out = [piece for line in lines for piece in
           (textwrap.wrap(line, LINE_WIDTH, subsequent_indent="  ", break_on_hyphens=False) or [""])]
    return tuple(out if len(out) <= most else out[: most - 1] + ["…"])


def _mermaid_options(direction: str = "TB", level: int = 0, max_edges: Optional[int] = None,
                     max_chars: Optional[int] = None) -> Tuple[str, int, int, int]:
    """A diff's Mermaid options, checked, with the defaults filled in."""
    from .dot import check_direction
    from .mermaid import MAX_CHARS, MAX_EDGES

    return (check_direction(direction), _level(level),
            MAX_EDGES if max_edges is None else _positive("max_edges", max_edges),
            MAX_CHARS if max_chars is None else _positive("max_chars", max_chars))


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"bad value for {name}", expected="a positive integer", found=repr(value),
                         fix=f"leave {name} out to use Mermaid's default limit")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"bad value for {name}", expected="an integer, 0 or more", found=repr(value),
                         fix=f"pass e.g. {name}=3, or leave it out")
    return value


def _level(value: Any) -> int:
    from ..diffview import LEVELS

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < LEVELS:
        raise UsageError("bad value for level", expected=f"an integer from 0 to {LEVELS - 1}", found=repr(value),
                         fix="pass level=0 for the most detail; higher levels collapse more")
    return value
