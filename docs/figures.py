"""Regenerate the figures in README.md and docs/ (every one is drawn by torchtrace).

    python docs/figures.py
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "examples"), str(ROOT / "tests")]

import torch  # noqa: E402

import torchtrace  # noqa: E402


def curriculum_pass():
    from train_loop import CurriculumNet

    torch.manual_seed(0)
    model = CurriculumNet()
    x = torch.randn(64, 16)
    y = x[:, :1] * 0.5
    with torchtrace.trace(model, label="CurriculumNet training step") as t:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
    return t.graph


def gpt2_step():
    import zoo

    model = zoo.gpt2(n_layer=2)
    ids = zoo.token_ids(16)
    with torchtrace.trace(model, label="GPT-2 (2 layers) training step") as t:
        model(ids, labels=ids).loss.backward()
    return t.graph


def main() -> None:
    docs = ROOT / "docs"
    g = curriculum_pass()
    (docs / "curriculum.md").write_text(torchtrace.render(g, "markdown"))
    (docs / "curriculum-backward.svg").write_text(torchtrace.render(g, "svg", phase="backward"))
    gpt2 = gpt2_step()
    (docs / "gpt2-forward.svg").write_text(torchtrace.render(gpt2, "svg"))
    (docs / "gpt2.mmd").write_text(torchtrace.render(gpt2, "mermaid"))
    print("wrote", ", ".join(p.name for p in sorted(docs.iterdir()) if p.suffix in (".md", ".svg", ".mmd")))


if __name__ == "__main__":
    main()
