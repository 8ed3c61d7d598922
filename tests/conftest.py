"""Shared fixtures and options. Add to this file; keep each part's helpers together."""
from __future__ import annotations

import pytest


# -- golden files (tests/golden/**): `pytest --update-golden` rewrites them ----------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden files under tests/golden instead of comparing with them")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def golden(update_golden: bool):
    """``golden(path, text)``: assert ``text`` equals the file, or (with
    ``--update-golden``) write it there."""
    def check(path, actual: str) -> None:
        if update_golden:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(actual, encoding="utf-8")
            return
        assert path.exists(), f"{path} is missing: run pytest --update-golden"
        expected = path.read_text(encoding="utf-8")
        assert actual == expected, f"{path.name} differs; if the change is intended, run pytest --update-golden"

    return check


# -- diff / variants: GPT-2 tiny with a KV cache --------------------------------------------------
@pytest.fixture(scope="session")
def gpt2_kv_graphs():
    """GPT-2 tiny (random weights) with ``use_cache=True``: the prefill graph
    (8 tokens) and three decode steps (cache length 8, 9, 10), as recorded
    by ``examples/kv_cache_decode.py``."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import kv_cache_decode
    finally:
        sys.path.pop(0)
    return kv_cache_decode.record(kv_cache_decode.tiny_gpt2(), prompt_len=8, steps=3)


# -- views and renderers: recorded graphs, the real `dot`, the real Mermaid parser ----------------
# Graphs are recorded once per session, on first use. `dot_check`/`mermaid_check` run the real
# tools; a missing tool fails the test with how to install it (CI installs both: `make test`).
HOSTILE_KEYS = ["end", "graph", "my block", 'say "hi"', "x<y>&z", "back\\slash\\N", "pipe|#hash;",
                "brackets[0]{1}(2)", "unicode ü 名前 🚀", "new\nline", "%%{init: {}}%%", "__x__", "1) first",
                "click", "style", "subgraph", "node", "digraph", "`code` $$x$$", "-->", "a--b", "*y* ~~s~~",
                "[red]x[/red]"]


def _viz_models():
    import torch
    import torch.nn as nn

    class CellLoop(nn.Module):
        """An LSTMCell stepped by a Python loop, then an `if` on the data (a witness)."""

        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.LSTMCell(4, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            h = torch.zeros(x.shape[0], 8)
            c = torch.zeros(x.shape[0], 8)
            for t in range(x.shape[1]):
                h, c = self.cell(x[:, t], (h, c))
            if h.sum() > 0:
                h = h * 2
            return self.head(h)

    class Rnn(nn.Module):
        """A recurrence written with plain tensor ops (no submodules)."""

        def __init__(self) -> None:
            super().__init__()
            self.W = nn.Parameter(torch.randn(4, 8))
            self.U = nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            h = torch.zeros(x.shape[0], 8)
            for t in range(x.shape[1]):
                h = torch.tanh(x[:, t] @ self.W + h @ self.U)
            return h

    Weird = type('Weird<T> & "Q"', (nn.Module,), {"forward": lambda self, x: torch.tanh(x) * 2})

    class Hostile(nn.Module):
        """Module names (nn.ModuleDict keys) and a class name that break naive DOT/Mermaid."""

        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleDict({k: nn.Linear(4, 4) for k in HOSTILE_KEYS})
            self.weird = Weird()

        def forward(self, x):
            for k in HOSTILE_KEYS:
                x = self.blocks[k](x).relu()
            if x.sum() > 0:
                x = x + 1
            return self.weird(x)

    return CellLoop, Rnn, Hostile


def _record_viz(name: str):
    import torch

    import torchtrace
    import zoo

    CellLoop, Rnn, Hostile = _viz_models()
    torch.manual_seed(0)
    backward = False
    if name.startswith("gpt2_"):
        model, args, kw = zoo.gpt2(int(name.split("_")[1])), (), {"input_ids": zoo.token_ids()}
        kw["labels"] = kw["input_ids"]
        backward = True
    else:
        model, args, kw = {
            "bert": lambda: (zoo.bert(), (zoo.token_ids(),), {}),
            "llama": lambda: (zoo.llama(), (zoo.token_ids(),), {}),
            "t5": lambda: (zoo.t5(), (), {"input_ids": zoo.token_ids(), "decoder_input_ids": zoo.token_ids(4)}),
            "transformer_encoder": lambda: (zoo.transformer_encoder(), (torch.randn(2, 5, 32),), {}),
            "lstm": lambda: (zoo.lstm(), (torch.randn(2, 5, 8),), {}),
            "resnet_block": lambda: (zoo.resnet_block(), (torch.randn(1, 8, 16, 16),), {}),
            "branchy": lambda: (zoo.Branchy(), (torch.randn(2, 4),), {}),
            "cell_loop": lambda: (CellLoop(), (torch.randn(2, 6, 4),), {}),
            "rnn": lambda: (Rnn(), (torch.randn(2, 50, 4),), {}),
            "hostile": lambda: (Hostile(), (torch.randn(2, 4),), {}),
        }[name]()
    with torchtrace.trace(model, label=name) as t:
        out = model(*args, **kw)
        if backward:
            out.loss.backward()
    return t.graph


@pytest.fixture(scope="session")
def viz_graph():
    """``viz_graph(name)``: a recorded Graph, cached for the session. Names:
    gpt2_<layers> (forward + backward, loss), bert, llama, t5, transformer_encoder,
    lstm, resnet_block, branchy, cell_loop, rnn, hostile."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = _record_viz(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def dot_check():
    """``dot_check(source, fmt="svg") -> str``: lay out with the real `dot`;
    fails the test on any error or warning, returns the output."""
    import shutil
    import subprocess

    if shutil.which("dot") is None:
        pytest.fail("Graphviz `dot` is missing: apt-get install graphviz (or deselect with -m 'not dot')")

    def check(source: str, fmt: str = "svg") -> str:
        p = subprocess.run(["dot", f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, timeout=120)
        problems = p.stderr.decode("utf-8", "replace").strip()
        assert p.returncode == 0 and not problems, f"dot rc={p.returncode}: {problems}\n{source[:2000]}"
        return p.stdout.decode("utf-8", "replace")

    return check


@pytest.fixture(scope="session")
def mermaid_check():
    """``mermaid_check(texts, version="mermaid"|"mermaid-v11") -> results``: parse
    every diagram in one Node run (tests/mermaid/check.mjs, mermaid + jsdom)."""
    import json
    import shutil
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent / "mermaid"
    if shutil.which("node") is None or not (here / "node_modules" / "mermaid").is_dir():
        pytest.fail("the Mermaid parser is missing: run `npm ci` in tests/mermaid (make test does), "
                    "or deselect with -m 'not mermaid'")

    def check(texts, version: str = "mermaid"):
        p = subprocess.run(["node", str(here / "check.mjs"), "--mermaid", version], input=json.dumps(list(texts)),
                           capture_output=True, text=True, timeout=600)
        assert p.returncode in (0, 1), p.stderr
        return json.loads(p.stdout)["results"]

    return check
