"""Renderings of a diff: golden files for text, Markdown, DOT and Mermaid (on
graphs built by hand, so they pin the renderer, not the recorder), the real
`dot` and `mermaid` parsers on real models' diffs, Mermaid's limits, and a
process without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

import torchtrace
from torchtrace.errors import UsageError
from torchtrace.ir import Graph, ModuleCall, Node, Source, Value, Witness
from torchtrace.renderers.diffs import render_diff

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden" / "diff"
MERMAID = TESTS / "mermaid"


class Builder:
    """A graph by hand: ``op(...)`` appends one op; values and module calls
    get ids in order of first appearance, as the recorder gives them."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.values: List[Value] = []
        self.nodes: List[Node] = []
        self.modules: List[ModuleCall] = [ModuleCall("m0", "", "Router")]
        self.named: Dict[str, str] = {}

    def tensor(self, name: str, shape: Sequence[int], role: str = "param", dtype: str = "float32") -> str:
        if name not in self.named:
            vid = f"v{len(self.values)}"
            self.values.append(Value(vid, tuple(shape), dtype, role=role, name=name))
            self.named[name] = vid
        return self.named[name]

    def module(self, path: str, type_: str) -> str:
        for m in self.modules:
            if m.path == path:
                return m.id
        parent = self.module(path.rsplit(".", 1)[0], "Sequential") if "." in path else "m0"
        mid = f"m{len(self.modules)}"
        self.modules.append(ModuleCall(mid, path, type_, 0, parent))
        return mid

    def op(self, op: str, ins: Sequence[str], outs: Sequence[Tuple[int, ...]], line: int, module: str = "",
           args: Optional[Dict[str, Any]] = None, read: Any = None, dtype: str = "float32") -> Optional[str]:
        mid = "m0" if not module else self.module(module, "Linear")
        out_ids = []
        for shape in outs:
            out_ids.append(f"v{len(self.values)}")
            self.values.append(Value(out_ids[-1], tuple(shape), "bool" if op.startswith("aten.gt") else dtype))
        nid = f"n{len(self.nodes)}"
        self.nodes.append(Node(nid, op, tuple(ins), tuple(out_ids), module=mid, args=args or {},
                               source=Source("/src/router.py", line, "forward"),
                               tags=("witness",) if read is not None else (),
                               witness=Witness(value=read) if read is not None else None))
        return out_ids[0] if out_ids else None

    def linear(self, path: str, x: str, n_in: int, n_out: int, rows: int, line: int) -> str:
        w = self.tensor(f"{path}.weight", (n_out, n_in))
        b = self.tensor(f"{path}.bias", (n_out,))
        wt = self.op("aten.t.default", [w], [(n_in, n_out)], line, path)
        return self.op("aten.addmm.default", [b, x, wt], [(rows, n_out)], line, path)

    def graph(self, out: str) -> Graph:
        return Graph(meta={"label": self.label}, modules=tuple(self.modules), values=tuple(self.values),
                     nodes=tuple(self.nodes), outputs=(out,)).validate()


def router(label: str, spiky: bool, steps: int, rows: int = 2) -> Graph:
    """examples/branching.py's Router, by hand: `if` at line 31, `while` at 35."""
    g = Builder(label)
    x = g.tensor("x", (rows, 8), role="input")
    n = g.tensor("steps", (), role="input", dtype="int64")
    h = g.linear("embed", x, 8, 8, rows, 30)
    peak = g.op("aten.amax.default", [g.op("aten.abs.default", [x], [(rows, 8)], 31)], [()], 31)
    g.op("aten._local_scalar_dense.default", [g.op("aten.gt.Scalar", [peak], [()], 31, args={"other": 3.0})], [], 31,
         read=spiky)
    if spiky:
        h = g.linear("large.2", g.op("aten.gelu.default", [g.linear("large.0", h, 8, 16, rows, 32)], [(rows, 16)], 32,
                                     "large.1"), 16, 8, rows, 32)
    else:
        h = g.linear("small", h, 8, 8, rows, 34)
    for k in range(steps + 1):
        g.op("aten._local_scalar_dense.default", [g.op("aten.gt.Scalar", [n], [()], 35, args={"other": 0})], [], 35,
             read=k < steps)
        if k < steps:
            h = g.op("aten.add.Tensor", [g.op("aten.tanh.default", [h], [(rows, 8)], 36), h], [(rows, 8)], 36)
            n = g.op("aten.sub.Tensor", [n], [()], 37, args={"other": 1}, dtype="int64")
    return g.graph(g.linear("head", h, 8, 2, rows, 38))


@pytest.fixture(scope="module")
def structural():
    return torchtrace.diff(router("calm", False, 3), router("spiky", True, 5))


@pytest.fixture(scope="module")
def shapes_only():
    return torchtrace.diff(router("batch 2", False, 1, rows=2), router("batch 3", False, 1, rows=3))


@pytest.mark.parametrize("fmt,ext", [("text", "txt"), ("markdown", "md"), ("dot", "dot"), ("mermaid", "mmd")])
def test_golden_renderings(structural, shapes_only, golden, fmt, ext):
    golden(GOLDEN / f"router.{ext}", render_diff(structural, fmt))
    golden(GOLDEN / f"router_shapes.{ext}", render_diff(shapes_only, fmt))


def test_the_text_reads_like_a_unified_diff_with_the_explanation_first(structural):
    text = str(structural)
    lines = text.splitlines()
    assert lines[0].startswith("--- A calm (") and lines[1].startswith("+++ B spiky (")
    assert lines[2] == "structure differs: 2 hunks; 2 ops only in A, 15 only in B, 0 changed"
    assert lines[4:7] == [
        "why:",
        "  `router.py:31` read False in A, True in B \u2192 2 ops only in A, 5 ops only in B (in `<root>`)",
        "  `while` at `router.py:35` ran 3\u00d7 in A, 5\u00d7 in B \u2192 10 ops only in B (in `<root>`)"
        if _readable("/src/router.py") else
        "  `router.py:35` read False in A, True in B; in a loop whose source is not readable here, it read "
        "4\u00d7 in A, 6\u00d7 in B \u2192 10 ops only in B (in `<root>`)"]
    minus = [x for x in lines if x.startswith("- ")]
    plus = [x for x in lines if x.startswith("+ ")]
    assert len(minus) == 2 and len(plus) == 15
    assert all("# small" in x for x in minus)
    assert text.index("why:") < text.index("@@")
    assert torchtrace.render(structural, "text") == text


def _readable(path: str) -> bool:
    return Path(path).exists()


def test_markdown_escapes_outside_code_spans(structural):
    md = render_diff(structural, "markdown", diagram=False)
    assert "- `router.py:31` read False in A, True in B" in md
    assert "```diff\n@@ A " in md and "```mermaid" not in md
    assert "(in `<root>`)" in md  # inside a code span: left alone
    from torchtrace.renderers._escape import markdown_text

    assert markdown_text("a_b `c_d` <e>") == "a\\_b `c_d` \\<e\\>"
    assert markdown_text("one ` tick_") == "one \\` tick\\_"


def test_drawings_color_added_removed_and_changed(structural, shapes_only):
    dot = render_diff(structural, "dot")
    assert dot.count('fillcolor="#d4f7d4"') == 15 and dot.count('fillcolor="#fbd5d5"') == 2
    assert "read False in A, True in B" in dot  # the witness that decided the branch
    assert "unchanged op" in dot  # unchanged runs are collapsed
    mmd = render_diff(shapes_only, "mermaid")
    assert "classDef changed" in mmd and "classDef added" not in mmd
    assert "f32#91;2,8#93; \u2192 f32#91;3,8#93;" in mmd  # a changed op shows both types


def test_mermaid_collapses_until_it_fits(structural):
    full = render_diff(structural, "mermaid")
    small = render_diff(structural, "mermaid", max_edges=8)
    assert full.count("-->") + full.count("-.->") > 8
    assert small.count("-->") + small.count("-.->") <= 8 and "collapsed to level" in small
    with pytest.raises(torchtrace.TorchtraceError, match="does not fit"):
        render_diff(structural, "mermaid", max_edges=1, max_chars=100)


def test_rich_prints_the_text_in_colour(structural):
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=300, force_terminal=True, color_system="standard")
    console.print(structural)
    drawn = console.file.getvalue()
    assert "\x1b[32m+ n6" in drawn and "\x1b[31m- n6" in drawn  # green added, red removed
    plain = Console(file=io.StringIO(), width=300, color_system=None)
    plain.print(structural)
    assert plain.file.getvalue() == str(structural)


def test_a_diff_shows_itself_in_jupyter(structural):
    bundle = structural._repr_mimebundle_()
    assert bundle["text/plain"] == str(structural)
    assert bundle["text/markdown"] == torchtrace.render(structural, "markdown")
    assert "```mermaid" in bundle["text/markdown"]


def test_bad_formats_and_options_are_usage_errors(structural):
    with pytest.raises(UsageError, match="did you mean 'mermaid'"):
        render_diff(structural, "mermaid2")
    with pytest.raises(UsageError, match="did you mean 'context'"):
        torchtrace.render(structural, "text", contxt=2)
    with pytest.raises(UsageError, match="level"):
        render_diff(structural, "dot", level=9)


# -- real tools on real models --------------------------------------------------------------------

def _real_diffs(gpt2_kv_graphs) -> Dict[str, Any]:
    sys.path.insert(0, str(TESTS.parent / "examples"))
    try:
        import branching
    finally:
        sys.path.pop(0)
    return {"branching": torchtrace.diff(*branching.graphs()),
            "prefill_decode": torchtrace.diff(gpt2_kv_graphs[0], gpt2_kv_graphs[1]),
            "decode_decode": torchtrace.diff(gpt2_kv_graphs[1], gpt2_kv_graphs[2])}


@pytest.mark.dot
def test_dot_lays_out_every_diff(gpt2_kv_graphs):
    for name, d in _real_diffs(gpt2_kv_graphs).items():
        svg = render_diff(d, "svg")
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg, name
        png = render_diff(d, "png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.mermaid
def test_mermaid_parses_in_mermaid_11_and_12(gpt2_kv_graphs, structural, shapes_only, mermaid_check):
    diffs = {**_real_diffs(gpt2_kv_graphs), "router": structural, "router_shapes": shapes_only}
    texts = [render_diff(d, "mermaid") for d in diffs.values()]
    texts.append(render_diff(structural, "mermaid", max_edges=8))
    for pkg in ("mermaid", "mermaid-v11"):
        for name, res in zip([*diffs, "router max_edges=8"], mermaid_check(texts, pkg)):
            assert res["ok"], (pkg, name, res.get("problems"), res.get("error"))
            assert res["model"]["edges"] <= 500 and res["textSize"] <= 50_000


def test_render_diff_and_variants_without_torch(tmp_path, gpt2_kv_graphs):
    """Loaded JSON files: diff, every text format and variants in a process that cannot import torch."""
    paths = [str(torchtrace.save(g, tmp_path / f"g{k}.json")) for k, g in enumerate(gpt2_kv_graphs)]
    script = r"""
import sys, importlib.abc
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
import torchtrace
from torchtrace.renderers.diffs import render_diff
paths = sys.argv[1:]
d = torchtrace.diff(paths[0], paths[1])
for fmt in ("text", "markdown", "dot", "mermaid"):
    assert render_diff(d, fmt)
print(torchtrace.variants(paths))
print(d.kind, torchtrace.diff(paths[1], paths[2]).kind)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "structural shapes"
    assert proc.stdout.startswith("2 variants in 4 graphs")


def test_dot_diff_is_bounded_unless_a_level_is_asked_for():
    """Two unrelated long graphs: every op differs. At level 0 that is more
    edges than `dot` lays out in reasonable time (minutes for ~2,000)."""
    import torch

    from torchtrace.renderers.diffs import DOT_MAX_EDGES

    def chain(op: Any, n: int) -> Graph:
        x = torch.randn(3)
        with torchtrace.trace() as t:
            for _ in range(n):
                x = op(x)
        return t.graph

    d = torchtrace.diff(chain(torch.sin, 300), chain(torch.cos, 300))
    full = render_diff(d, "dot", level=0)
    auto = render_diff(d, "dot")
    assert full.count(" -> ") > DOT_MAX_EDGES >= auto.count(" -> ")
    assert "collapsed to level" in auto and "collapsed to level" not in full
    svg = render_diff(d, "svg")  # laid out by the real `dot` (seconds; minutes at level 0)
    assert "<svg" in svg and "collapsed to level" in svg


def test_collapsed_hunks_name_their_ops(structural):
    """A hunk collapsed into one box listed the overloads (`Tensor, int`) for
    the ops' names (`add.Tensor, transpose.int`)."""
    from torchtrace.diffview import build_diff_view

    view = build_diff_view(structural, level=3)
    chunks = [b for b in view.view.boxes if b.kind == "chunk" and b.id != "why" and "only in" in b.title]
    assert chunks
    for b in chunks:
        side = "a" if "only in A" in b.title else "b"
        names = {getattr(p, side).short_op for p in structural.ops if p.status == f"only_{side}"}
        assert set(b.lines[0].split(", ")) <= names, (b.lines[0], names)


def test_a_markdown_diff_whose_diagram_cannot_fit_keeps_its_text(structural):
    """(An audit.) The markdown form raised when its Mermaid diagram could not fit
    (max_chars), losing the explanation with it; `diagram=` took any value."""
    md = render_diff(structural, "markdown", max_chars=500)
    assert "**Why**" in md and "```mermaid" not in md and "_(no diagram: the diff does not fit" in md
    assert "```mermaid" in render_diff(structural, "markdown")
    with pytest.raises(UsageError, match="diagram takes True or False"):
        render_diff(structural, "markdown", diagram="no")


@pytest.mark.parametrize("bad", [{"direction": "XY"}, {"level": -1}, {"max_edges": 0}, {"max_chars": "x"}])
def test_a_markdown_diff_checks_the_diagram_options_without_a_diagram_too(structural, bad):
    """(A 2026-11-28 audit.) With `diagram=False` (or no hunk) a bad value went unreported."""
    with pytest.raises(UsageError, match="bad value|takes"):
        torchtrace.render(structural, "markdown", diagram=False, **bad)
    with pytest.raises(UsageError, match="bad value|takes"):
        torchtrace.render(structural, "markdown", **bad)
