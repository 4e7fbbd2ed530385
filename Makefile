# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench warm clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# a pinned torch first: the CPU build where the index offers one; left to the st extra, pip may pull multi-GB CUDA wheels
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/fastctx demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m 'not slow'

bench: install
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/bench_seeds.py --n 100000

warm: install
	$(BIN)/python -c 'import fastctx.kernels as k; k.warm_up()'

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
