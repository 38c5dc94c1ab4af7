"""Per-image text of a prepared split (MIMIC-CXR reports and sentences) stored for lazy reading.

MIMIC-CXR has about 230,000 frontal images with a report each: one JSON list of every report and
its sentences costs seconds and gigabytes to parse whenever the cache opens. Each text column is
instead one UTF-8 file of the strings back to back plus int64 byte offsets (`.npy`); a column of
string lists adds int64 row offsets into the strings. Both are memory-mapped, so opening costs
nothing and an image's text is decoded when it is read.

Files of a column NAME in a split folder:
    NAME.utf8              the strings' UTF-8 bytes, concatenated
    NAME_offsets.npy       int64 M+1: string k is bytes offsets[k]:offsets[k+1]
    NAME_rows.npy          (lists only) int64 N+1: image i has strings rows[i]:rows[i+1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrbench.datasets.indexed_column import IndexedColumn
from cxrbench.io_utils import atomic_path, atomic_save_npy

TEXT = "text"  # one string per image
TEXT_LIST = "text_list"  # a list of strings per image
KINDS = (TEXT, TEXT_LIST)


def column_files(name: str, kind: str) -> list[str]:
    """The file names a column of this kind occupies in its split folder."""
    files = [f"{name}.utf8", f"{name}_offsets.npy"]
    return [*files, f"{name}_rows.npy"] if kind == TEXT_LIST else files


def write_column(folder: Path, name: str, values: Sequence[str] | Sequence[Sequence[str]]) -> str:
    """Write one column (strings, or lists of strings) atomically; return its kind."""
    kind = TEXT_LIST if any(isinstance(v, (list, tuple)) for v in values) else TEXT
    if kind == TEXT_LIST:
        rows = np.zeros(len(values) + 1, np.int64)
        rows[1:] = np.cumsum([len(v) for v in values])
        strings = [s for v in values for s in v]
    else:
        strings = ["" if v is None else v for v in values]
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    with atomic_path(folder / f"{name}.utf8") as tmp, open(tmp, "wb") as fh:
        fh.write(b"".join(encoded))
    atomic_save_npy(folder / f"{name}_offsets.npy", offsets)
    if kind == TEXT_LIST:
        atomic_save_npy(folder / f"{name}_rows.npy", rows)
    return kind


class TextColumn(IndexedColumn):
    """A read-only column over memory-mapped files; `indices` selects (and orders) the images."""

    def __init__(self, folder: Path, name: str, kind: str, indices: np.ndarray | None = None):
        self.folder, self.name, self.kind = folder, name, kind
        path = folder / f"{name}.utf8"
        size = path.stat().st_size
        self._bytes = np.memmap(path, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        self._offsets = np.load(folder / f"{name}_offsets.npy", mmap_mode="r", allow_pickle=False)
        self._rows = (
            np.load(folder / f"{name}_rows.npy", mmap_mode="r", allow_pickle=False)
            if kind == TEXT_LIST
            else None
        )
        n = len(self._rows if self._rows is not None else self._offsets) - 1
        self.indices = np.arange(n) if indices is None else np.asarray(indices, np.int64)

    def _string(self, k: int) -> str:
        start, end = int(self._offsets[k]), int(self._offsets[k + 1])
        return self._bytes[start:end].tobytes().decode("utf-8")

    def _row(self, j: int) -> str | list[str]:
        if self._rows is None:
            return self._string(j)
        return [self._string(k) for k in range(int(self._rows[j]), int(self._rows[j + 1]))]
