"""Recompute the test metrics of stored runs from their predictions files (no retraining), and
rewrite records of an older schema version in the current one (a version-2 record's inline per-image
statistics then move into a sidecar, see `sidecar`).

A metric fix then only needs `cxrbench rescore RUNS_DIR`: every ok final record with a predictions
.npz gets fresh ``test`` values and ``test_per_image`` statistics, written atomically, with a
``rescored`` note (time, code version, the old test values) appended to the record.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from cxrbench.protocol import metrics
from cxrbench.protocol.predictions import PredictionsError, read_predictions
from cxrbench.protocol.record_schema import FINAL, RescoreNote, RunRecord, is_ok
from cxrbench.protocol.records import SOURCE_KEY, predictions_file, scan_records, write_record
from cxrbench.protocol.sidecar import same_stats
from cxrbench.provenance import git_commit, utc_now

CHUNK = 256  # images unpacked at a time, so a large segmentation split never sits in memory as bools


def rescore_predictions(npz_path: Path, kind: str) -> tuple[dict[str, float], dict]:
    """(test values, test_per_image) recomputed from one predictions file."""
    predictions = read_predictions(npz_path, kind)
    parts = [metrics.per_image_stats(kind, p, t) for p, t in predictions.chunks(CHUNK)]
    per_image = metrics.merge_per_image(parts) if parts else metrics.get_metric(kind).empty_per_image_stats()
    per_image["image_ids"] = predictions.image_ids
    return metrics.aggregate(kind, per_image), per_image


def _same(a: object, b: object) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@dataclass
class RescoreResult:
    """What `rescore_all` did: records rewritten, and one line per run whose predictions file is damaged
    (that run's record is left as it was; the other runs are still re-scored)."""

    rewritten: int = 0
    damaged: list[str] = field(default_factory=list)


def rescore_runs(runs_dir: Path | str) -> int:
    """Re-score every ok final record with a predictions file under `runs_dir`, and rewrite every
    record of an older schema version; return how many records were rewritten (see `rescore_all`)."""
    return rescore_all(runs_dir).rewritten


def rescore_all(runs_dir: Path | str) -> RescoreResult:
    """`rescore_runs`, also reporting damaged predictions files instead of stopping at the first one.

    Records whose recomputed values equal the stored ones (and are of the current version) are left
    untouched (no note). Records without a predictions file are skipped with a warning.
    """
    scan = scan_records(runs_dir)
    upgraded = {str(p) for p in scan.upgraded}
    result = RescoreResult()
    for rec in scan.records:
        path = Path(rec[SOURCE_KEY])  # type: ignore[typeddict-item]
        rewrite = str(path) in upgraded
        if is_ok(rec) and rec.get("phase") == FINAL:
            try:
                rewrite |= _rescore(rec, path)
            except _DAMAGE as exc:
                result.damaged.append(f"{path}: {_one_line(exc)}; the record is left as it was")
                continue
        if rewrite:
            write_record(path, rec)
            result.rewritten += 1
    return result


# What a damaged predictions file raises: read errors, and arrays that do not fit the record's metric.
_DAMAGE = (PredictionsError, OSError, ValueError, IndexError, KeyError, EOFError, zipfile.BadZipFile)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, PredictionsError) else f"damaged predictions file ({text})"


def _rescore(rec: RunRecord, path: Path) -> bool:
    """Update `rec` in memory from its predictions file; whether anything changed."""
    npz_path = predictions_file(rec)
    if npz_path is None:
        warnings.warn(f"{path}: no predictions file, cannot re-score", stacklevel=3)
        return False
    if not npz_path.is_file():
        warnings.warn(f"{path}: predictions file {npz_path.name} is missing, cannot re-score", stacklevel=3)
        return False
    test, per_image = rescore_predictions(npz_path, rec["metric"])
    new_test = {**(rec.get("test") or {}), **test}
    if _same(new_test, rec.get("test")) and same_stats(per_image, rec.get("test_per_image")):
        return False
    note: RescoreNote = {"time": utc_now(), "git_commit": git_commit(), "old_test": rec.get("test")}
    rec["rescored"] = [*rec.get("rescored", []), note]
    rec["test"], rec["test_per_image"] = new_test, per_image
    return True
