"""Flat storage of per-image variable-length arrays, so bootstrap resampling is a single gather."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from cxrbench.errors import CxrbenchError


def resolve_indices(indices: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    """Image indices to aggregate over (None = all ``n`` images); duplicates are kept, as in a bootstrap."""
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise CxrbenchError(f"indices must be a 1-D sequence of integers, got shape {idx.shape}, {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise CxrbenchError(f"indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return idx.astype(np.int64)


@dataclass(frozen=True)
class Ragged:
    """Image i owns ``values[offsets[i]:offsets[i + 1]]`` (along the last axis of ``values``)."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_list(cls, items: Sequence[np.ndarray], dtype: type | np.dtype) -> Ragged:
        """Concatenate per-image 1-D arrays (lists or ndarrays; may be empty)."""
        if all(type(a) is list for a in items):  # the JSON form: one pass instead of an array per image
            lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
            values = np.array(list(chain.from_iterable(items)), dtype=dtype)
            if values.ndim == 1:
                return cls(values.reshape(-1), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        arrays = [np.asarray(a, dtype=dtype).reshape(-1) for a in items]
        lengths = np.array([a.size for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
        return cls(values.astype(dtype, copy=False), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Values of images ``idx`` concatenated in that order (an image listed twice appears twice)."""
        starts = self.offsets[idx]
        lengths = self.offsets[idx + 1] - starts
        before = np.cumsum(lengths) - lengths
        gather = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - before, lengths)
        return self.values[gather]

    def take_prefix(self, lengths: np.ndarray) -> np.ndarray:
        """The first ``lengths[i]`` values of every image i, concatenated (each at most the image's own)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        before = np.cumsum(lengths) - lengths
        gather = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(
            self.offsets[:-1] - before, lengths
        )
        return self.values[gather]

    def to_lists(self) -> list[list]:
        """Back to one Python list per image (for JSON)."""
        return [self.values[a:b].tolist() for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def json_floats(values: np.ndarray) -> list[float | None]:
    """Floats for strict JSON: non-finite values (undefined per-image scores) become ``None``."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def float_array(values: Sequence[float | None]) -> np.ndarray:
    """Inverse of :func:`json_floats`: ``None`` becomes NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """R x n int64 matrix: how often each of the ``n`` images is drawn in each row of ``indices`` (R x m)."""
    idx = np.asarray(indices)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise CxrbenchError(f"resampled indices must be an R x m integer array, got shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise CxrbenchError(f"indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    rows = idx.shape[0]
    flat = (idx.astype(np.int64) + n * np.arange(rows, dtype=np.int64)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def check_counts(
    counts: np.ndarray | None, indices: np.ndarray, n: int, dtype: type = np.int64
) -> np.ndarray:
    """``counts`` (R x n, integer-valued) for ``indices`` (R x m) as ``dtype`` (no copy when it already
    is); built from ``indices`` when None."""
    if counts is None:
        return resample_counts(indices, n).astype(dtype, copy=False)
    c = np.asarray(counts)
    if c.shape != (np.shape(indices)[0], n):
        raise CxrbenchError(f"counts must be {np.shape(indices)[0]} x {n}, got shape {c.shape}")
    return c.astype(dtype, copy=False)


def row_chunks(rows: int, width: int, budget: int = 1 << 22) -> list[slice]:
    """Row slices of an ``rows`` x ``width`` matrix holding about ``budget`` elements each (bounds memory)."""
    step = max(1, budget // max(width, 1))
    return [slice(a, min(a + step, rows)) for a in range(0, rows, step)]
