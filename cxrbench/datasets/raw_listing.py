"""A fingerprint of a raw download's files (names, sizes, mtimes): has RAW changed since prepare?

Reading every file would take as long as preparing; a stat of each is cheap and catches what
matters in practice: a fixed annotation CSV, an added, removed, replaced or re-downloaded image.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def raw_listing(root: str | Path) -> dict:
    """{"files": n, "bytes": total, "sha256": hash of the sorted (relative path, size, mtime_ns)}."""
    root = Path(root)
    digest = hashlib.sha256()
    n_files = n_bytes = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:  # a broken link: listed by name, as a zero-size entry
                size, mtime = 0, 0
            else:
                size, mtime = stat.st_size, stat.st_mtime_ns
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            digest.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
            n_files += 1
            n_bytes += size
    return {"files": n_files, "bytes": n_bytes, "sha256": digest.hexdigest()}
