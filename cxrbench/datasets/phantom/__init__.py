"""Synthetic datasets written in each dataset's real raw layout and file formats.

Each module `phantom/<dataset>.py` has `DEFAULT_N` and `write(out_dir, n_images, seed)`; the
output folder is laid out exactly like the real download, so `cxrbench prepare` reads it unchanged.
The five downstream phantoms name their images by real ids, a seeded sample of the reference split
lists (`phantom/ids.py`), so the default `--splits reference` path is the one tests and the demo
run. Every phantom folder holds `cxrbench-phantom.json` (`split_scheme.PHANTOM_MARKER`): prepare
then restricts the reference lists to the ids present and records the split as a subset.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from cxrbench.datasets import DATASET_NAMES
from cxrbench.datasets.split_scheme import PHANTOM_MARKER
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_write_json, atomic_write_text
from cxrbench.output_dirs import OURS, claim_output_dir

IN_PROGRESS = "phantom-in-progress.txt"  # marks `<out>.partial/` of a running or interrupted phantom write
MAX_IMAGES = 100_000


def phantom_module(name: str):
    if name not in DATASET_NAMES:
        raise CxrbenchError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)} or 'all'")
    return importlib.import_module(f"cxrbench.datasets.phantom.{name}")


def write_phantom(name: str, out_dir: str | Path, n_images: int | None = None, seed: int = 0) -> Path:
    """Write one phantom dataset to `out_dir` (empty or absent), via a .partial folder renamed at the end."""
    out_dir = Path(out_dir)
    module = phantom_module(name)
    if n_images is not None and not 1 <= n_images <= MAX_IMAGES:
        raise CxrbenchError(f"--n-images {n_images} is out of range: choose from 1 to {MAX_IMAGES} images")
    if out_dir.exists() and out_dir.is_dir() and any(out_dir.iterdir()):
        raise CxrbenchError(f"{out_dir} is not empty; phantom data is written only into a new folder")
    claim_output_dir(out_dir, marker=(), kind="phantom dataset")
    partial = out_dir.with_name(out_dir.name + ".partial")
    if claim_output_dir(partial, marker=IN_PROGRESS, kind="partial phantom dataset").state == OURS:
        shutil.rmtree(partial)  # an interrupted phantom write (its marker says so)
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_text(partial / IN_PROGRESS, f"cxrbench phantom {name}\n")
    n = module.DEFAULT_N if n_images is None else n_images
    module.write(partial, n, seed)
    atomic_write_json(
        partial / PHANTOM_MARKER,
        {
            "dataset": name,
            "n_images": n,
            "seed": seed,
            "note": "cxrbench phantom: synthetic pixels; downstream image ids are a seeded sample of "
            "the reference split lists, so a prepared phantom is a subset of those splits",
        },
    )
    (partial / IN_PROGRESS).unlink()
    if out_dir.exists():
        out_dir.rmdir()
    partial.rename(out_dir)
    return out_dir
