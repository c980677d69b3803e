PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve test lint bench bench-quick image-test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,dev]"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/kernel-runtime serve

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache

image-test: $(STAMP)
	$(BIN)/pytest -v -m image tests/image

.PHONY: constraints
constraints: $(STAMP)
	$(BIN)/python -m tests.image.constraints > constraints.txt.new
	mv constraints.txt.new constraints.txt

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e ".[test,dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)   # everything, 1 GiB tables: benchmarks/results/latest.{md,png}, README table
	$(BIN)/python -m benchmarks --readme

bench-quick: $(BENCH_STAMP)   # smaller sizes, fewer repetitions: benchmarks/results/quick.{md,png}
	$(BIN)/python -m benchmarks --quick
