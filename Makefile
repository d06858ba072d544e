# Set-up, demo and tests on a fresh machine. torch is pinned to the local CPU wheel first:
# a bare `torch` requirement would pull gigabytes of CUDA packages.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mkn-installed
TORCH := torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mkn demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	fc-list | grep -q "Noto Sans CJK" || (apt-get update -qq && apt-get install -y -qq fonts-noto-core fonts-noto-cjk >/dev/null)
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_attribution.py

clean:
	rm -rf $(VENV) build *.egg-info
