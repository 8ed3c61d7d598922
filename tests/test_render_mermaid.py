"""Mermaid: every diagram the suite draws passes the real parser of mermaid
12 and 11 and stays within 500 edges / 50,000 characters; ids are safe; the
exporter collapses until the diagram fits and says so."""
from __future__ import annotations

import re

import pytest

import torchtrace
from torchtrace.errors import UsageError
from torchtrace.ir import Graph, Node, Source, Value
from torchtrace.renderers.mermaid import MAX_CHARS, MAX_EDGES, text_size

pytestmark = pytest.mark.mermaid

MODELS = ["gpt2_2", "gpt2_12", "gpt2_48", "bert", "llama", "t5", "transformer_encoder", "lstm", "resnet_block",
          "branchy", "cell_loop", "rnn", "hostile"]
VARIANTS = {"default": {}, "both": {"phase": "both"}, "unfolded": {"fold": False},
            "deep": {"depth": 9, "fold": False}, "lr": {"direction": "LR", "edge_labels": False}}


def flat_graph(n: int) -> Graph:
    """n chained ops on n different lines, no modules: nothing to collapse or fold."""
    values = [Value("v0", (4,), "float32", role="input", name="x")]
    nodes = []
    for k in range(n):
        values.append(Value(f"v{k + 1}", (4,), "float32"))
        nodes.append(Node(f"n{k}", "aten.sin.default" if k % 2 else "aten.cos.default", (f"v{k}",), (f"v{k + 1}",),
                          source=Source("/s/script.py", 10 + k, "<module>")))
    return Graph(meta={}, values=tuple(values), nodes=tuple(nodes), outputs=(f"v{n}",))


@pytest.fixture(scope="module")
def diagrams(viz_graph):
    out = {f"{m}/{v}": torchtrace.render(viz_graph(m), "mermaid", **opts)
           for m in MODELS for v, opts in VARIANTS.items()
           if not (m == "gpt2_48" and v in ("unfolded", "deep"))}  # same as gpt2_12 there, only slower
    out["gpt2_48/deep"] = torchtrace.render(viz_graph("gpt2_48"), "mermaid", depth=9, fold=False, hide=())
    out["flat_3000"] = torchtrace.render(flat_graph(3000), "mermaid")
    out["flat_3000/max_boxes=None"] = torchtrace.render(flat_graph(3000), "mermaid", max_boxes=None)
    out["tight_limits"] = torchtrace.render(viz_graph("gpt2_2"), "mermaid", max_edges=20, max_chars=3000)
    out["placeholder"] = torchtrace.render(viz_graph("gpt2_2"), "mermaid", max_edges=1, max_chars=400)
    md = torchtrace.render(viz_graph("hostile"), "markdown", fold=False)
    out["markdown/hostile"] = md[len("```mermaid\n"):-len("```\n")]
    return out


@pytest.fixture(scope="module")
def parsed(diagrams, mermaid_check):
    names = list(diagrams)
    return {version: dict(zip(names, mermaid_check([diagrams[n] for n in names], version)))
            for version in ("mermaid", "mermaid-v11")}


def test_every_diagram_parses_in_mermaid_12_and_11(diagrams, parsed):
    for version, results in parsed.items():
        bad = {name: r["problems"] for name, r in results.items() if not r["ok"]}
        assert not bad, (version, bad)


def test_every_diagram_is_within_mermaid_limits(diagrams, parsed):
    for name, text in diagrams.items():
        r = parsed["mermaid"][name]
        assert r["model"]["edges"] <= MAX_EDGES, name
        assert r["textSize"] <= MAX_CHARS and text_size(text) == r["textSize"], name


def test_diagrams_that_had_to_shrink_say_so(diagrams, parsed, viz_graph):
    deep = diagrams["gpt2_48/deep"]
    assert "%% collapsed to fit Mermaid limits (500 edges, 50000 chars):" in deep
    flat = diagrams["flat_3000/max_boxes=None"]
    assert "ops grouped into chunks" in flat
    assert parsed["mermaid"]["flat_3000/max_boxes=None"]["model"]["nodes"] > 3
    tight = diagrams["tight_limits"]
    assert "edge labels dropped" in tight and parsed["mermaid"]["tight_limits"]["model"]["edges"] <= 20
    assert "graph too large for Mermaid" in diagrams["placeholder"]
    shown = sum(1 for n in viz_graph("gpt2_2").nodes if n.phase == "forward" and "autograd_internal" not in n.tags)
    assert f"{shown} ops in this view" in diagrams["placeholder"]  # (all of it: the fix was cut off)
    assert "render fmt=#39;svg#39; instead" in diagrams["placeholder"], diagrams["placeholder"]
    assert "collapsed to fit" not in diagrams["gpt2_12/default"]


def test_layout_is_pinned_to_dagre(diagrams):
    for name, text in diagrams.items():
        assert text.startswith("---\nconfig:\n  layout: dagre\n"), name


def test_ids_are_safe_and_never_clash(diagrams):
    for name, text in diagrams.items():
        node_ids = set(re.findall(r"^\s*(\w+)[(\[{]", text, re.M)) - {"subgraph"}
        sub_ids = set(re.findall(r"^\s*subgraph (\w+) ", text, re.M))
        assert all(re.fullmatch(r"n\d+", i) for i in node_ids), (name, node_ids)
        assert all(re.fullmatch(r"s\d+", i) for i in sub_ids), name
        assert text.count('"') % 2 == 0, name  # labels hold no raw quote: every one opens or closes


def test_fold_is_visible_in_the_diagram(diagrams):
    text = diagrams["gpt2_12/default"]
    assert text.count("GPT2Block") == 2  # the %% note and the one frame
    assert re.search(r'subgraph s\d+ \["h#46;0…11 · GPT2Block × 12"\]', text)


def test_markdown_is_a_fenced_block(viz_graph):
    md = torchtrace.render(viz_graph("cell_loop"), "markdown")
    assert md.startswith("```mermaid\n---\nconfig:") and md.endswith("\n```\n")


@pytest.mark.parametrize("opts, word", [({"direction": "XY"}, "direction"), ({"edge_labels": 1}, "edge_labels"),
                                        ({"max_edges": 0}, "max_edges"), ({"width": 80}, "width")])
def test_bad_mermaid_options(viz_graph, opts, word):
    with pytest.raises(UsageError) as err:
        torchtrace.render(viz_graph("cell_loop"), "mermaid", **opts)
    assert word in str(err.value)


def test_an_empty_view_still_draws(mermaid_check):
    text = torchtrace.render(Graph(), "mermaid")
    assert "nothing to draw" in text
    for version in ("mermaid", "mermaid-v11"):
        [res] = mermaid_check([text], version)
        assert res["ok"], res["problems"]


def test_a_huge_depth_is_the_deepest_view_at_once(viz_graph):
    """Mermaid's fitting tried every depth from the one asked for down: `-d
    100000000` took minutes and gigabytes. Depths past the deepest module path
    draw the same view."""
    g = viz_graph("branchy")
    huge = torchtrace.render(g, "mermaid", depth=10**7)  # (tried 10**7 attempts before: minutes, gigabytes)
    assert huge.replace("depth=10000000", "") == torchtrace.render(g, "mermaid", depth=50).replace("depth=50", "")
