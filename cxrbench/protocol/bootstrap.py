"""Bootstrap replicates of one run's test metric, resampled over its test images.

Shared by the leaderboard (`cxrbench.leaderboard.aggregate`, which averages them over a group's runs)
and the record writer, which stores the replicates of the default settings in the run's per-image
statistics sidecar: a run's replicates depend only on its own statistics, its task, the settings and
the metrics code, so computing them once when the run is written spares every later leaderboard build
the work (a cold build of 20 encoders then reads them instead of resampling 1,800 runs).

Replicate b draws n test images with replacement,
``np.random.default_rng([seed, zlib.crc32(task_id.encode())]).integers(0, n, size=(n_boot, n))``, in the
order of the sorted image ids; every run of a task with the same test images gets the same replicates.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from cxrbench.io_utils import sha256_file, sha256_text

DEFAULT_N_BOOT = 1000  # Dice tasks
DEFAULT_N_BOOT_DETECTION = 200  # mAP / FROC tasks
DEFAULT_SEED = 0
SIDECAR_ARRAY = "bootstrap"  # the sidecar array holding [full value, replicate values...]


def bootstrap_indices(task_id: str, n_images: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Resampled test-image positions (n_boot x n_images) shared by every group of one task."""
    rng = np.random.default_rng([seed, zlib.crc32(task_id.encode("utf-8"))])
    return rng.integers(0, n_images, size=(n_boot, n_images))


def default_replicates(kind: str) -> int:
    """The default number of replicates for a metric kind (Dice: 1000; mAP/FROC: 200)."""
    from cxrbench.protocol.metrics import MASKS, get_metric

    return DEFAULT_N_BOOT if get_metric(kind).target is MASKS else DEFAULT_N_BOOT_DETECTION


@lru_cache(maxsize=1)
def metrics_code_hash() -> str:
    """Changes whenever the metrics code changes, so replicates of an old metric are never reused."""
    from cxrbench.protocol import metrics

    folder = Path(metrics.__file__).parent
    return sha256_text("".join(sha256_file(p) for p in sorted(folder.glob("*.py"))))


def settings_key(n_boot: int, seed: int) -> dict:
    """What stored replicates must match to be reused (besides the run's own statistics and task)."""
    return {"n_boot": int(n_boot), "seed": int(seed), "metrics": metrics_code_hash()}


def canonical_order(image_ids: Sequence) -> np.ndarray:
    """canonical position (sorted ids) -> the run's position."""
    ids = [str(i) for i in image_ids]
    return np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)


class Resamples:
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


def replicate_values(kind: str, prepared: object, to_run: np.ndarray, resamples: Resamples) -> np.ndarray:
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


def run_replicates(
    kind: str, per_image: Mapping, to_run: np.ndarray, resamples: Resamples
) -> tuple[np.ndarray, float]:
    """(metric on every replicate, metric on the full test set) of one run."""
    from cxrbench.protocol import metrics

    prepared = metrics.prepare(kind, per_image)
    full = metrics.aggregate(kind, prepared)[kind]
    return replicate_values(kind, prepared, to_run, resamples), full


def stored_replicates(
    kind: str, task_id: str, per_image: Mapping, n_boot: int | None = None, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, dict]:
    """([full value, replicates...] of one run on its own, the settings they match) for the sidecar."""
    n_boot = default_replicates(kind) if n_boot is None else n_boot
    ids = per_image["image_ids"]
    resamples = Resamples(bootstrap_indices(task_id, len(ids), n_boot, seed))
    reps, full = run_replicates(kind, per_image, canonical_order(ids), resamples)
    return np.concatenate([[full], reps]), settings_key(n_boot, seed)
