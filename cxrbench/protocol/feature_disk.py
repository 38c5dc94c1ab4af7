"""The on-disk side of the frozen-feature cache: a cxrbench-owned temporary folder of memmapped arrays.

cxrbench writes only into a folder it created itself (`tempfile.mkdtemp` under the system's
temporary directory, or `parent`), and marks it at once with MARKER (the owner's host and process
id). Each array is written to `<name>.partial` and renamed when complete, so a reader never sees a
half-written file. `OwnedFolder.remove` deletes the folder only while it carries the marker; a folder
left by a killed process (its marker names a process of this host that no longer runs) is removed by
the next cache created under the same parent (`remove_stale`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PREFIX = "cxrbench-features-"
MARKER = "CXRBENCH_FEATURE_CACHE.json"
# numpy has no bfloat16: such features are stored as their 16 bits and viewed back (bit-exact).
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _owner(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def remove_stale(parent: Path) -> list[Path]:
    """Remove feature-cache folders under `parent` left by processes of this host that have ended."""
    removed = []
    host = socket.gethostname()
    for folder in Path(parent).glob(PREFIX + "*"):
        owner = _owner(folder)
        if owner is None or owner.get("host") != host or not isinstance(owner.get("pid"), int):
            continue
        if owner["pid"] != os.getpid() and not _alive(owner["pid"]):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class OwnedFolder:
    """A temporary folder this process created and marked; arrays in it are memmapped .npy files."""

    def __init__(self, parent: Path | None = None):
        parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        remove_stale(parent)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        marker = {"host": socket.gethostname(), "pid": os.getpid(), "created": time.time()}
        (self.path / MARKER).write_text(json.dumps(marker))

    def write(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[np.memmap, Path]:
        """A writable memmap `<name>.partial` of `shape`; `finish` publishes it."""
        partial = self.path / f"{name}.partial"
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=_STORAGE[dtype], shape=shape)
        return array, partial

    def finish(self, array: np.memmap, partial: Path, dtype: torch.dtype) -> torch.Tensor:
        """Flush and rename a written array, then map it again read-only (copy-on-write) as a tensor."""
        array.flush()
        del array
        final = partial.with_suffix(".npy")
        os.replace(partial, final)
        tensor = torch.from_numpy(np.load(final, mmap_mode="c"))
        return tensor.view(dtype) if dtype is torch.bfloat16 else tensor

    def remove(self) -> None:
        """Delete the folder, only if it still carries this process's marker."""
        owner = _owner(self.path)
        if owner is not None and owner.get("pid") == os.getpid():
            shutil.rmtree(self.path, ignore_errors=True)


def storage_view(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as the dtype its memmap stores (bfloat16 as int16 bits, the rest unchanged)."""
    return tensor.view(torch.int16) if tensor.dtype is torch.bfloat16 else tensor


def free_bytes(parent: Path | None = None) -> int:
    """Free space where the disk cache would be written."""
    return shutil.disk_usage(Path(parent) if parent is not None else Path(tempfile.gettempdir())).free
