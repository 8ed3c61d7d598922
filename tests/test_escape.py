"""renderers/_escape.py: tables of hostile inputs, then the same inputs through
the real `dot` and the real Mermaid parser (11 and 12)."""
from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

import graphviz
import pytest
from graphviz.quoting import quote

from torchtrace.renderers._escape import (IdMaker, clean, dot_html, dot_text, dot_tooltip, html_text, mermaid_comment,
                                          mermaid_label, safe_id, shorten)
from torchtrace.renderers.dot import LINE_WIDTH, html_label

HOSTILE = [
    "plain", 'say "hi"', "it's", "back\\slash", "trailing\\", "\\N \\G \\E \\T \\H \\L \\n \\l", "<b>bold</b>",
    "Tuple<Tensor, int>", "a & b", "&amp;", "#35;", "# heading", "a|b", "[list]", "{dict}", "(paren)",
    "new\nline", "blank\n\nline", "\ttab", "unicode ü 名前 🚀", "end", "graph", "subgraph", "style", "click",
    "classDef", "node", "edge", "digraph", "strict", "transformer.h.0.attn", "my block",
    '%%{init: {"theme":"dark"}}%%', "%% comment", "__init__", "*args", "1. first", "- item",
    "http://example.com", "$$x$$", "`code`", "~~s~~", "-->", "a---oB", "x;y", "", "   ", "\x00ctrl\x1b[0m",
    "x" * 120,
]


# -- tables ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("a\r\nb", "a\nb"), ("a\rb", "a\nb"), ("a\u2028b", "a\nb"), ("a\tb", "a b"), ("\x00x", "\ufffdx"),
    ("\x1b[31m", "\ufffd[31m"), ("\ud800", "\ufffd"), ("ü 名前 🚀", "ü 名前 🚀"), (123, "123"),
    ("zero\u200bwidth", "zero\u200bwidth"), ("ab\u202ecd", "ab\ufffdcd"), ("\u2066x\u2069", "\ufffdx\ufffd"),
])
def test_clean(raw, expected):
    assert clean(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("plain", "plain"), ('a"b', 'a"b'), ("back\\slash", "back\\\\slash"), ("\\N", "\\\\N"),
    ("l1\nl2", "l1\\nl2"), ("<b>", "<b>"), ("trailing\\", "trailing\\\\"), ("ü", "ü"),
    ("a & b", "a &amp; b"), ("&amp;", "&amp;amp;"),
])
def test_dot_text(raw, expected):
    assert dot_text(raw) == expected


@pytest.mark.parametrize("raw, quoted", [
    ('a"b', '"a\\"b"'), ("<b>", '"<b>"'), ("node", '"node"'), ("back\\", '"back\\\\"'), ("l1\nl2", '"l1\\nl2"'),
])
def test_dot_text_through_python_graphviz_quoting(raw, quoted):
    assert quote(dot_text(raw)) == quoted


@pytest.mark.parametrize("raw, expected", [
    ("a&b", "a&amp;b"), ("<x>", "&lt;x&gt;"), ('"q"', "&quot;q&quot;"), ("it's", "it&#x27;s"),
    ("a\\N", "a\\\\N"), ("l1\nl2", "l1<BR/>l2"), ("ü", "ü"), ("[]{}|", "[]{}|"), ("\x00", "\ufffd"),
])
def test_dot_html(raw, expected):
    assert dot_html(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("end", "end"), ('a"b', "a#34;b"), ("<b>", "#60;b#62;"), ("#", "#35;"), ("a|b", "a#124;b"),
    ("a\nb", "a\nb"), ("a\n\nb", "a\nb"), ("", " "), ("   ", " "), ("ü名🚀", "ü名🚀"),
    ("__init__", "#95;#95;init#95;#95;"), ("%%", "#37;#37;"), ("1. x", "1#46; x"), ("a,b=c", "a,b=c"),
    ("x;y", "x#59;y"), ("$$x$$", "#36;#36;x#36;#36;"), ("f32[1,8]", "f32#91;1,8#93;"),
])
def test_mermaid_label(raw, expected):
    assert mermaid_label(raw) == expected


@pytest.mark.parametrize("raw", HOSTILE)
def test_mermaid_label_is_inert_and_reversible(raw):
    out = mermaid_label(raw)
    assert re.fullmatch(r"[A-Za-z0-9 ,=#;\n\u0080-\U0010ffff]+", out), out
    decoded = re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), out)
    want = "\n".join(line for line in clean(raw).split("\n") if line.strip()) or " "
    assert decoded == want


@pytest.mark.parametrize("raw, expected", [
    ("a\nb", "%% a b"), ("%%{init: {}}%%", "%% %%(init: ())%%"), ("50% done", "%% 50% done"),
])
def test_mermaid_comment(raw, expected):
    assert mermaid_comment(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ('<a href="x">&</a>', "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"), ("l1\nl2", "l1<br>l2"), ("ü", "ü"),
])
def test_html_text(raw, expected):
    assert html_text(raw) == expected


def test_shorten():
    assert shorten("abcdef", 4) == "abc…"
    assert shorten("abc", 4) == "abc"


def test_id_maker_is_deterministic_unique_and_safe():
    make = IdMaker("n")
    ids = [make(k) for k in HOSTILE]
    assert len(set(HOSTILE)) == len(HOSTILE)
    assert ids == [f"n{k}" for k in range(len(HOSTILE))]  # in order of first request
    assert make("end") == ids[HOSTILE.index("end")]  # stable on repeat
    assert "end" in make and "nope" not in make
    with pytest.raises(ValueError):
        IdMaker("1x")
    with pytest.raises(ValueError):
        IdMaker("a-b")


@pytest.mark.parametrize("raw, expected", [
    ("transformer.h.0", "x_transformer_h_0"), ("end", "x_end"), ("", "x"), ("my block", "x_my_block"),
    ("名", "x__"),
])
def test_safe_id(raw, expected):
    assert safe_id(raw) == expected


def test_safe_id_rejects_bad_prefix():
    with pytest.raises(ValueError):
        safe_id("a", prefix="9")


# -- the real tools ----------------------------------------------------------------------------
def _svg_texts(svg: str, cls: str):
    """{title: drawn text} for every <g class=cls> in dot's SVG."""
    ns = {"s": "http://www.w3.org/2000/svg"}
    out = {}
    for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g"):
        if g.get("class") == cls:
            title = g.find("s:title", ns).text
            texts = (t.text or "" for t in g.iter("{http://www.w3.org/2000/svg}text"))
            out[title] = "\n".join(t.strip() for t in texts if t.strip())
    return out


def _drawn(s: str) -> str:
    """What a label should read after dot drew it: one SVG text per non-blank line."""
    return "\n".join(line.strip() for line in clean(s).split("\n") if line.strip())


@pytest.mark.dot
def test_hostile_labels_survive_dot(dot_check):
    g = graphviz.Digraph()
    for k, s in enumerate(HOSTILE):
        with g.subgraph(name=f"cluster{k}") as c:
            c.attr(label=html_label(s))
            c.node(f"n{k}", label=html_label(s), tooltip=dot_tooltip(s))
        g.node(f"m{k}", label="x")
        g.edge(f"n{k}", f"m{k}", label=dot_text(s))
    svg = dot_check(g.source)
    nodes, clusters, edges = _svg_texts(svg, "node"), _svg_texts(svg, "cluster"), _svg_texts(svg, "edge")
    for k, s in enumerate(HOSTILE):
        want = _drawn(s)
        assert nodes[f"n{k}"] == _drawn(shorten(s, LINE_WIDTH)), (s, nodes[f"n{k}"])
        assert clusters[f"cluster{k}"] == _drawn(shorten(s, LINE_WIDTH)), s
        if s.strip():  # dot draws no text for a blank edge label
            assert edges[f"n{k}->m{k}"].strip() == want.strip(), s
    # tooltips: Graphviz expanded `\N`/`\G`/`\L` there (node id, graph name, label) however escaped
    titles = {k: v for k, v in re.findall(r'<g id="a_(node\d+)"><a xlink:title="([^"]*)"', svg)}
    shown = [html.unescape(t) for t in titles.values()]
    for s in HOSTILE:
        if "\\" in s:
            assert clean(s).replace("\\", "\u29f5") in shown, (s, shown)


@pytest.mark.mermaid
@pytest.mark.parametrize("version", ["mermaid", "mermaid-v11"])
def test_hostile_labels_parse_in_mermaid(mermaid_check, version):
    lines = ["---", "config:", "  layout: dagre", "---", mermaid_comment("".join(HOSTILE)), "flowchart TB"]
    make = IdMaker("n")
    for k, s in enumerate(HOSTILE):
        lines.append(f'  subgraph s{k} ["{mermaid_label(s)}"]')
        lines.append(f'    {make(k)}("{mermaid_label(s)}")')
        lines.append("  end")
        lines.append(f'  {make(k)} -->|"{mermaid_label(s)}"| {make(("to", k))}[["{mermaid_label(s)}"]]')
    [res] = mermaid_check(["\n".join(lines) + "\n"], version)
    assert res["ok"], res["problems"]
    n = len(HOSTILE)
    assert res["model"] == {"nodes": 2 * n, "edges": n, "subgraphs": n}  # no label ate a node


def test_names_with_line_breaks_keep_the_text_forms_one_line_per_op():
    """A ModuleDict key with a line break, and a label with one: `print(g)`
    and the text diff split their lines and showed a fake `# ...` line."""
    import torch

    import torchtrace

    class Keyed(torch.nn.Module):
        def __init__(self, extra: bool) -> None:
            super().__init__()
            keys = ["a", "b\n# INJECTED"] if extra else ["a"]
            self.d = torch.nn.ModuleDict({k: torch.nn.Linear(2, 2) for k in keys})

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for m in self.d.values():
                x = m(x)
            return x

    x = torch.randn(1, 2)
    graphs = []
    for extra in (False, True):
        m = Keyed(extra)
        with torchtrace.trace(m, label="run\n# LABEL") as t:
            m(x)
        graphs.append(t.graph)
    g = graphs[1]
    text = str(g)
    assert len(text.split("\n")) == 1 + sum(1 for v in g.values if v.role != "activation") + len(g.nodes) + 1
    d = torchtrace.diff(*graphs)
    for out in (text, torchtrace.render(g, "text"), torchtrace.render(d, "text"), torchtrace.render(d, "markdown")):
        assert not [line for line in out.split("\n") if line.lstrip("-+ ").startswith(("# INJECTED", "# LABEL"))]
    assert "b\u23ce# INJECTED" in text and "run\u23ce# LABEL" in text


@pytest.mark.dot
def test_a_fold_note_with_control_characters_is_clean_in_the_dot_comment(dot_check):
    """A ModuleDict key with a NUL in a fold's note reached DOT's `//` comment
    raw: dot said "syntax error in line 2" and render(g, "svg") blamed torchtrace."""
    import torch
    import torch.nn as nn

    import torchtrace
    keys = [f"x\x00\x1b{i}" for i in range(5)]
    m = nn.ModuleDict({k: nn.Linear(4, 4) for k in keys})
    with torchtrace.trace(m) as t:
        x = torch.randn(2, 4)
        for k in keys:
            x = m[k](x)
    src = torchtrace.render(t.graph, "dot")
    first = src.splitlines()[0]
    assert first.startswith("// torchtrace view:") and "Linear × 5" in first and clean(first) == first
    dot_check(src)
