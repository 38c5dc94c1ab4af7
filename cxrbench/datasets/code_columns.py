"""Per-image label-code dicts (MIMIC-CXR's CheXpert codes) stored as one int8 matrix, read lazily.

A dict of 14 small codes per image, kept inline in meta.json, made a full-size MIMIC-CXR cache's
meta.json 100 MB and its opening about a second and 250 MB of Python objects. A code column is
instead one `.npy` matrix, memory-mapped on open; an image's dict is rebuilt when it is read, equal
to the dict that was written.

File of a column NAME in a split folder (its label names are in meta.json's `code_fields`):
    NAME_codes.npy   int8 N x L: codes in -127..126 as given, BLANK (-128) for a None value,
                     ABSENT (127) in every column for an image whose dict is None
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxrbench.datasets.indexed_column import IndexedColumn
from cxrbench.io_utils import atomic_save_npy

BLANK = -128  # the label's value is None (e.g. a blank CheXpert cell)
ABSENT = 127  # every column: the image has no dict at all (None), e.g. its study is not in the table


def code_file(name: str) -> str:
    return f"{name}_codes.npy"


def write_codes(
    folder: Path, name: str, labels: Sequence[str], values: Sequence[Mapping | None]
) -> np.ndarray:
    """Write dicts {label: int | None} (or None) over `labels` as NAME_codes.npy, atomically; return it.

    ValueError for a code outside -127..126 or a dict whose keys are not exactly `labels`.
    """
    codes = np.full((len(values), len(labels)), ABSENT, np.int8)
    for i, value in enumerate(values):
        if value is None:
            continue
        if set(value) != set(labels):
            raise ValueError(f"{name} of image {i}: labels {sorted(value)} are not {sorted(labels)}")
        for j, label in enumerate(labels):
            code = value[label]
            if code is not None and not BLANK < int(code) < ABSENT:
                raise ValueError(f"{name} of image {i}: code {code!r} for {label!r} is not in -127..126")
            codes[i, j] = BLANK if code is None else int(code)
    atomic_save_npy(folder / code_file(name), codes)
    return codes


class CodeColumn(IndexedColumn):
    """A read-only column over a memory-mapped code matrix; `indices` selects (and orders) the images."""

    def __init__(self, folder: Path, name: str, labels: Sequence[str], indices: np.ndarray | None = None):
        self.name, self.labels = name, tuple(labels)
        self._codes = np.load(folder / code_file(name), mmap_mode="r", allow_pickle=False)
        if self._codes.ndim != 2 or self._codes.shape[1] != len(self.labels):
            raise ValueError(f"{code_file(name)} has shape {self._codes.shape}, not N x {len(self.labels)}")
        self.indices = np.arange(len(self._codes)) if indices is None else np.asarray(indices, np.int64)

    def _dict(self, row: np.ndarray) -> dict[str, int | None] | None:
        if (row == ABSENT).all():
            return None
        return {label: None if c == BLANK else int(c) for label, c in zip(self.labels, row.tolist())}

    def _row(self, j: int) -> dict[str, int | None] | None:
        return self._dict(np.asarray(self._codes[j]))

    def __iter__(self):
        for start in range(0, len(self), 4096):  # rows in blocks: one memmap read per block
            block = np.asarray(self._codes[self.indices[start : start + 4096]])
            yield from (self._dict(row) for row in block)
