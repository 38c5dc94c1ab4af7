"""A uint8 .npy array of image rows filled in place by plain file writes (prepare's split arrays).

Why not a memory map: a write into a mapped page the disk cannot back kills the process with
SIGBUS, with no message, while a plain write fails with ENOSPC, which `explained_os_errors` turns
into an error naming the file. The space is reserved when the file is made, so a disk too small for
the split fails at once, not hours in. The header is the one `np.save` writes for the same array,
so a filled file is byte-identical to saving the array.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np

from cxrbench.io_utils import atomic_path, explained_os_errors

COPY_ROWS = 1024  # rows copied at a time by `copy_kept_rows`: memory stays flat at any split size


def _header(shape: tuple[int, ...]) -> bytes:
    """np.save's header for a C-ordered uint8 array of `shape` (format 1.0, as it chooses here)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def create_rows_file(path: Path, shape: tuple[int, ...]) -> None:
    """Make `path` (atomically) a zero-filled uint8 array of `shape`, its space reserved on disk."""
    header = _header(shape)
    with atomic_path(path, suffix=".npy") as tmp, explained_os_errors(path), open(tmp, "r+b") as fh:
        fh.write(header)
        size = len(header) + int(np.prod(shape))
        fh.truncate(size)
        try:
            os.posix_fallocate(fh.fileno(), 0, size)
        except AttributeError:  # no such call on this system (macOS): the space is taken as written
            pass
        except OSError as exc:  # a file system that cannot reserve space: likewise
            if exc.errno == errno.ENOSPC:
                raise


def _read_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy file open in `fh`, left at the start of its data."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def is_rows_file(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether `path` is a whole uint8 rows file of `shape` (header and every data byte present)."""
    try:
        with open(path, "rb") as fh:
            header = _read_header(fh)
            return header == (shape, False, np.dtype(np.uint8)) and (
                fh.tell() + int(np.prod(shape)) == os.fstat(fh.fileno()).st_size
            )
    except (OSError, ValueError):
        return False


def write_rows(path: Path, start: int, rows: np.ndarray) -> None:
    """Write `rows` (uint8 K x ...) over rows start..start+K-1 of the rows file `path`."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    with explained_os_errors(path), open(path, "r+b") as fh:
        shape = _read_header(fh)[0]
        if rows.shape[1:] != tuple(shape[1:]) or start + len(rows) > shape[0]:
            raise ValueError(f"{path}: rows {start}..{start + len(rows)} of {rows.shape} do not fit {shape}")
        fh.seek(fh.tell() + start * int(np.prod(shape[1:])))
        fh.write(rows.data)


def copy_kept_rows(source: Path, target: Path, keep: np.ndarray) -> None:
    """Write (atomically) the rows of `source` where `keep` is true, in order, as the .npy `target`."""
    rows = np.load(source, mmap_mode="r")
    shape = (int(np.count_nonzero(keep)), *rows.shape[1:])
    kept = np.flatnonzero(keep)
    with atomic_path(target, suffix=".npy") as tmp, explained_os_errors(target), open(tmp, "r+b") as fh:
        fh.write(_header(shape))
        for begin in range(0, len(kept), COPY_ROWS):
            fh.write(np.ascontiguousarray(rows[kept[begin : begin + COPY_ROWS]]).data)
