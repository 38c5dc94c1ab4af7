"""Run records -> per (encoder, task) statistics: the numbers every leaderboard table is built from.

Rules (they are also written into the table footers by `cxrbench.leaderboard.report`):
- Only records with status "ok" and phase "final" enter the statistics; failed final runs are counted
  per group, lr-search runs are ignored. A NaN primary test value is excluded and counted.
- Interval over runs: mean ± t(0.975, n-1) * sd / sqrt(n), sd with n-1 degrees of freedom (the
  reference code used 1.96 * sd / sqrt(5)). One run gives no interval (NaN, flagged).
- Bootstrap interval over test images: replicate b draws n test images with replacement,
  ``np.random.default_rng([seed, zlib.crc32(task_id.encode())]).integers(0, n, size=(n_boot, n))``
  (n_boot = 1000 for Dice tasks, 200 for mAP/FROC tasks by default: see `BootstrapSettings`)
  in the order of the sorted image ids, recomputes the primary metric of every run as
  `metrics.aggregate(kind, per_image, indices)` would (computed for all replicates at once by
  `metrics.bootstrap_aggregate`) and averages over the runs; the interval is the
  2.5 and 97.5 percentiles of the replicates. Every group of a task with the same test images gets
  the same replicates, which is what makes the paired comparisons of `compare` paired.
- Duplicate run ids are refused; final records with different protocol hashes (the hash covers all
  tasks, the profile and the data split), and one encoder name with different checkpoints, are
  refused unless ``allow_mixed=True`` (then noted under the table and flagged on the groups that mix).
  Records of different split schemes (reference lists, seeded by patient, unrecorded) are always refused.
- A group is "comparable with published" only when every one of its records ran on the full reference
  split lists (not a phantom or otherwise incomplete subset) under the full profile.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cxrbench.datasets.split_scheme import SplitIdentity
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_save_npy, sha256_file, sha256_text, stable_hash
from cxrbench.protocol.record_schema import FINAL, is_ok, primary_value
from cxrbench.protocol.records import SOURCE_KEY, check_records
from cxrbench.protocol.tasks import TASKS

MIN_BOOT_FINITE = 0.9
MATCH_TOL = 1e-6


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    dataset: str
    metric: str


def protocol_tasks() -> tuple[TaskInfo, ...]:
    """The 18 tasks in protocol order (task id, dataset, primary metric), from the task registry."""
    return tuple(TaskInfo(t.task_id, t.dataset, t.metric) for t in TASKS)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) with the t distribution; sd and interval are NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=x.size - 1)) * sd / math.sqrt(x.size)
    return mean, sd, mean - half, mean + half


def bootstrap_indices(task_id: str, n_images: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Resampled test-image positions (n_boot x n_images) shared by every group of one task."""
    rng = np.random.default_rng([seed, zlib.crc32(task_id.encode("utf-8"))])
    return rng.integers(0, n_images, size=(n_boot, n_images))


@dataclass(frozen=True)
class BootstrapSettings:
    """Replicates per metric kind. Every kind is computed as count-weighted sums over all replicates at
    once (`metrics.bootstrap_aggregate`); mAP/FROC tasks have their own default count."""

    n_boot: int = 1000
    n_boot_detection: int = 200
    seed: int = 0
    cache_dir: Path | None = None

    def replicates(self, kind: str) -> int:
        from cxrbench.protocol.metrics import MASKS, get_metric

        return self.n_boot if get_metric(kind).target is MASKS else self.n_boot_detection

    def describe(self) -> str:
        if self.n_boot == self.n_boot_detection:
            return f"{self.n_boot} replicates"
        return f"{self.n_boot} replicates for Dice tasks, {self.n_boot_detection} for mAP/FROC tasks"


@dataclass
class Summary:
    """The tidy statistics table plus what the comparisons need (bootstrap replicates per group)."""

    table: pd.DataFrame
    replicates: dict[tuple[str, str], np.ndarray]
    image_sets: dict[tuple[str, str], tuple[str, ...]]
    notes: list[str]
    bootstrap: BootstrapSettings


TABLE_COLUMNS = (
    "encoder",
    "task_id",
    "dataset",
    "metric",
    "n_runs",
    "n_nan",
    "n_failed",
    "mean",
    "sd",
    "ci95_low",
    "ci95_high",
    "boot_low",
    "boot_high",
    "n_boot",
    "n_images",
    "protocol_hash",
    "profile",
    "splits",
    "comparable",
    "flags",
    "source",
)


def summarize_records(
    records: Sequence[dict],
    n_boot: int = 1000,
    n_boot_detection: int = 200,
    seed: int = 0,
    allow_mixed: bool = False,
    cache_dir: Path | str | None = None,
) -> Summary:
    """Per (encoder, task) statistics of the final runs; see the module docstring for the rules.

    ``cache_dir`` keeps each run's bootstrap replicates on disk, keyed by the record file's sha256,
    the settings and the metrics code, so rebuilding a leaderboard only resamples new or changed runs.
    """
    settings = BootstrapSettings(n_boot, n_boot_detection, seed, Path(cache_dir) if cache_dir else None)
    notes = check_records(records, allow_mixed=allow_mixed)
    catalogue = {t.task_id: t for t in protocol_tasks()}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for rec in records:
        if rec.get("phase") == FINAL:
            groups[(str(rec["encoder"]), str(rec["task_id"]))].append(rec)
    rows, replicates, image_sets, resamples = [], {}, {}, {}
    order = {t: i for i, t in enumerate(catalogue)}
    # task by task, so that one task's resampled indices are built once and then dropped
    for (encoder, task_id), recs in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][1], len(order)), kv[0][1], kv[0][0])
    ):
        info = catalogue.get(task_id) or TaskInfo(
            task_id, str(recs[0].get("dataset", "")), str(recs[0]["metric"])
        )
        wrong = sorted({str(r["metric"]) for r in recs} - {info.metric})
        if wrong:
            raise CxrbenchError(
                f"{encoder}/{task_id}: records name primary metric {wrong}, the task's is {info.metric!r}"
            )
        row, reps, ids = _summarize_group(encoder, info, recs, settings, resamples)
        rows.append(row)
        if reps is not None:
            replicates[(encoder, task_id)] = reps
            image_sets[(encoder, task_id)] = ids
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    if not table.empty:
        table["_order"] = [order.get(t, len(order)) for t in table["task_id"]]
        table = (
            table.sort_values(["_order", "task_id", "encoder"]).drop(columns="_order").reset_index(drop=True)
        )
    return Summary(table, replicates, image_sets, notes, settings)


def _summarize_group(
    encoder: str, info: TaskInfo, recs: list[dict], settings: BootstrapSettings, resamples: dict
) -> tuple[dict, np.ndarray | None, tuple[str, ...]]:
    ok = sorted((r for r in recs if is_ok(r)), key=lambda r: (r.get("seed", 0), r["run_id"]))
    n_failed = len(recs) - len(ok)
    values = np.array([primary_value(r) for r in ok], dtype=float)
    finite = np.isfinite(values)
    used = [r for r, f in zip(ok, finite, strict=True) if f]
    mean, sd, low, high = t_interval(values[finite])
    flags = []
    if len(used) == 1:
        flags.append("single run: no t-interval")
    if not used:
        flags.append("no successful run")
    if (~finite).sum():
        flags.append(f"{int((~finite).sum())} NaN value(s) excluded")
    if n_failed:
        flags.append(f"{n_failed} failed run(s) excluded")
    if any(c > 1 for c in Counter(r.get("seed") for r in used).values()):
        flags.append("repeated seed")
    hashes = sorted({str(r["protocol_hash"]) for r in recs})
    if len(hashes) > 1:
        flags.append("mixed protocol hashes")
    reps, ids, boot_flags = _group_bootstrap(info, used, settings, resamples)
    flags.extend(boot_flags)
    boot_low = boot_high = math.nan
    if reps is not None:
        fin = reps[np.isfinite(reps)]
        if fin.size >= MIN_BOOT_FINITE * reps.size:
            boot_low, boot_high = (float(v) for v in np.percentile(fin, [2.5, 97.5]))
        else:
            flags.append("bootstrap replicates mostly undefined")
    splits = {SplitIdentity.from_dict(r.get("splits")) for r in recs}
    comparable = all(i.full_reference for i in splits) and all(r.get("profile") == "full" for r in recs)
    row = {
        "encoder": encoder,
        "task_id": info.task_id,
        "dataset": info.dataset,
        "metric": info.metric,
        "n_runs": len(used),
        "n_nan": int((~finite).sum()),
        "n_failed": n_failed,
        "mean": mean,
        "sd": sd,
        "ci95_low": low,
        "ci95_high": high,
        "boot_low": boot_low,
        "boot_high": boot_high,
        "n_boot": 0 if reps is None else len(reps),
        "n_images": len(ids),
        "protocol_hash": ",".join(hashes),
        "profile": ",".join(sorted({str(r.get("profile", "")) for r in recs})),
        "splits": "; ".join(sorted(i.describe() for i in splits)),
        "comparable": comparable,
        "flags": "; ".join(flags),
        "source": "measured",
    }
    return row, reps, ids


def _group_bootstrap(
    info: TaskInfo, used: list[dict], settings: BootstrapSettings, resamples: dict
) -> tuple[np.ndarray | None, tuple[str, ...], list[str]]:
    """Replicates of the run-mean metric over resampled test images (None when not computable)."""
    n_boot = settings.replicates(info.metric)
    if not used or n_boot <= 0:
        return None, (), []
    per_images = [r.get("test_per_image") or {} for r in used]
    if any("image_ids" not in p for p in per_images):
        return None, (), ["no per-image stats: no bootstrap interval"]
    id_lists = [[str(i) for i in p["image_ids"]] for p in per_images]
    ids = tuple(sorted(id_lists[0]))
    if len(set(ids)) != len(ids) or any(sorted(lst) != list(ids) for lst in id_lists[1:]):
        return None, (), ["runs do not share the same test images: no bootstrap interval"]
    key = (info.task_id, ids)
    if key not in resamples:
        resamples.clear()
        resamples[key] = _Resamples(bootstrap_indices(info.task_id, len(ids), n_boot, settings.seed))
    position = {image_id: k for k, image_id in enumerate(ids)}
    flags, per_run = [], []
    for rec, lst, per_image in zip(used, id_lists, per_images, strict=True):
        to_run = np.empty(len(ids), dtype=np.int64)  # canonical position -> this run's position
        to_run[[position[i] for i in lst]] = np.arange(len(lst))
        try:
            reps, full = _run_replicates(info.metric, rec, per_image, to_run, resamples[key], settings)
        except (CxrbenchError, KeyError, TypeError, ValueError) as exc:
            return None, (), [f"unreadable per-image stats ({exc}): no bootstrap interval"]
        if not flags and not math.isclose(full, primary_value(rec), rel_tol=MATCH_TOL, abs_tol=MATCH_TOL):
            flags.append("test value differs from its per-image stats (run cxrbench rescore)")
        per_run.append(reps)
    return np.mean(per_run, axis=0), ids, flags


class _Resamples:
    """One task's bootstrap image positions, and the per-image draw counts they imply (built lazily).

    `for_run` re-expresses both in one run's image order; runs of a task usually share that order, so
    the last one is kept."""

    def __init__(self, indices: np.ndarray):
        self.indices = indices
        self._counts: np.ndarray | None = None
        self._last: tuple[bytes, np.dtype, np.ndarray, np.ndarray] | None = None

    @property
    def counts(self) -> np.ndarray:
        """n_boot x n_images matrix: how often each image was drawn in each replicate."""
        if self._counts is None:
            b, n = self.indices.shape
            flat = (self.indices + n * np.arange(b)[:, None]).ravel()
            self._counts = np.bincount(flat, minlength=b * n).reshape(b, n)
        return self._counts

    def for_run(self, to_run: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
        """(indices, counts as ``dtype``) in the run's image positions (``to_run``: canonical -> run)."""
        key = to_run.tobytes()
        if self._last is None or self._last[0] != key or self._last[1] != np.dtype(dtype):
            if np.array_equal(to_run, np.arange(to_run.size)):
                indices, counts = self.indices, self.counts.astype(dtype, copy=False)
            else:
                indices, counts = to_run[self.indices], np.empty(self.counts.shape, dtype=dtype)
                counts[:, to_run] = self.counts
            self._last = (key, np.dtype(dtype), indices, counts)
        return self._last[2], self._last[3]


def _run_replicates(
    kind: str,
    rec: dict,
    per_image: dict,
    to_run: np.ndarray,
    resamples: _Resamples,
    settings: BootstrapSettings,
) -> tuple[np.ndarray, float]:
    """(metric on every replicate, metric on the full test set) of one run, from the disk cache if there."""
    from cxrbench.protocol import metrics

    path = _cache_path(rec, settings)
    if path is not None and path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (resamples.indices.shape[0] + 1,):
            return cached[1:], float(cached[0])
    prepared = metrics.prepare(kind, per_image)
    full = metrics.aggregate(kind, prepared)[kind]
    reps = _replicate_values(kind, prepared, to_run, resamples)
    if path is not None:
        atomic_save_npy(path, np.concatenate([[full], reps]))
    return reps, full


@lru_cache(maxsize=1)
def _metrics_code_hash() -> str:
    """Changes whenever the metrics code changes, so cached replicates of an old metric are not reused."""
    from cxrbench.protocol import metrics

    folder = Path(metrics.__file__).parent
    return sha256_text("".join(sha256_file(p) for p in sorted(folder.glob("*.py"))))


def _cache_path(rec: dict, settings: BootstrapSettings) -> Path | None:
    if settings.cache_dir is None or SOURCE_KEY not in rec:
        return None
    key = stable_hash(
        {
            "format": 1,
            "record": sha256_file(rec[SOURCE_KEY]),
            "n_boot": settings.replicates(str(rec["metric"])),
            "seed": settings.seed,
            "metrics": _metrics_code_hash(),
        }
    )
    return settings.cache_dir / f"{key[:32]}.npy"


def _replicate_values(kind: str, prepared: object, to_run: np.ndarray, resamples: _Resamples) -> np.ndarray:
    """The metric on every replicate, all at once as count-weighted sums (`metrics.bootstrap_aggregate`),
    checked on the first replicate against `metrics.aggregate`."""
    from cxrbench.protocol import metrics

    indices, counts = resamples.for_run(to_run, metrics.get_metric(kind).counts_dtype)
    fast = metrics.bootstrap_aggregate(kind, prepared, indices, counts, primary_only=True)[kind]
    check = metrics.aggregate(kind, prepared, indices[0])[kind]
    both_nan = math.isnan(fast[0]) and math.isnan(check)
    if both_nan or math.isclose(fast[0], check, rel_tol=1e-9, abs_tol=1e-12):
        return fast
    warnings.warn(
        f"fast {kind} bootstrap disagrees with metrics.aggregate; using the slow path", stacklevel=2
    )
    return np.array([metrics.aggregate(kind, prepared, row)[kind] for row in indices], dtype=float)
