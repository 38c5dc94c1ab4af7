"""Atomic file writes and hashing: a killed process never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.errors import CxrbenchError


@contextlib.contextmanager
def explained_os_errors(path: Path) -> Iterator[None]:
    """Turn disk-full and permission errors into a message that names the path."""
    try:
        yield
    except PermissionError as exc:
        raise CxrbenchError(
            f"permission denied writing {path}: check the directory's owner and mode"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CxrbenchError(
                f"no space left on device while writing {path}: free disk space and re-run"
            ) from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it over `path` only on success."""
    path = Path(path)
    with explained_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with explained_os_errors(path):
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically (fsync before rename so a crash cannot expose a truncated file)."""
    with atomic_path(path) as tmp, explained_os_errors(Path(path)), open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save one array as .npy atomically (loadable later with mmap_mode='r')."""
    with atomic_path(path, suffix=".npy") as tmp, explained_os_errors(Path(path)), open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def atomic_link(source: str | Path, path: str | Path) -> None:
    """Put `source`'s content at `path` atomically: a hard link (no copy), or a copy where links fail.

    The source stays where it is, so a step that is killed after this one can run again.
    """
    with atomic_path(path) as tmp, explained_os_errors(Path(path)):
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, tmp)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    return sha256_text(json.dumps(obj, sort_keys=True, default=_json_default))
