PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all wheel-check lint format demo bench

# Installs into .venv from the project's own files (torch/torchvision pinned to the local wheels).
$(STAMP): pyproject.toml .ci/install.sh
	bash .ci/install.sh $(VENV)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

test-all: $(STAMP)
	$(BIN)/pytest -q -m "slow or not slow"

# Builds the wheel, installs it non-editably into a throw-away venv and runs evaluate + leaderboard
# from outside the repository (the dependencies come from $(VENV)).
wheel-check: $(STAMP)
	bash .ci/wheel_check.sh $(VENV)

lint: $(STAMP)
	$(BIN)/ruff check cxrbench tests benchmarks
	$(BIN)/ruff format --check cxrbench tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix cxrbench tests benchmarks
	$(BIN)/ruff format cxrbench tests benchmarks

demo: $(STAMP)
	$(BIN)/cxrbench demo --out demo_out

# Figures are printed, never asserted. Flags: bench_training_pipeline.py [--resolution 224] [--arch resnet50]
# [--device auto] [--steps 20] [--batch 16] [--n-images 96] [--no-amp] [--work DIR]; bench_cli_startup.py [--runs 7];
# benchmarks/bench_leaderboard.py times the leaderboard on synthetic records (run it by hand);
# benchmarks/bench_demo.py [--sequential] [--work DIR] [--keep] times `make demo` per stage in CPU and wall time;
# benchmarks/bench_encoders.py [--batch 8] [--steps 3] [--device auto] [--grad-checkpointing] measures forward and
# training images/s and peak memory of ResNet-50, DenseNet-121, Swin-T, ViT-B/16 and ViT-B/14 at 224 px
# (run it by hand: minutes on a CPU).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training_pipeline.py
	$(BIN)/python benchmarks/bench_cli_startup.py
