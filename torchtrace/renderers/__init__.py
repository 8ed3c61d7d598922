"""Renderers: draw a Graph (through one ``views`` layer) as text, DOT, SVG,
PNG, PDF, Mermaid, Markdown or a rich terminal report. Nothing here imports
torch; every renderer reads only the IR.

    torchtrace.render(graph, "svg", depth=2, phase="both")

``render`` also draws a ``GraphDiff`` (``torchtrace.compare``): it hands the
diff to ``renderers.diffs.render_diff``. Building blocks for other
renderers: ``_escape`` (all escaping and ids), ``dot.digraph``,
``mermaid.flowchart``, ``views.build_view``.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, Tuple, Union

from ..errors import RenderError, UsageError
from ..ir import Graph
from ..views import VIEW_OPTIONS, ViewOptions, view_options

FORMATS: Tuple[str, ...] = ("text", "dot", "svg", "png", "pdf", "mermaid", "markdown", "terminal")
# renderer-specific options, on top of the view options (VIEW_OPTIONS)
FORMAT_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "text": (),
    "dot": ("direction",),
    "svg": ("direction",),
    "png": ("direction",),
    "pdf": ("direction",),
    "mermaid": ("direction", "edge_labels", "max_edges", "max_chars"),
    "markdown": ("direction", "edge_labels", "max_edges", "max_chars"),
    "terminal": ("width",),
}

__all__ = ["render", "FORMATS", "FORMAT_OPTIONS", "VIEW_OPTIONS", "split_options"]


def split_options(fmt: str, opts: Dict[str, Any]) -> Tuple[ViewOptions, Dict[str, Any]]:
    """Validate ``opts`` for ``fmt``: (view options, renderer options)."""
    own = FORMAT_OPTIONS[fmt]
    for name in opts:
        if name not in VIEW_OPTIONS and name not in own:
            valid = (*VIEW_OPTIONS, *own)
            near = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise UsageError(f"unknown option {name!r} for format {fmt!r}", expected="one of " + ", ".join(valid),
                             found=repr(name), fix=f"{hint}pass only the listed options")
    view = view_options(**{k: v for k, v in opts.items() if k in VIEW_OPTIONS})
    return view, {k: v for k, v in opts.items() if k in own}


def render(obj: Any, fmt: str = "text", **opts: Any) -> Union[str, bytes]:
    """Draw ``obj`` (a Graph or a GraphDiff) as ``fmt``.

    Formats: text, dot, svg, png, pdf (bytes for png/pdf), mermaid, markdown
    (a fenced Mermaid block), terminal (the rich report as plain text).
    A Graph's view options (any format): depth, fold, phase, focus, hide,
    params, max_boxes -- see ``torchtrace.views.ViewOptions``. Format options:
    ``direction`` ("TB"/"LR"/…; dot and mermaid), ``edge_labels``,
    ``max_edges``, ``max_chars`` (mermaid limits to fit), ``width`` (terminal).
    A GraphDiff takes its own options instead (``renderers.diffs.OPTIONS``):
    ``context`` (unchanged ops around a hunk), ``level`` (how far unchanged
    runs collapse), ``max_ops``/``max_changed`` (text), ``direction``,
    ``max_edges``/``max_chars`` (mermaid), ``diagram`` (markdown).
    """
    if type(obj).__name__ == "GraphDiff":
        from .diffs import render_diff

        return render_diff(obj, fmt, **opts)
    if not isinstance(fmt, str) or fmt not in FORMATS:
        near = difflib.get_close_matches(str(fmt), FORMATS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise RenderError("unknown format", expected="one of " + ", ".join(FORMATS), found=repr(fmt),
                          fix=f"{hint}pass one of the listed formats")
    if not isinstance(obj, Graph):
        raise UsageError("render() needs a Graph or a GraphDiff", expected="a torchtrace.Graph",
                         found=type(obj).__name__,
                         fix="load a graph with torchtrace.load(path) or record one with torchtrace.trace()")
    view_opts, own = split_options(fmt, opts)
    if fmt == "text":
        from .text import render_text

        return render_text(obj, view_opts)
    if fmt in ("dot", "svg", "png", "pdf"):
        from .dot import render_graphviz

        return render_graphviz(obj, fmt, view_opts, **own)
    if fmt in ("mermaid", "markdown"):
        from .mermaid import render_mermaid

        return render_mermaid(obj, view_opts, markdown=fmt == "markdown", **own)
    from .terminal import render_terminal

    return render_terminal(obj, view_opts, **own)
