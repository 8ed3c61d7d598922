"""Jupyter display of a Graph: an inline SVG of the default view when the
Graphviz ``dot`` program is installed, else the Mermaid diagram as Markdown
(JupyterLab and VS Code draw ```` ```mermaid ```` fences)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..ir import Graph
from .dot import DotMissing


def svg(graph: Graph, **opts: Any) -> Optional[str]:
    """The default view as SVG text, or None when ``dot`` is missing."""
    from . import render

    try:
        out = render(graph, "svg", **opts)
    except DotMissing:
        return None
    assert isinstance(out, str)
    return out


def mimebundle(graph: Graph, **opts: Any) -> Dict[str, Any]:
    """What ``Graph._repr_mimebundle_`` returns: ``image/svg+xml`` (or
    ``text/markdown`` with a Mermaid fence when dot is missing) plus
    ``text/plain``."""
    from . import render

    bundle: Dict[str, Any] = {"text/plain": repr(graph)}
    image = svg(graph, **opts)
    if image is not None:
        bundle["image/svg+xml"] = image
    else:
        bundle["text/markdown"] = render(graph, "markdown", **opts)
    return bundle
