"""torchtrace.render: formats, options and their errors, GraphDiff dispatch,
Jupyter display."""
from __future__ import annotations

import pytest

import torchtrace
from torchtrace.errors import RenderError, UsageError
from torchtrace.renderers import FORMAT_OPTIONS, FORMATS, render
from torchtrace.renderers import notebook


def test_public_render_is_the_renderer_function():
    assert torchtrace.render is render
    assert set(FORMATS) == {"text", "dot", "svg", "png", "pdf", "mermaid", "markdown", "terminal"}
    assert set(FORMAT_OPTIONS) == set(FORMATS)


@pytest.mark.dot
@pytest.mark.parametrize("fmt, kind", [("text", str), ("dot", str), ("svg", str), ("png", bytes), ("pdf", bytes),
                                       ("mermaid", str), ("markdown", str), ("terminal", str)])
def test_every_format(viz_graph, fmt, kind):
    out = render(viz_graph("branchy"), fmt, depth=1, phase="forward", fold=True)
    assert isinstance(out, kind) and len(out) > 100


def test_unknown_format_lists_the_valid_ones(viz_graph):
    with pytest.raises(RenderError) as err:
        render(viz_graph("branchy"), "gif")
    msg = str(err.value)
    assert "unknown format" in msg and all(f in msg for f in FORMATS)
    with pytest.raises(RenderError, match="did you mean 'svg'"):
        render(viz_graph("branchy"), "svgg")


def test_unknown_option_lists_the_valid_ones(viz_graph):
    with pytest.raises(UsageError) as err:
        render(viz_graph("branchy"), "dot", detph=2)
    msg = str(err.value)
    assert "unknown option 'detph' for format 'dot'" in msg and "did you mean 'depth'" in msg
    assert all(o in msg for o in ("depth", "fold", "phase", "focus", "hide", "direction"))
    with pytest.raises(UsageError, match="width"):
        render(viz_graph("branchy"), "dot", width=80)  # a terminal option


def test_a_hide_entry_that_is_not_a_tag_is_a_usage_error(viz_graph):
    """`hide=[["view"]]` (a list in the list) raised `TypeError: unhashable type`."""
    for bad in ([["view"]], [{"view": 1}], ["view", 3]):
        with pytest.raises(UsageError, match="bad value in hide"):
            render(viz_graph("branchy"), "text", hide=bad)


def test_render_needs_a_graph():
    with pytest.raises(UsageError, match="needs a Graph or a GraphDiff"):
        render({"nodes": []}, "text")


def test_graph_diff_goes_to_the_diff_renderers(monkeypatch):
    calls = []

    class GraphDiff:  # what torchtrace.compare returns; only the name matters here
        pass

    import torchtrace.renderers.diffs as diffs

    monkeypatch.setattr(diffs, "render_diff", lambda d, fmt, **o: calls.append((d, fmt, o)) or "drawn")
    d = GraphDiff()
    assert render(d, "mermaid", context=2) == "drawn"
    assert calls == [(d, "mermaid", {"context": 2})]


@pytest.mark.dot
def test_notebook_shows_svg(viz_graph):
    g = viz_graph("cell_loop")
    bundle = g._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "image/svg+xml"}
    assert bundle["image/svg+xml"].lstrip().startswith("<?xml") and "<svg" in bundle["image/svg+xml"]
    assert bundle["text/plain"] == repr(g)


def test_notebook_falls_back_to_mermaid_without_dot(viz_graph, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    g = viz_graph("cell_loop")
    bundle = notebook.mimebundle(g)
    assert set(bundle) == {"text/plain", "text/markdown"}
    assert bundle["text/markdown"].startswith("```mermaid\n")
    assert notebook.svg(g) is None


def test_an_image_of_a_view_too_big_for_dot_is_refused_with_a_way_out():
    """`--depth 10 --no-fold --phase both` of a 4,000-op step kept `dot` busy
    for minutes; the DOT source is still given."""
    import torch

    import torchtrace

    x, y = torch.ones(2), torch.ones(2)
    with torchtrace.trace() as t:
        for _ in range(1100):
            x = x + y
    src = render(t.graph, "dot", fold=False, max_boxes=10000)
    assert src.count("->") > 2000
    with pytest.raises(RenderError, match="too many edges for `dot` to lay out") as err:
        render(t.graph, "svg", fold=False, max_boxes=10000)
    assert "format 'dot'" in str(err.value)
    assert "<svg" in render(t.graph, "svg")  # folded (the default): one box for the loop
