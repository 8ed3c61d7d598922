"""Graphviz output: every DOT the suite produces goes through the real `dot`
with no error or warning; SVG/PNG/PDF come out; a missing `dot` says how to
install it."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

import torchtrace
from torchtrace.errors import RenderError
from torchtrace.renderers.dot import LONG_SPANS, DotMissing, digraph, rank_spans
from torchtrace.views import build_view

pytestmark = pytest.mark.dot

MODELS = ["gpt2_2", "gpt2_12", "bert", "llama", "t5", "transformer_encoder", "lstm", "resnet_block", "branchy",
          "cell_loop", "rnn", "hostile"]
VARIANTS = {"default": {}, "both": {"phase": "both"}, "unfolded": {"fold": False}, "depth1": {"depth": 1},
            "lr": {"direction": "LR"}}
SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", MODELS)
def test_dot_accepts_every_view(viz_graph, dot_check, name, variant):
    src = torchtrace.render(viz_graph(name), "dot", **VARIANTS[variant])
    svg = dot_check(src)
    view = build_view(viz_graph(name), **{k: v for k, v in VARIANTS[variant].items() if k != "direction"})
    root = ET.fromstring(svg)
    drawn = [g for g in root.iter(SVG + "g") if g.get("class") == "node"]
    assert len(drawn) == len(view.boxes)
    assert len([g for g in root.iter(SVG + "g") if g.get("class") == "cluster"]) == len(view.clusters)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["default", "both"])
def test_48_layer_default_view_is_small_and_lays_out(viz_graph, dot_check, variant):
    g = viz_graph("gpt2_48")
    view = build_view(g, **VARIANTS[variant])
    assert len(view.boxes) <= 50 and len(view.edges) <= 80
    dot_check(digraph(view).source)


def test_svg_png_pdf(viz_graph):
    g = viz_graph("cell_loop")
    svg = torchtrace.render(g, "svg")
    assert isinstance(svg, str) and ET.fromstring(svg).tag == SVG + "svg"
    png = torchtrace.render(g, "png")
    assert isinstance(png, bytes) and png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 100 and height > 100
    pdf = torchtrace.render(g, "pdf")
    assert isinstance(pdf, bytes) and pdf.startswith(b"%PDF-") and b"/Type /Page" in pdf


def test_drawing_conventions(viz_graph):
    src = torchtrace.render(viz_graph("branchy"), "dot")
    witness = [ln for ln in src.splitlines() if "read True" in ln or "read False" in ln]
    assert witness and all('fillcolor="#ffe1e1"' in ln and "penwidth=2" in ln for ln in witness)
    assert re.search(r'shape=invhouse[^\n]*tooltip="input', src)  # the traced input
    assert "shape=house" in src  # the output
    assert "shape=note" in src  # parameters
    both = torchtrace.render(viz_graph("gpt2_2"), "dot", phase="both")
    assert re.search(r'fillcolor="#fdebd3"[^\n]*style="rounded,filled,dashed"', both)  # backward op
    assert 'label="f32[1,8,32]"' in torchtrace.render(viz_graph("gpt2_2"), "dot")  # tensor types on edges


def test_hostile_module_names_are_drawn_verbatim(viz_graph, dot_check):
    from conftest import HOSTILE_KEYS

    svg = dot_check(torchtrace.render(viz_graph("hostile"), "dot", fold=False, depth=2))
    texts = ["".join(t.itertext()) for t in ET.fromstring(svg).iter(SVG + "text")]
    for key in HOSTILE_KEYS:
        first_line = f"blocks.{key} · Linear".split("\n")[0]
        assert any(t.strip() == first_line.strip() for t in texts), key
    assert 'Weird<T> & "Q"' in " ".join(texts)


def test_missing_dot_says_how_to_install(viz_graph, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DotMissing) as err:
        torchtrace.render(viz_graph("cell_loop"), "svg")
    assert isinstance(err.value, RenderError)
    assert "apt-get install graphviz" in str(err.value) and "brew install graphviz" in str(err.value)
    assert torchtrace.render(viz_graph("cell_loop"), "dot").startswith("//")  # DOT text needs no binary


def test_big_graphs_bound_dot_layout(viz_graph, dot_check):
    src = torchtrace.render(viz_graph("gpt2_12"), "dot", fold=False, depth=9)
    assert "nslimit=2" in src and "mclimit=0.5" in src and "splines=line" in src
    small = torchtrace.render(viz_graph("branchy"), "dot")
    assert "nslimit" not in small and "splines" not in small


def _chain(n: int):
    """``h = h * x`` n times: the edge from ``x`` to the k-th op skips k - 1 ranks."""
    import torch

    x = torch.ones(2)
    with torchtrace.trace() as t:
        h = x
        for _ in range(n):
            h = h * x
    return t.graph


def test_views_whose_edges_span_many_ranks_get_cheaper_layout_settings():
    """Long edges become chains of virtual nodes in `dot`: a MobileNetV2
    forward+backward view, unfolded (1,035 edges), took 97 s to lay out."""
    for n in (3, 5, 40):
        assert rank_spans(build_view(_chain(n), fold=False, max_boxes=None)) == n * (n - 1) // 2
    long = build_view(_chain(420), fold=False, max_boxes=None)
    assert rank_spans(long) > LONG_SPANS
    assert "nslimit=0.01" in digraph(long).source and "mclimit=0.05" in digraph(long).source
    short = build_view(_chain(300), fold=False, max_boxes=None)  # (big, spans below the bound)
    assert "nslimit=2" in digraph(short).source


def test_a_fully_expanded_forward_and_backward_lays_out_in_seconds(viz_graph, dot_check):
    """Spline routing of a fully expanded 2-layer GPT-2 forward+backward (274
    boxes, 356 edges here) took 21 s; bounded, with straight edges, under 1 s."""
    view = build_view(viz_graph("gpt2_2"), phase="both", depth=10, fold=False)
    assert len(view.boxes) > 250 and len(view.edges) > 300
    src = digraph(view).source
    assert "splines=line" in src and "nslimit=2" in src
    dot_check(src)


@pytest.mark.dot
def test_an_empty_view_says_so_in_the_drawing(viz_graph, dot_check):
    """`phase="optimizer"` on a forward-only graph: the SVG was blank (the reason
    only in a `//` comment), where Mermaid draws a note."""
    svg = dot_check(torchtrace.render(viz_graph("cell_loop"), "dot", phase="optimizer"))
    texts = [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert texts == ["nothing to draw: no ops in this view"]
