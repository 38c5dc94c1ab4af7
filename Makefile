PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint format demo bench

# Installs into .venv from the project's own files (torch/torchvision pinned to the local wheels).
$(STAMP): pyproject.toml .ci/install.sh
	bash .ci/install.sh $(VENV)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

test-all: $(STAMP)
	$(BIN)/pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check cxrbench tests benchmarks
	$(BIN)/ruff format --check cxrbench tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix cxrbench tests benchmarks
	$(BIN)/ruff format cxrbench tests benchmarks

demo: $(STAMP)
	$(BIN)/cxrbench demo --out demo_out

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training_pipeline.py
