PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-all lint format demo bench

install:
	bash .ci/install.sh $(VENV)

test:
	$(BIN)/pytest -q

test-all:
	$(BIN)/pytest -q -m "slow or not slow"

lint:
	$(BIN)/ruff check cxrbench tests benchmarks
	$(BIN)/ruff format --check cxrbench tests benchmarks

format:
	$(BIN)/ruff check --fix cxrbench tests benchmarks
	$(BIN)/ruff format cxrbench tests benchmarks

demo:
	$(BIN)/cxrbench demo --out demo_out

bench:
	$(BIN)/python benchmarks/bench_training_pipeline.py
