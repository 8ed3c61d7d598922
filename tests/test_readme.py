"""README promises: its diagram is real Mermaid, and its commands exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.mermaid
def test_readme_diagrams_parse_in_mermaid_12_and_11(mermaid_check):
    blocks = re.findall(r"```mermaid\n(.*?)```", README, re.S)
    assert blocks, "README should show a diagram drawn by torchtrace"
    for version in ("mermaid", "mermaid-v11"):
        for res in mermaid_check(blocks, version):
            assert res["ok"], (version, res.get("problems"), res.get("error"))


def test_readme_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README and re.search(rf"^{target}:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    for example in re.findall(r"examples/(\w+\.py)", README):
        assert (ROOT / "examples" / example).is_file(), example


def test_readme_diagram_is_what_torchtrace_draws_today():
    import sys

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import figures
    finally:
        sys.path.remove(str(ROOT / "docs"))
    import torchtrace

    drawn = torchtrace.render(figures.curriculum_pass(), "markdown").strip()
    assert drawn in README, "README's diagram is out of date: run `python docs/figures.py` and paste docs/curriculum.md"
