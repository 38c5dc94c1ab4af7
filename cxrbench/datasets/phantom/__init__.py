"""Synthetic datasets written in each dataset's real raw layout and file formats.

Each module `phantom/<dataset>.py` has `DEFAULT_N` and `write(out_dir, n_images, seed)`; the
output folder is laid out exactly like the real download, so `cxrbench prepare` reads it unchanged.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from cxrbench.datasets import DATASET_NAMES
from cxrbench.errors import CxrbenchError


def phantom_module(name: str):
    if name not in DATASET_NAMES:
        raise CxrbenchError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)} or 'all'")
    return importlib.import_module(f"cxrbench.datasets.phantom.{name}")


def write_phantom(name: str, out_dir: str | Path, n_images: int | None = None, seed: int = 0) -> Path:
    """Write one phantom dataset to `out_dir` (empty or absent), via a .partial folder renamed at the end."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CxrbenchError(f"{out_dir} is not empty; phantom data is written only into a new folder")
    module = phantom_module(name)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    module.write(partial, module.DEFAULT_N if n_images is None else n_images, seed)
    if out_dir.exists():
        out_dir.rmdir()
    partial.rename(out_dir)
    return out_dir
