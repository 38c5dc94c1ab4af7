"""Reading a prepared cache: memory-mapped arrays per split, verified against the manifest.

Layout of a prepared dataset folder (written by `cxrbench prepare`):
    prepared.json           completion marker: config, classes, counts, subsets, pixel stats
    manifest.json           per split (and train subset): count and sha256 of the sorted image ids
    <split>/images.npy      uint8 N x S x S (loaded with mmap, no image decoding)
    <split>/masks.npy       uint8 N x C x S x ceil(S/8): np.packbits of bool masks along the last axis
    <split>/boxes.npy       float32 K x 4 xyxy in prepared pixels; box_labels.npy int64 K;
    <split>/box_offsets.npy int64 N+1 (boxes of image i are rows offsets[i]:offsets[i+1])
    <split>/meta.json       image_ids, patient_ids (+ report/sentences/... for MIMIC-CXR)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.datasets.splits import ids_hash
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import read_json

SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One prepared image with its annotations (masks bool CxHxW, boxes float32 Nx4 xyxy)."""

    image: np.ndarray
    masks: np.ndarray | None
    boxes: np.ndarray | None
    labels: np.ndarray | None
    image_id: str
    patient_id: str
    report: str | None = None
    sentences: list[str] | None = None


def _split_meta(path: Path) -> dict:
    """A split's meta.json, parsed once per file version (subsets share it; MIMIC's is large)."""
    return _cached_meta(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=32)
def _cached_meta(path: str, mtime_ns: int) -> dict:
    return read_json(path)


class PreparedSplit(Sequence):
    """A split (optionally restricted to a subset of indices) exposing arrays and samples."""

    def __init__(self, root: Path, name: str, size: int, indices: np.ndarray | None = None):
        self.root, self.name, self.size = root, name, size
        self._dir = root / name
        self._meta = _split_meta(self._dir / "meta.json")
        n = len(self._meta["image_ids"])
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    @cached_property
    def _images(self) -> np.ndarray:
        return np.load(self._dir / "images.npy", mmap_mode="r")

    @cached_property
    def _masks(self) -> np.ndarray | None:
        path = self._dir / "masks.npy"
        return np.load(path, mmap_mode="r") if path.exists() else None

    @cached_property
    def _boxes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if not (self._dir / "boxes.npy").exists():
            return None
        return (
            np.load(self._dir / "boxes.npy"),
            np.load(self._dir / "box_labels.npy"),
            np.load(self._dir / "box_offsets.npy"),
        )

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def image_ids(self) -> list[str]:
        ids = self._meta["image_ids"]
        return [ids[i] for i in self.indices]

    @property
    def patient_ids(self) -> list[str]:
        ids = self._meta["patient_ids"]
        return [ids[i] for i in self.indices]

    def field(self, name: str) -> list[Any]:
        """An extra per-image field stored at prepare time (e.g. 'report', 'sentences')."""
        values = self._meta.get(name)
        if values is None:
            raise KeyError(f"{self.root}: split {self.name!r} has no field {name!r}")
        return [values[i] for i in self.indices]

    @property
    def has_masks(self) -> bool:
        return self._masks is not None

    @property
    def has_boxes(self) -> bool:
        return self._boxes is not None

    def images(self) -> np.ndarray:
        """uint8 N x S x S for this split/subset (a memory map when the split is whole)."""
        if len(self.indices) == self._images.shape[0] and np.array_equal(
            self.indices, np.arange(len(self.indices))
        ):
            return self._images
        return self._images[self.indices]

    def image(self, i: int) -> np.ndarray:
        return np.asarray(self._images[self.indices[i]])

    def masks(self, i: int) -> np.ndarray | None:
        if self._masks is None:
            return None
        return np.unpackbits(self._masks[self.indices[i]], axis=-1, count=self.size).astype(bool)

    def boxes(self, i: int) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        if self._boxes is None:
            return None, None
        boxes, labels, offsets = self._boxes
        j = self.indices[i]
        return boxes[offsets[j] : offsets[j + 1]], labels[offsets[j] : offsets[j + 1]]

    def subset(self, indices: Sequence[int]) -> PreparedSplit:
        return PreparedSplit(
            self.root, self.name, self.size, self.indices[np.asarray(indices, dtype=np.int64)]
        )

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        boxes, labels = self.boxes(i)
        j = self.indices[i]
        report = self._meta.get("report")
        sentences = self._meta.get("sentences")
        return Sample(
            image=self.image(i),
            masks=self.masks(i),
            boxes=boxes,
            labels=labels,
            image_id=self._meta["image_ids"][j],
            patient_id=self._meta["patient_ids"][j],
            report=None if report is None else report[j],
            sentences=None if sentences is None else sentences[j],
        )


class PreparedDataset:
    """A prepared dataset folder; see the module docstring for the layout."""

    def __init__(self, root: Path, meta: dict):
        self.root = root
        self.meta = meta
        self.name: str = meta["dataset"]
        self.size: int = meta["size"]
        self.classes: tuple[str, ...] = tuple(meta["classes"])
        order = {name: k for k, name in enumerate(SPLIT_ORDER)}
        self.splits: tuple[str, ...] = tuple(
            sorted(meta["counts"], key=lambda name: order.get(name, len(order)))
        )
        self.stats: dict[str, float] = meta["stats"]
        self.subsets: dict[str, dict[str, list[int]]] = meta.get("subsets", {})

    def split(self, name: str, percent: float | None = None) -> PreparedSplit:
        """A split; `percent` selects a nested train subset (e.g. 1 or 10) stored at prepare time."""
        if name not in self.splits:
            raise CxrbenchError(f"{self.root}: no split {name!r}; available: {', '.join(self.splits)}")
        split = PreparedSplit(self.root, name, self.size)
        if percent is None or percent >= 100:
            return split
        key = f"{percent:g}"
        available = self.subsets.get(name, {})
        if key not in available:
            raise CxrbenchError(
                f"{self.root}: no {key}% subset of {name!r} (available: {', '.join(available) or 'none'})"
            )
        return split.subset(available[key])


def open_prepared(path: str | Path, verify: bool = True) -> PreparedDataset:
    """Open a prepared cache; refuse incomplete folders and ones whose ids disagree with the manifest."""
    root = Path(path)
    marker = root / "prepared.json"
    if not marker.exists():
        hint = (
            " (an interrupted prepare left only a .partial folder; re-run it)"
            if root.with_name(root.name + ".partial").exists()
            else ""
        )
        raise CxrbenchError(
            f"{root} is not a prepared dataset: {marker.name} is missing{hint}. "
            "Create it with `cxrbench prepare DATASET RAW_DIR OUT_DIR`."
        )
    meta = read_json(marker)
    dataset = PreparedDataset(root, meta)
    if verify:
        verify_manifest(dataset)
    return dataset


def verify_manifest(dataset: PreparedDataset) -> None:
    """Check counts, id hashes and array shapes of every split against manifest.json."""
    manifest = read_json(dataset.root / "manifest.json")
    for name in dataset.splits:
        split = dataset.split(name)
        expected = manifest["splits"].get(name)
        if (
            expected is None
            or expected["count"] != len(split)
            or expected["ids_sha256"] != ids_hash(split.image_ids)
        ):
            raise CxrbenchError(
                f"{dataset.root}: split {name!r} does not match manifest.json; re-run `cxrbench prepare --force`"
            )
        n_images = np.load(dataset.root / name / "images.npy", mmap_mode="r").shape[0]
        if n_images != len(split):
            raise CxrbenchError(
                f"{dataset.root}: {name}/images.npy holds {n_images} images, manifest says {len(split)}"
            )
