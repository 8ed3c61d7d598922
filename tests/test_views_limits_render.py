"""Limits of the drawings (2026-11-27 views audit): an image of a diff at an
explicit ``level`` is capped at ``dot.MAX_LAYOUT_EDGES`` edges as a graph
view's is (the DOT text is not), and a Mermaid fit with an explicit ``depth``
builds each view once and never ends coarser than the default view."""
from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest

import torchtrace
from torchtrace.errors import RenderError
from torchtrace.renderers import diffs, dot, mermaid
from test_render_mermaid import flat_graph


def _chain(op, n: int):
    import torch

    x = torch.randn(3)
    with torchtrace.trace() as t:
        for _ in range(n):
            x = op(x)
    return t.graph


@pytest.fixture(scope="module")
def unrelated_diff():
    """Every op differs: 58 edges at level 0, none at level 3."""
    import torch

    return torchtrace.diff(_chain(torch.sin, 30), _chain(torch.cos, 30))


def _boxes(text: str) -> int:
    return len(re.findall(r"^\s*n\d+[(\[{]", text, re.M))


def _edges(text: str) -> int:
    return len(re.findall(r"^\s*n\d+ -\.?->", text, re.M))


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_an_image_of_a_diff_at_an_explicit_level_is_capped_as_a_graph_view_is(unrelated_diff, dot_check,
                                                                               monkeypatch, fmt):
    """`level=0` bypassed the cap: two passes of a 48-layer model kept `dot` busy for
    minutes. (The cap is lowered here so that a small diff is over it.)"""
    monkeypatch.setattr(dot, "MAX_LAYOUT_EDGES", 40)
    monkeypatch.setattr(diffs, "DOT_MAX_EDGES", 20)
    with pytest.raises(RenderError, match="too many edges for `dot` to lay out") as err:
        torchtrace.render(unrelated_diff, fmt, level=0)
    e = err.value
    assert "at most 40 edges" in e.expected and "collapses to at most 20 edges" in e.expected
    assert e.found == "58 edges, 60 boxes"
    assert "a higher level" in e.fix and "format 'dot'" in e.fix
    text = torchtrace.render(unrelated_diff, "dot", level=0)  # the text is never capped
    assert text.count(" -> ") == 58
    dot_check(text)
    assert torchtrace.render(unrelated_diff, "svg", level=3).startswith("<?xml")  # under the cap: drawn
    auto = torchtrace.render(unrelated_diff, "svg")  # without a level it collapses below the cap itself
    assert "<svg" in auto and "collapsed to level 3" in auto


def test_a_mermaid_depth_that_cannot_fit_ends_as_the_default_view(mermaid_check):
    """3,000 ops of the root call: no depth fits 500 edges. The default view chunks them
    into 50 boxes at most; with `depth=1` or `2` the fit went on to 25 (14 boxes drawn)."""
    g = flat_graph(3000)
    default = torchtrace.render(g, "mermaid")
    assert "collapsed to fit" not in default and _boxes(default) == 27
    texts = [torchtrace.render(g, "mermaid", depth=depth) for depth in (1, 2)]
    for depth, text in zip((1, 2), texts):
        assert _boxes(text) == _boxes(default)
        assert f"collapsed to fit Mermaid limits (500 edges, 50000 chars): depth {depth} -> automatic" in text
    for version in ("mermaid", "mermaid-v11"):
        for res in mermaid_check(texts, version):
            assert res["ok"] and res["model"]["nodes"] == 27, res["problems"]


def test_a_mermaid_fit_builds_each_view_once(monkeypatch):
    """Dropping edge labels rebuilt the same view, then each smaller one was built in turn:
    tens of seconds for a view of thousands of ops. With `depth=1` on a graph no depth
    fits: the view asked for and the default view, once each."""
    built = []
    real = mermaid.build_view
    monkeypatch.setattr(mermaid, "build_view", lambda graph, o: built.append(o) or real(graph, o))
    torchtrace.render(flat_graph(3000), "mermaid", depth=1)
    assert [o.depth for o in built] == [1, None]
    assert max(Counter(built).values()) == 1


def _nested(levels: int):
    """Linear layers nested in pairs of Sequentials, each of its own width (nothing folds)."""
    import torch
    import torch.nn as nn

    width = itertools.count(2)

    def build(level: int) -> nn.Module:
        if level == 0:
            w = next(width)
            return nn.Linear(w, w + 1)
        return nn.Sequential(build(level - 1), build(level - 1))

    model = build(levels)
    with torchtrace.trace(model) as t:
        model(torch.randn(1, 2))
    return t.graph


def test_a_mermaid_depth_too_big_shrinks_to_the_deepest_that_fits(monkeypatch, mermaid_check):
    """Views of 3, 5, 9, 17 and 65 edges at depths 1 to 5; the default view is depth 1
    (max_boxes=4). Within 12 edges, `depth=5` draws depth 3, not the default view."""
    g = _nested(4)
    built = []
    real = mermaid.build_view
    monkeypatch.setattr(mermaid, "build_view", lambda graph, o: built.append(o) or real(graph, o))
    text = torchtrace.render(g, "mermaid", depth=5, max_boxes=4, max_edges=12)
    assert "depth 5 -> 3\n" in text and "\n%% depth 3: " in text and _edges(text) == 9
    assert max(Counter(built).values()) == 1
    assert {o.depth for o in built} == {5, None, 2, 3, 4}
    default = torchtrace.render(g, "mermaid", max_boxes=4, max_edges=12)
    assert "\n%% depth 1 (auto, max_boxes=4)" in default and _edges(default) == 3
    assert all(r["ok"] for r in mermaid_check([text, default]))


@pytest.mark.parametrize("opts", [{"phase": "backward"}, {"phase": "both", "params": True},
                                  {"focus": "transformer.h.1", "phase": "backward"}])
def test_the_text_view_lists_every_box_before_a_line_reads_it(opts):
    """(Audit: a backward view's saved forward values were listed after the frames that
    read them: `<- b1, in5` twenty lines before `in5` was named.)"""
    import zoo

    m, ids = zoo.gpt2(n_layer=2), zoo.token_ids(8)
    with torchtrace.trace(m) as t:
        m(ids).logits.sum().backward()
    text = torchtrace.render(t.graph, "text", **opts)
    named, late, reads = set(), [], 0
    for line in text.splitlines():
        for ref in re.findall(r"<- (.*)$", line)[0].split(", ") if "<- " in line else ():
            reads += 1
            if ref not in named:
                late.append((ref, line.strip()[:60]))
        found = re.match(r"\s*([a-z]+\d+)\s", line)
        if found:
            named.add(found.group(1))
    assert reads > 10 and not late, late[:5]


def test_a_mermaid_depth_that_cannot_fit_unfolded_ends_at_the_deepest_folded_depth_that_fits():
    """(A review: `depth=3, fold=False` at 30 edges on a 12-layer GPT-2 ended at depth 1,
    12 boxes, although depth 2 folded, without parameters, fits: 25 boxes. The depths
    below the default view were counted from the unfolded view's.)"""
    import zoo

    m, ids = zoo.gpt2(n_layer=12).train(), zoo.token_ids(8)
    with torchtrace.trace(m) as t:
        m(ids, labels=ids)
    got = torchtrace.render(t.graph, "mermaid", depth=3, fold=False, max_edges=30)
    fits = torchtrace.render(t.graph, "mermaid", depth=2, params=False, edge_labels=False, max_edges=30)
    assert "collapsed to fit" not in fits  # (depth 2, folded, no parameters: fits as it is)

    def boxes(text: str) -> str:
        return re.search(r"torchtrace view: \d+ of \d+ ops, (\d+) boxes", text).group(1)

    assert boxes(got) == boxes(fits) and got.count("-->") <= 30, got.splitlines()[:3]
