"""Recompute the test metrics of stored runs from their predictions files (no retraining), and
rewrite records of an older schema version in the current one (an older record's inline per-image
statistics then move into a sidecar, see `sidecar`).

A metric fix then only needs `cxrbench rescore RUNS_DIR`: every ok final record with a predictions
.npz gets fresh ``test`` values and ``test_per_image`` statistics and the current ``metrics_version``,
written atomically, with a ``rescored`` note (time, code version, the old test values) appended to the
record. Test values the new definitions no longer produce are dropped. The ``val`` values and the
epoch they selected stay as trained (no validation predictions are stored), and so does the
record's protocol hash, which says how the run was trained.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from cxrbench.protocol import metrics
from cxrbench.protocol.predictions import PredictionsError, read_predictions
from cxrbench.protocol.record_schema import FINAL, RescoreNote, RunRecord, is_ok
from cxrbench.protocol.records import SOURCE_KEY, predictions_file, scan_records, write_record
from cxrbench.protocol.sidecar import same_stats
from cxrbench.protocol.tasks import METRICS_VERSION
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
class MetricChange:
    """How one test value changed over the re-scored runs."""

    changed: int = 0  # runs whose value differs (added and dropped values included)
    added: int = 0  # runs that did not have it
    dropped: int = 0  # runs that had it and no longer do
    largest: float = 0.0  # largest absolute change among runs that had a finite value before and after

    def describe(self, key: str) -> str:
        parts = [f"{key}: changed in {self.changed} run(s)"]
        if self.added:
            parts.append(f"new in {self.added}")
        if self.dropped:
            parts.append(f"dropped in {self.dropped}")
        if self.changed > self.added + self.dropped:
            parts.append(f"largest change {self.largest:.4g}")
        return ", ".join(parts)


@dataclass
class RescoreResult:
    """What `rescore_all` did: records rewritten, one line per run whose predictions file is damaged
    (that run's record is left as it was; the other runs are still re-scored), and per test value
    how it changed over the re-scored runs."""

    rewritten: int = 0
    damaged: list[str] = field(default_factory=list)
    rescored: int = 0  # runs whose values were recomputed
    changes: dict[str, MetricChange] = field(default_factory=dict)

    def note_change(self, old: dict | None, new: dict) -> None:
        old = old or {}
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key), new.get(key)
            if _same(a, b):
                continue
            change = self.changes.setdefault(key, MetricChange())
            change.changed += 1
            change.added += key not in old
            change.dropped += key not in new
            if (
                isinstance(a, int | float)
                and isinstance(b, int | float)
                and math.isfinite(a)
                and math.isfinite(b)
            ):
                change.largest = max(change.largest, abs(b - a))

    def summary(self) -> list[str]:
        """One line per test value that changed in some run."""
        return [self.changes[k].describe(k) for k in sorted(self.changes)]


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
                rewrite |= _rescore(rec, path, result)
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


def _rescore(rec: RunRecord, path: Path, result: RescoreResult) -> bool:
    """Update `rec` in memory from its predictions file; whether anything changed."""
    version = rec.get("metrics_version")
    if isinstance(version, int) and version > METRICS_VERSION:
        warnings.warn(
            f"{path}: scored with newer metric definitions (metrics_version {version}), left as it is",
            stacklevel=3,
        )
        return False
    npz_path = predictions_file(rec)
    if npz_path is None:
        warnings.warn(f"{path}: no predictions file, cannot re-score", stacklevel=3)
        return False
    if not npz_path.is_file():
        warnings.warn(f"{path}: predictions file {npz_path.name} is missing, cannot re-score", stacklevel=3)
        return False
    new_test, per_image = rescore_predictions(npz_path, rec["metric"])
    result.rescored += 1
    result.note_change(rec.get("test"), new_test)
    current = rec.get("metrics_version") == METRICS_VERSION
    if current and _same(new_test, rec.get("test")) and same_stats(per_image, rec.get("test_per_image")):
        return False
    note: RescoreNote = {"time": utc_now(), "git_commit": git_commit(), "old_test": rec.get("test")}
    rec["rescored"] = [*rec.get("rescored", []), note]
    rec["test"], rec["test_per_image"] = new_test, per_image
    rec["metrics_version"] = METRICS_VERSION
    return True
