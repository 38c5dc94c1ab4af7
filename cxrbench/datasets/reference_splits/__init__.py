"""The reference train/validation/test id lists of the five downstream datasets, shipped as package data.

The published 18-task numbers were computed on exactly these splits, so a run that wants to be
compared with them must use the same images. The lists (one id per line, in the files
`<dataset>/{train,validation,test}.txt` beside this module) are copied unchanged from the reference
evaluation framework under its MIT licence (LICENSE in this folder travels with them); README.md
says which id each dataset uses. MIMIC-CXR has no list: pre-training uses its official split.
"""

from __future__ import annotations

from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from cxrbench.errors import CxrbenchError, DataError
from cxrbench.io_utils import sha256_text

# Our split name -> the reference file stem (prepared caches call the validation split "val").
SPLIT_FILES: dict[str, str] = {"train": "train", "val": "validation", "test": "test"}
REFERENCE_DATASETS: tuple[str, ...] = ("rsna", "siim", "object_cxr", "nih", "covid_rural")


def reference_split_ids(dataset: str, root: str | Path | None = None) -> dict[str, list[str]]:
    """The reference ids of `dataset` per split ("train", "val", "test"), in file order.

    `root` replaces the shipped lists by a folder of the same layout. Raises CxrbenchError for a
    dataset without reference lists, and DataError naming the file and row for a blank line, a
    repeated id, or an id that appears in two splits.
    """
    if dataset not in REFERENCE_DATASETS:
        raise CxrbenchError(
            f"no reference split lists for dataset {dataset!r}; available: {', '.join(REFERENCE_DATASETS)}"
        )
    base = resources.files(__name__) if root is None else Path(root)
    folder = base.joinpath(dataset)
    splits: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for split, stem in SPLIT_FILES.items():
        entry = folder.joinpath(f"{stem}.txt")
        name = str(entry)
        if not entry.is_file():
            hint = (
                "reinstall cxrbench"
                if root is None
                else "expected <root>/<dataset>/{train,validation,test}.txt"
            )
            raise CxrbenchError(f"reference split list {name} is missing; {hint}")
        ids = []
        for row, line in enumerate(entry.read_text(encoding="utf-8").splitlines(), start=1):
            image_id = line.strip()
            if not image_id:
                raise DataError(name, "blank line", row=row, expected="one id per line")
            if image_id in seen:
                raise DataError(
                    name,
                    f"id {image_id!r} already listed in {seen[image_id]}",
                    row=row,
                    expected="unique ids",
                )
            seen[image_id] = split
            ids.append(image_id)
        splits[split] = ids
    return splits


@cache
def reference_lists_sha256(dataset: str) -> str:
    """Hash of one dataset's shipped lists (split names and ids in file order): which lists a cache used."""
    lists = reference_split_ids(dataset)
    return sha256_text("".join(f"{split}\t{image_id}\n" for split, ids in lists.items() for image_id in ids))


@lru_cache(maxsize=1)
def all_reference_lists_sha256() -> str:
    """Hash over the shipped lists of all five datasets: the reference splits' part of the protocol hash."""
    return sha256_text("".join(f"{name}\t{reference_lists_sha256(name)}\n" for name in REFERENCE_DATASETS))
