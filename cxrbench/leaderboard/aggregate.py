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

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cxrbench.datasets.split_scheme import SplitIdentity
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_save_npy, sha256_file, stable_hash
from cxrbench.protocol.bootstrap import (
    SIDECAR_ARRAY,
    Resamples,
    bootstrap_indices,
    canonical_order,
    metrics_code_hash,
    run_replicates,
    settings_key,
)
from cxrbench.protocol.record_schema import FINAL, is_ok, primary_value
from cxrbench.protocol.records import SOURCE_KEY, check_records
from cxrbench.protocol.sidecar import ImageSet, SidecarStats, image_set
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
    half = _t_quantile(0.5 + level / 2, x.size - 1) * sd / math.sqrt(x.size)
    return mean, sd, mean - half, mean + half


@functools.lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    """scipy's t quantile, remembered: a leaderboard asks for the same few (q, df) hundreds of times, and
    each scipy call costs milliseconds (a quarter of a warm 20-encoder build)."""
    return float(stats.t.ppf(q, df=df))


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
    image_sets: dict[tuple[str, str], ImageSet]  # which test images a group's runs share (digest, count)
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
        row, reps, images = _summarize_group(encoder, info, recs, settings, resamples)
        rows.append(row)
        if reps is not None and images is not None:
            replicates[(encoder, task_id)] = reps
            image_sets[(encoder, task_id)] = images
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    if not table.empty:
        table["_order"] = [order.get(t, len(order)) for t in table["task_id"]]
        table = (
            table.sort_values(["_order", "task_id", "encoder"]).drop(columns="_order").reset_index(drop=True)
        )
    return Summary(table, replicates, image_sets, notes, settings)


def _summarize_group(
    encoder: str, info: TaskInfo, recs: list[dict], settings: BootstrapSettings, resamples: dict
) -> tuple[dict, np.ndarray | None, ImageSet | None]:
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
    reps, images, boot_flags = _group_bootstrap(info, used, settings, resamples)
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
        "n_images": 0 if images is None else images.size,
        "protocol_hash": ",".join(hashes),
        "profile": ",".join(sorted({str(r.get("profile", "")) for r in recs})),
        "splits": "; ".join(sorted(i.describe() for i in splits)),
        "comparable": comparable,
        "flags": "; ".join(flags),
        "source": "measured",
    }
    return row, reps, images


def _group_bootstrap(
    info: TaskInfo, used: list[dict], settings: BootstrapSettings, resamples: dict
) -> tuple[np.ndarray | None, ImageSet | None, list[str]]:
    """Replicates of the run-mean metric over resampled test images (None when not computable).

    Each run's replicates come from its sidecar (stored when the run was written, if they match the
    settings and metrics code), else from the leaderboard cache, else are computed from its statistics."""
    n_boot = settings.replicates(info.metric)
    if not used or n_boot <= 0:
        return None, None, []
    per_images = [r.get("test_per_image") or {} for r in used]
    images = [_image_set(p) for p in per_images]
    if any(i is None for i in images):
        return None, None, ["no per-image stats: no bootstrap interval"]
    if len(set(images)) != 1 or not images[0].unique:  # type: ignore[union-attr]
        return None, None, ["runs do not share the same test images: no bootstrap interval"]
    shared: ImageSet = images[0]  # type: ignore[assignment]
    key = (info.task_id, shared.digest, shared.size, n_boot)
    flags, per_run = [], []
    for rec, per_image in zip(used, per_images, strict=True):
        try:
            values = _run_replicates(info, rec, per_image, key, resamples, settings)
        except (CxrbenchError, KeyError, TypeError, ValueError) as exc:
            return None, None, [f"unreadable per-image stats ({exc}): no bootstrap interval"]
        full = float(values[0])
        if not flags and not math.isclose(full, primary_value(rec), rel_tol=MATCH_TOL, abs_tol=MATCH_TOL):
            flags.append("test value differs from its per-image stats (run cxrbench rescore)")
        per_run.append(values[1:])
    return np.mean(per_run, axis=0), shared, flags


def _image_set(per_image: Mapping) -> ImageSet | None:
    """The run's test images from its sidecar reference (no file read), else from its inline ids."""
    if isinstance(per_image, SidecarStats) and per_image.image_set is not None:
        return per_image.image_set
    if "image_ids" not in per_image:
        return None
    return image_set(per_image["image_ids"])


def _run_replicates(
    info: TaskInfo, rec: dict, per_image: Mapping, key: tuple, resamples: dict, settings: BootstrapSettings
) -> np.ndarray:
    """[metric on the full test set, metric on every replicate] of one run (see `_group_bootstrap`)."""
    _, _, n_images, n_boot = key
    values = _sidecar_replicates(per_image, n_boot, settings.seed)
    if values is not None:
        return values  # stored beside the record when it was written: no second copy in the cache
    path = _cache_path(rec, settings)
    if path is not None and path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (n_boot + 1,):
            return cached
    if key not in resamples:  # one task at a time: the previous task's resamples are dropped
        resamples.clear()
        resamples[key] = Resamples(bootstrap_indices(info.task_id, n_images, n_boot, settings.seed))
    reps, full = run_replicates(
        info.metric, per_image, canonical_order(per_image["image_ids"]), resamples[key]
    )
    values = np.concatenate([[full], reps])
    if path is not None:
        atomic_save_npy(path, values)
    return values


def _sidecar_replicates(per_image: Mapping, n_boot: int, seed: int) -> np.ndarray | None:
    """The replicates stored in the run's sidecar when they were made with these settings and metrics."""
    if not isinstance(per_image, SidecarStats) or per_image.ref.get("bootstrap") != settings_key(
        n_boot, seed
    ):
        return None
    if not isinstance((per_image.ref.get("extra") or {}).get(SIDECAR_ARRAY), dict):
        return None  # not stored in a form this cxrbench reads: computed instead
    values = per_image.extra(SIDECAR_ARRAY)
    return values if values.shape == (n_boot + 1,) else None


def _cache_path(rec: dict, settings: BootstrapSettings) -> Path | None:
    if settings.cache_dir is None or SOURCE_KEY not in rec:
        return None
    key = stable_hash(
        {
            "format": 1,
            "record": sha256_file(rec[SOURCE_KEY]),
            "n_boot": settings.replicates(str(rec["metric"])),
            "seed": settings.seed,
            "metrics": metrics_code_hash(),
        }
    )
    return settings.cache_dir / f"{key[:32]}.npy"
