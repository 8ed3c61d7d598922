"""Golden files for every renderer on small graphs.

The input graphs are stored as JSON under tests/golden/render/inputs (so the
comparison needs no torch and does not move when the recorder changes);
``pytest --update-golden`` rewrites every expected output from them, and
records an input from the models below only where its file is missing (delete
it to record it again). SVG is compared as its drawn text (node, cluster and
edge labels), which does not depend on fonts; PNG and PDF are checked for
what they are, not byte for byte.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import torchtrace
from torchtrace.ir import Graph

HERE = Path(__file__).resolve().parent / "golden" / "render"
INPUTS = HERE / "inputs"
MODELS = ("mlp", "stack", "loop", "hostile")
VARIANTS = {"default": {}, "both": {"phase": "both"}, "unfolded": {"fold": False}, "depth1": {"depth": 1}}
CASES = [(m, "default") for m in MODELS] + [("mlp", "both"), ("stack", "unfolded"), ("hostile", "unfolded"),
                                             ("stack", "depth1")]
FORMATS = {"text": "txt", "dot": "dot", "mermaid": "mmd", "terminal": "terminal.txt"}


# -- the input graphs ------------------------------------------------------------------------------
def _record(name: str) -> Graph:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    if name == "mlp":
        class TinyNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc1, self.act, self.fc2 = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)

            def forward(self, x):
                h = self.act(self.fc1(x))
                if h.mean() > 0:
                    h = h * 2
                return self.fc2(h)

        model, x = TinyNet(), torch.randn(3, 4)
        with torchtrace.trace(model, label="mlp") as t:
            model(x).pow(2).mean().backward()
        return t.graph
    if name == "stack":
        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.proj = nn.Linear(4, 4)

            def forward(self, x):
                return x + torch.tanh(self.proj(x))

        class Stack(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.blocks = nn.ModuleList(Block() for _ in range(4))
                self.out = nn.Linear(4, 1)

            def forward(self, x):
                for b in self.blocks:
                    x = b(x)
                return self.out(x)

        model, args = Stack(), (torch.randn(2, 4),)
    elif name == "loop":
        class Loop(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.cell = nn.GRUCell(3, 4)

            def forward(self, x):
                h = torch.zeros(x.shape[0], 4)
                for t in range(x.shape[1]):
                    h = self.cell(x[:, t], h)
                return h

        model, args = Loop(), (torch.randn(2, 3, 3),)
    else:
        keys = ["end", 'say "hi"', "x<y>&z", "back\\slash\\N", "new\nline", "[red]x[/red]", "unicode ü 🚀"]

        class Hostile(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.blocks = nn.ModuleDict({k: nn.Linear(2, 2) for k in keys})

            def forward(self, x):
                for k in keys:
                    x = self.blocks[k](x)
                if x.sum() > 0:
                    x = x.relu()
                return x

        model, args = Hostile(), (torch.randn(1, 2),)
    with torchtrace.trace(model, label=name) as t:
        model(*args)
    return t.graph


def _portable(g: Graph) -> Graph:
    """Source files as base names and a fixed creation time: no machine paths in committed files."""
    d = g.to_dict()
    d["meta"] = {**d["meta"], "created": "2000-01-01T00:00:00+00:00"}
    for n in d["nodes"]:
        if n.get("source"):
            n["source"]["file"] = n["source"]["file"].rsplit("/", 1)[-1]
    return Graph.from_dict(d)


@pytest.fixture(scope="module")
def graphs(request):
    update_golden = request.config.getoption("--update-golden")
    out = {}
    for name in MODELS:
        path = INPUTS / f"{name}.json"
        if update_golden and not path.exists():  # delete an input to record it again
            INPUTS.mkdir(parents=True, exist_ok=True)
            torchtrace.save(_portable(_record(name)), path)
        out[name] = torchtrace.load(path)
    return out


# -- the goldens -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model, variant", CASES)
def test_golden(graphs, golden, model, variant, fmt):
    out = torchtrace.render(graphs[model], fmt, **VARIANTS[variant])
    assert out == torchtrace.render(graphs[model], fmt, **VARIANTS[variant])  # deterministic
    golden(HERE / f"{model}.{variant}.{FORMATS[fmt]}", out)


def test_golden_markdown(graphs, golden):
    golden(HERE / "mlp.default.md", torchtrace.render(graphs["mlp"], "markdown"))


def svg_summary(svg: str) -> str:
    """The drawn text of an SVG from dot, element by element (font independent)."""
    ns = "{http://www.w3.org/2000/svg}"
    lines = []
    for g in ET.fromstring(svg).iter(ns + "g"):
        if g.get("class") in ("node", "cluster", "edge"):
            texts = [(t.text or "").strip() for t in g.iter(ns + "text")]
            lines.append(f"{g.get('class')} {g.find(ns + 'title').text}: " + " | ".join(x for x in texts if x))
    return "\n".join(lines) + "\n"


@pytest.mark.dot
@pytest.mark.parametrize("model, variant", CASES)
def test_golden_svg(graphs, golden, model, variant):
    svg = torchtrace.render(graphs[model], "svg", **VARIANTS[variant])
    golden(HERE / f"{model}.{variant}.svg.txt", svg_summary(svg))


@pytest.mark.dot
@pytest.mark.parametrize("model", MODELS)
def test_png_and_pdf(graphs, model):
    png = torchtrace.render(graphs[model], "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    pdf = torchtrace.render(graphs[model], "pdf")
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")


def test_inputs_are_portable():
    for path in INPUTS.glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert all("/" not in (n.get("source") or {}).get("file", "") for n in data["nodes"]), path


@pytest.mark.dot
def test_golden_dot_files_pass_dot(dot_check):
    files = sorted(HERE.glob("*.dot"))
    assert len(files) == len(CASES)
    for path in files:
        dot_check(path.read_text(encoding="utf-8"))


@pytest.mark.mermaid
@pytest.mark.parametrize("version", ["mermaid", "mermaid-v11"])
def test_golden_mermaid_files_parse(mermaid_check, version):
    texts = [p.read_text(encoding="utf-8") for p in sorted(HERE.glob("*.mmd"))]
    md = (HERE / "mlp.default.md").read_text(encoding="utf-8")
    texts.append(md[len("```mermaid\n"):-len("```\n")])
    assert len(texts) == len(CASES) + 1
    results = mermaid_check(texts, version)
    assert all(r["ok"] for r in results), [r["problems"] for r in results if not r["ok"]]
