"""The tiny profiles (and a record helper) the tests share: pre-train or evaluate in seconds on a CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cxrbench.baselines.training import get_pretrain_profile
from cxrbench.protocol.tasks import get_profile

TINY_PRETRAIN = dataclasses.replace(
    get_pretrain_profile("demo"),
    name="tiny",
    resolution=64,
    batch_size=8,
    lr=1e-3,
    max_epochs=2,
    d_hidden=64,
    d_z=32,
    bert_hidden=32,
    max_tokens=64,
    vocab_size=300,
    max_train_images=32,
    max_val_images=16,
)

# The demo evaluation profile cut to two epochs on a few 64-px images: every step of a task runs.
FAST_EVAL = dataclasses.replace(
    get_profile("demo"),
    name="test",
    resolution=64,
    max_epochs=2,
    warmup_steps=2,
    default_seeds=1,
    max_train_images=16,
    max_eval_images=12,
)


def runs_test_metrics(root: Path) -> dict:
    """(encoder, task, seed) -> test metrics of every run record under root/runs (to compare runs)."""
    found = {}
    for path in (Path(root) / "runs").rglob("run-*.json"):
        record = json.loads(path.read_text())
        found[(record["encoder"], record["task_id"], record["seed"])] = record["test"]
    return found
