# torchtrace: one command to set up and run the demo, one for the tests.
#   make demo    venv + torch 2.13.0 (CPU) + torchtrace, then record and show a training run
#   make test    the above plus Graphviz and the Mermaid parser, then the test suite
# TORCH=... overrides the torch requirement (e.g. TORCH="torch>=2.4").
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
OUT ?= torchtrace-out

.PHONY: setup demo test sysdeps clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Graphviz's `dot` (SVG/PNG/PDF and the DOT tests) and Node.js for the Mermaid parser
sysdeps:
	@command -v dot >/dev/null || { apt-get update -qq && apt-get install -y -qq graphviz >/dev/null; }
	@command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }

tests/mermaid/node_modules/.installed: tests/mermaid/package.json tests/mermaid/package-lock.json
	cd tests/mermaid && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false
	touch $@

demo: setup
	$(BIN)/torchtrace run --out $(OUT) --render svg examples/train_loop.py
	$(BIN)/torchtrace variants $(OUT)/trace.db
	$(BIN)/torchtrace show $(OUT)/trace.db:0 --depth 1
	$(BIN)/torchtrace diff $(OUT)/trace.db:0 $(OUT)/trace.db:-1
	$(BIN)/torchtrace render $(OUT)/trace.db:0 --format markdown -o $(OUT)/pass0.md

test: setup sysdeps tests/mermaid/node_modules/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) tests/mermaid/node_modules .pytest_cache
