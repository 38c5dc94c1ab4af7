"""Run records: one JSON file per training run, written atomically, found again by run key.

The file name is derived from the run key (encoder name, checkpoint hash, task, profile,
protocol hash, phase, lr, seed), so re-running a command finds finished runs and skips them, and
a crashed or repeated run can never leave two records for the same run. Each record still carries
its own unique `run_id`.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from cxrbench.io_utils import atomic_path, atomic_write_json, stable_hash

SCHEMA_VERSION = 1


def run_key(
    encoder: str,
    checkpoint_sha256: str | None,
    task_id: str,
    profile: str,
    protocol_hash: str,
    phase: str,
    lr: float,
    seed: int,
) -> str:
    return stable_hash(
        {
            "encoder": encoder,
            "checkpoint": checkpoint_sha256,
            "task": task_id,
            "profile": profile,
            "protocol": protocol_hash,
            "phase": phase,
            "lr": float(lr),
            "seed": int(seed),
        }
    )[:24]


def record_path(runs_dir: Path, encoder: str, task_id: str, key: str) -> Path:
    return Path(runs_dir) / safe_name(encoder) / task_id / f"run-{key}.json"


def safe_name(name: str) -> str:
    """A folder-safe version of a user-given encoder name."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name) or "encoder"


def new_run_id() -> str:
    return uuid.uuid4().hex


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None when absent/unreadable (a half-written file never exists)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_record(path: Path, record: dict, predictions: dict[str, np.ndarray] | None = None) -> None:
    """Write the predictions file first, then the record (so a record never points at nothing)."""
    path = Path(path)
    if predictions:
        pred_path = path.with_suffix(".npz")
        with atomic_path(pred_path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **predictions)
        record["predictions"] = pred_path.name
    else:
        record.setdefault("predictions", None)
    record["schema_version"] = SCHEMA_VERSION
    atomic_write_json(path, record)
