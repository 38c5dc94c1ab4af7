"""Helpers of the fault suite: a fingerprint of a user's folder, one-line CLI errors, copies."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from typer.testing import CliRunner


def folder_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under `root` (relative path -> sha256, mtime_ns): equal before and after = untouched."""
    digest = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            digest[str(path.relative_to(root))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mtime_ns,
            )
    return digest


def run_cli(*args: str):
    """Invoke the cxrbench command line in-process (a subprocess start costs seconds here)."""
    from cxrbench.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2, no traceback, exactly one error line on stderr that contains every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:"), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def write_seg_run(runs: Path, encoder: str, seed: int, task_id: str = "rsna_seg_linear_1") -> Path:
    """An ok final Dice run record with its predictions .npz, as `evaluate` writes them (a file name
    `run-*.json`, as every cxrbench writes it), whose stored values are what `rescore` recomputes."""
    import uuid

    import numpy as np

    from cxrbench.protocol import metrics
    from cxrbench.protocol.record_schema import SCHEMA_VERSION
    from cxrbench.protocol.records import write_record
    from cxrbench.protocol.tasks import METRICS_VERSION

    rng = np.random.default_rng(seed)
    ids = [f"img{i:02d}" for i in range(6)]
    gt = rng.random((6, 1, 16, 16)) < 0.3
    pred = gt ^ (rng.random(gt.shape) < 0.1)
    per_image = metrics.per_image_stats("dice", pred, gt, image_ids=ids)
    run_id = uuid.uuid4().hex
    path = runs / encoder / task_id / f"run-{run_id[:24]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path.with_suffix(".npz"),
        image_ids=np.array(ids),
        kind=np.array("dice"),
        pred_masks=np.packbits(pred, axis=-1),
        gt_masks=np.packbits(gt, axis=-1),
        mask_shape=np.array(pred.shape, np.int64),
    )
    record = {
        "schema_version": SCHEMA_VERSION, "metrics_version": METRICS_VERSION, "run_id": run_id,
        "run_key": run_id[:24], "encoder": encoder,
        "checkpoint": {"path": None, "identity": f"random:{encoder}", "sha256": None},
        "task_id": task_id, "dataset": "rsna", "metric": "dice", "phase": "final", "status": "ok",
        "error": None, "traceback": None, "sweep": None, "seed": seed, "lr": 1e-3, "val": {"dice": 0.5},
        "test": metrics.aggregate("dice", per_image), "test_per_image": per_image,
        "history": [{"epoch": 0, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "lr": 1e-3}],
        "best_epoch": 0, "wall_time_s": 1.0, "protocol_hash": "a1b2c3d4e5f60718", "profile": "full",
        "versions": {"python": "3"}, "git_commit": "abc", "created": "2024-01-01T00:00:00+00:00",
        "device": "cpu", "predictions": path.with_suffix(".npz").name,
    }  # fmt: skip
    write_record(path, record)
    return path
