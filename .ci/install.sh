#!/usr/bin/env bash
# Create the project venv and install cxrbench with its dev extras from the project's own files.
# torch/torchvision are pinned to the releases pip takes from this machine's local disk.
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
touch "$VENV/.installed"
