"""Recompute the test metrics of stored runs from their predictions files (no retraining).

A metric fix then only needs `cxrbench rescore RUNS_DIR`: every ok record with a predictions .npz
gets fresh ``test`` values and ``test_per_image`` statistics, written atomically, with a
``rescored`` note (time, code version, the old test values) appended to the record.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_write_json
from cxrbench.leaderboard.aggregate import SOURCE_KEY, scan_records
from cxrbench.protocol import metrics
from cxrbench.provenance import git_commit, utc_now

CHUNK = 256  # images unpacked at a time, so a large segmentation split never sits in memory as bools
SEG_KEYS = ("pred_masks", "gt_masks", "mask_shape")
BOX_KEYS = ("pred_boxes", "pred_scores", "pred_offsets", "gt_boxes", "gt_offsets")


def _unpack(packed: np.ndarray, shape: np.ndarray, rows: slice) -> np.ndarray:
    _, c, h, w = (int(v) for v in shape)
    return np.unpackbits(packed[rows], axis=-1, count=w).astype(bool).reshape(-1, c, h, w)


def _chunks(arrays: dict[str, np.ndarray], kind: str, n: int) -> Iterator[tuple[object, object]]:
    """(predictions, targets) in the metrics API form, CHUNK images at a time."""
    for start in range(0, n, CHUNK):
        rows = slice(start, min(start + CHUNK, n))
        if kind == "dice":
            shape = arrays["mask_shape"]
            yield _unpack(arrays["pred_masks"], shape, rows), _unpack(arrays["gt_masks"], shape, rows)
            continue
        po, go = arrays["pred_offsets"], arrays["gt_offsets"]
        boxes, scores, gt = (
            arrays["pred_boxes"].reshape(-1, 4),
            arrays["pred_scores"],
            arrays["gt_boxes"].reshape(-1, 4),
        )
        span = range(rows.start, rows.stop)
        yield (
            [(boxes[po[i] : po[i + 1]], scores[po[i] : po[i + 1]]) for i in span],
            [gt[go[i] : go[i + 1]] for i in span],
        )


def rescore_predictions(npz_path: Path, kind: str) -> tuple[dict[str, float], dict]:
    """(test values, test_per_image) recomputed from one predictions file."""
    with np.load(npz_path, allow_pickle=False) as npz:
        stored = str(npz["kind"])
        if stored != kind:
            raise CxrbenchError(
                f"{npz_path}: predictions are for metric {stored!r}, the record's metric is {kind!r}"
            )
        keys = SEG_KEYS if kind == "dice" else BOX_KEYS
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise CxrbenchError(f"{npz_path}: predictions file lacks {', '.join(missing)}")
        arrays = {k: npz[k] for k in keys}  # each npz access decompresses: read every array once
        ids = [str(i) for i in npz["image_ids"]]
    parts = [metrics.per_image_stats(kind, p, t) for p, t in _chunks(arrays, kind, len(ids))]
    per_image = metrics.merge_per_image(parts) if parts else metrics.get_metric(kind).empty_per_image_stats()
    per_image["image_ids"] = ids
    return metrics.aggregate(kind, per_image), per_image


def _same(a: object, b: object) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def rescore_runs(runs_dir: Path | str) -> int:
    """Re-score every ok record with a predictions file under `runs_dir`; return how many changed.

    Records whose recomputed values equal the stored ones are left untouched (no note). Records
    without a predictions file are skipped with a warning.
    """
    changed = 0
    for rec in scan_records(runs_dir).records:
        path = Path(rec.pop(SOURCE_KEY))
        if rec.get("status") != "ok" or rec.get("phase") != "final":
            continue
        if not rec.get("predictions"):
            warnings.warn(f"{path}: no predictions file, cannot re-score", stacklevel=2)
            continue
        npz_path = path.parent / rec["predictions"]
        if not npz_path.is_file():
            warnings.warn(
                f"{path}: predictions file {npz_path.name} is missing, cannot re-score", stacklevel=2
            )
            continue
        test, per_image = rescore_predictions(npz_path, rec["metric"])
        new_test = {**(rec.get("test") or {}), **test}
        if _same(new_test, rec.get("test")) and _same(per_image, rec.get("test_per_image")):
            continue
        note = {"time": utc_now(), "git_commit": git_commit(), "old_test": rec.get("test")}
        rec["rescored"] = [*rec.get("rescored", []), note]
        rec["test"], rec["test_per_image"] = new_test, per_image
        atomic_write_json(path, rec)
        changed += 1
    return changed
