"""Render times for transformers GPT-2 with 2, 12 and 48 layers.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_render.py [--reps 5] [--layers 2 12 48]

Each model (tiny widths, random weights, nothing downloaded) is recorded once
with forward + backward; then, per view (the default one, and phase="both"),
the median of ``--reps`` runs of: building the view, the DOT source, the
``dot`` layout to SVG (the Graphviz binary, what users wait for), and the
Mermaid text (auto-fitted to GitHub's limits). A plain script printing a
table, not a test. Target: the default view of the 48-layer model laid out by
``dot`` in well under 5 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

import torchtrace  # noqa: E402
from torchtrace.renderers import render  # noqa: E402
from torchtrace.renderers.dot import digraph, layout  # noqa: E402
from torchtrace.renderers.mermaid import text_size  # noqa: E402
from torchtrace.views import build_view  # noqa: E402

VIEWS: Dict[str, dict] = {"default": {}, "phase=both": {"phase": "both"}}


def record_gpt2(n_layer: int) -> torchtrace.Graph:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(1))
    with torchtrace.trace(model, label=f"gpt2-{n_layer}") as t:
        model(ids, labels=ids).loss.backward()
    return t.graph


def median_s(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main(argv: List[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 12, 48])
    args = ap.parse_args(argv)
    header = (f"{'model':<10} {'view':<11} {'ops':>5} {'boxes':>5} {'edges':>5} {'view ms':>8} {'DOT ms':>7} "
              f"{'dot→svg ms':>10} {'mermaid ms':>10} {'mmd chars':>9}")
    print(f"torch {torch.__version__}, torchtrace {torchtrace.__version__}, median of {args.reps} runs")
    print(header)
    print("-" * len(header))
    for n in args.layers:
        g = record_gpt2(n)
        for name, opts in VIEWS.items():
            view = build_view(g, **opts)
            t_view = median_s(lambda: build_view(g, **opts), args.reps)
            t_dot = median_s(lambda: digraph(build_view(g, **opts)).source, args.reps)
            src = digraph(view)
            t_svg = median_s(lambda: layout(src, "svg"), args.reps)
            mmd = render(g, "mermaid", **opts)
            t_mmd = median_s(lambda: render(g, "mermaid", **opts), args.reps)
            print(f"{'gpt2-' + str(n):<10} {name:<11} {len(g.nodes):>5} {len(view.boxes):>5} {len(view.edges):>5} "
                  f"{1e3 * t_view:>8.1f} {1e3 * t_dot:>7.1f} {1e3 * t_svg:>10.1f} {1e3 * t_mmd:>10.1f} "
                  f"{text_size(str(mmd)):>9}")


if __name__ == "__main__":
    main(sys.argv[1:])
