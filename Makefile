# Set-up, demo and tests on a fresh machine. torch is pinned to the local CPU wheel first:
# a bare `torch` requirement would pull gigabytes of CUDA packages.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mkn-installed
TORCH := torch==2.13.0

.PHONY: setup demo test test-oldest lint bench clean

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

# The oldest transformers pyproject allows (5.0.0) with the versions it was released beside,
# shadowing the venv's own (PYTHONPATH), on the model families, knowledge, interventions and IG
# tests; warnings are errors. Not part of `make test` (it downloads from PyPI).
OLDEST := /tmp/mkn-oldest-transformers
test-oldest: $(STAMP)
	rm -rf $(OLDEST)
	$(BIN)/python -m pip install -q --target $(OLDEST) --no-deps transformers==5.0.0 \
		tokenizers==0.22.1 "huggingface-hub>=1.3,<2" kernels==0.11.0 httpx httpcore h11 anyio
	PYTHONPATH=$(OLDEST) $(BIN)/python -c "import transformers as t; assert t.__version__ == '5.0.0'"
	PYTHONPATH=$(OLDEST) $(BIN)/python -m pytest -q -p no:cacheprovider -W error::FutureWarning \
		-W error::DeprecationWarning:transformers tests/test_families.py tests/test_knowledge.py \
		tests/test_interventions.py tests/test_ig_properties.py tests/test_localization.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_attribution.py

clean:
	rm -rf $(VENV) build *.egg-info
