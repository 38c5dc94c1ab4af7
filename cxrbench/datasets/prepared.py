"""Reading a prepared cache: memory-mapped arrays per split, verified against the manifest.

Layout of a prepared dataset folder (written by `cxrbench prepare`):
    prepared.json           completion marker: config, classes, counts, subsets, pixel stats, split
    manifest.json           per split (and train subset): count and sha256 of the sorted image ids;
                            the split scheme and lists hash; the train subsets' ids
    <split>/images.npy      uint8 N x S x S (loaded with mmap, no image decoding)
    <split>/masks.npy       uint8 N x C x S x ceil(S/8): np.packbits of bool masks along the last axis
    <split>/boxes.npy       float32 K x 4 xyxy in prepared pixels; box_labels.npy int64 K;
    <split>/box_offsets.npy int64 N+1 (boxes of image i are rows offsets[i]:offsets[i+1])
    <split>/meta.json       image_ids, patient_ids (+ study_id/view/... for MIMIC-CXR) and
                            text_fields: {name: kind} of the split's text columns
    <split>/report.utf8 ... MIMIC-CXR's reports and sentences as memory-mapped text columns
                            (text_columns.py: UTF-8 bytes + int64 offsets), decoded per image
    <split>/chexpert_codes.npy  MIMIC-CXR's CheXpert codes, int8 N x 14 (code_columns.py), label
                            names in meta.json's code_fields; each image's dict rebuilt when read

Integrity: manifest.json records, per split file, its size, sha256 and (arrays) shape and dtype.
Opening checks the cheap part (each file is present, whole and of the recorded shape: stat and
.npy header only); `cxrbench verify --prepared PATH` re-hashes every file. Each damage found is one
DamagedCacheError naming the file and the `cxrbench prepare ... --force` command that rebuilds it.
Caches written before checksums were recorded still open (their arrays are checked against their
own headers and the counts).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.datasets.code_columns import CodeColumn, code_file
from cxrbench.datasets.split_scheme import PATIENT, SplitIdentity
from cxrbench.datasets.splits import ids_hash
from cxrbench.datasets.text_columns import TextColumn, column_files
from cxrbench.errors import CxrbenchError, DamagedCacheError
from cxrbench.io_utils import read_json, sha256_file

# The prepared-cache format this cxrbench writes; older formats still open (their arrays are checked
# against their own headers), newer ones are refused.
# 2: manifest checksums, split rule, strictness and raw fingerprint recorded. 3: reference split lists
# (split scheme recorded), overhanging boxes clipped, ellipses as boxes, equalisation as skimage's.
# 4: MIMIC-CXR reports and sentences as memory-mapped text columns, not lists in meta.json.
# 5: MIMIC-CXR CheXpert codes as a memory-mapped int8 matrix (code_columns.py), not dicts in meta.json.
FORMAT_VERSION = 5
# Fields that caches before format 4 stored inline in meta.json: too large to parse at full size.
INLINE_TEXT_FIELDS = ("report", "sentences")

SPLIT_ORDER = ("train", "val", "test")
MARKER = "prepared.json"  # completion marker, written last
IN_PROGRESS = "prepare-in-progress.json"  # marks `<out>.partial/` of a running or interrupted prepare
DEFAULT_SIZE = 224


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
        self._meta = _read_split_meta(root, self._dir / "meta.json")
        inline = [name for name in INLINE_TEXT_FIELDS if name in self._meta]
        if inline:
            raise CxrbenchError(
                f"{self._dir / 'meta.json'} holds the {' and '.join(inline)} inline: this cache was "
                f"prepared by an older cxrbench (format < 4), whose reports do not open at full size. "
                f"Re-prepare it with `{rebuild_command(root, _best_effort_marker(root))}`"
            )
        n = len(self._meta["image_ids"])
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        self._text_kinds: dict[str, str] = self._meta.get("text_fields") or {}
        self._columns: dict[str, TextColumn] = {}
        self._code_labels: dict[str, list[str]] = self._meta.get("code_fields") or {}
        self._code_columns: dict[str, CodeColumn] = {}

    @cached_property
    def _images(self) -> np.ndarray:
        return _load_array(self.root, self._dir / "images.npy", mmap=True)

    @cached_property
    def _masks(self) -> np.ndarray | None:
        path = self._dir / "masks.npy"
        return _load_array(self.root, path, mmap=True) if path.exists() else None

    @cached_property
    def _boxes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if not (self._dir / "boxes.npy").exists():
            return None
        return (
            _load_array(self.root, self._dir / "boxes.npy"),
            _load_array(self.root, self._dir / "box_labels.npy"),
            _load_array(self.root, self._dir / "box_offsets.npy"),
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

    def _text_column(self, name: str) -> TextColumn | None:
        """The whole split's text column `name` (memory-mapped on first use), or None."""
        if name not in self._text_kinds:
            return None
        if name not in self._columns:
            try:
                self._columns[name] = TextColumn(self._dir, name, self._text_kinds[name])
            except (OSError, ValueError) as exc:
                raise damaged(self.root, self._dir / f"{name}.utf8", f"cannot be read ({exc})") from exc
        return self._columns[name]

    def _code_column(self, name: str) -> CodeColumn | None:
        """The whole split's code column `name` (memory-mapped on first use), or None."""
        if name not in self._code_labels:
            return None
        if name not in self._code_columns:
            path = self._dir / code_file(name)
            try:
                self._code_columns[name] = CodeColumn(self._dir, name, self._code_labels[name])
            except (OSError, ValueError) as exc:
                raise damaged(self.root, path, f"cannot be read ({exc})") from exc
        return self._code_columns[name]

    def field(self, name: str) -> Sequence[Any]:
        """An extra per-image field stored at prepare time (e.g. 'report', 'sentences', 'chexpert').

        Text and code columns come back as lazy sequences (decoded per item), other fields as a list.
        """
        column = self._text_column(name)
        column = self._code_column(name) if column is None else column
        if column is not None:
            return column.take(self.indices)
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
        report = self._text_column("report")
        sentences = self._text_column("sentences")
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
        # Caches written before the split was recorded (format < 3) read as "unrecorded".
        self.split_identity = SplitIdentity.from_dict(meta.get("split"))

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


def rebuild_command(root: Path, meta: dict | None = None, raw_root: Path | None = None) -> str:
    """The command that rebuilds the cache at `root` (as exact as what is known about it)."""
    meta = meta if isinstance(meta, dict) else {}
    raw = raw_root or meta.get("raw_dir") or "RAW_DIR"
    size = meta.get("size")
    command = f"cxrbench prepare {meta.get('dataset') or 'DATASET'} {shlex.quote(str(raw))} {shlex.quote(str(root))}"
    if isinstance(size, int) and size != DEFAULT_SIZE:
        command += f" --size {size}"
    split = (meta.get("config") or {}).get("split") if isinstance(meta.get("config"), dict) else None
    if isinstance(split, dict) and split.get("scheme") == PATIENT:
        command += f" --splits {PATIENT}"
    return command + " --force"


def _best_effort_marker(root: Path) -> dict:
    """What is known about how the cache was made: prepared.json, else the copy kept in manifest.json."""
    for name, key in ((MARKER, None), ("manifest.json", "source")):
        try:
            meta = read_json(root / name)
        except (OSError, ValueError):
            continue
        meta = meta.get(key) if key and isinstance(meta, dict) else meta
        if isinstance(meta, dict) and meta.get("dataset"):
            return meta
    return {}


def damaged(root: Path, file: Path, what: str, meta: dict | None = None) -> DamagedCacheError:
    """One line: which file of the cache at `root` is damaged, how, and the command that rebuilds it."""
    meta = _best_effort_marker(root) if meta is None else meta
    return DamagedCacheError(
        f"{file}: {what}; the prepared cache {root} is damaged, rebuild it with `{rebuild_command(root, meta)}`"
    )


def read_marker(root: Path) -> dict:
    """prepared.json as a dict, or a DamagedCacheError naming it."""
    path = root / MARKER
    try:
        meta = read_json(path)
    except (OSError, ValueError) as exc:
        reason = (
            "is not valid JSON" if isinstance(exc, ValueError) else f"cannot be read ({exc.strerror or exc})"
        )
        raise damaged(root, path, reason) from exc
    if not isinstance(meta, dict):
        raise damaged(root, path, "does not hold a JSON object")
    return meta


def _read_split_meta(root: Path, path: Path) -> dict:
    try:
        meta = _split_meta(path)
    except FileNotFoundError as exc:
        raise damaged(root, path, "is missing") from exc
    except (OSError, ValueError) as exc:
        raise damaged(root, path, f"cannot be read as JSON ({exc})") from exc
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("image_ids"), list)
        or not isinstance(meta.get("patient_ids"), list)
        or len(meta["image_ids"]) != len(meta["patient_ids"])
    ):
        raise damaged(root, path, "lacks equally long image_ids and patient_ids lists")
    return meta


def _load_array(root: Path, path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as exc:
        raise damaged(root, path, "is missing") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise damaged(root, path, f"cannot be read as an array ({exc})") from exc


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header, without reading the data."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        return tuple(shape), dtype, fh.tell()


def array_record(path: Path, array: np.ndarray) -> dict:
    """What the manifest records of one written array: size, checksum, shape and dtype."""
    return {**file_record(path), "shape": list(array.shape), "dtype": array.dtype.str}


def file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def open_prepared(path: str | Path, verify: bool = True) -> PreparedDataset:
    """Open a prepared cache; refuse incomplete or damaged folders (cheap checks; see module docstring)."""
    root = Path(path)
    marker = root / MARKER
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
    meta = read_marker(root)
    version = (meta.get("config") or {}).get("format_version") if isinstance(meta, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CxrbenchError(
            f"{root} was prepared by a newer cxrbench (cache format {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade cxrbench or re-prepare it with `cxrbench prepare ... --force`"
        )
    try:
        dataset = PreparedDataset(root, meta)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise damaged(root, marker, f"lacks or mangles the entry {exc}", meta) from exc
    if verify:
        verify_manifest(dataset)
    return dataset


def _read_manifest(dataset: PreparedDataset) -> dict:
    path = dataset.root / "manifest.json"
    try:
        manifest = read_json(path)
    except FileNotFoundError as exc:
        raise damaged(dataset.root, path, "is missing", dataset.meta) from exc
    except (OSError, ValueError) as exc:
        raise damaged(dataset.root, path, f"cannot be read as JSON ({exc})", dataset.meta) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise damaged(dataset.root, path, "lacks the per-split entries", dataset.meta)
    return manifest


def _expected_arrays(dataset: PreparedDataset) -> list[str]:
    names = ["images.npy"]
    if dataset.meta.get("has_masks"):
        names.append("masks.npy")
    if dataset.meta.get("has_boxes"):
        names += ["boxes.npy", "box_labels.npy", "box_offsets.npy"]
    return names


def _check_array(dataset: PreparedDataset, path: Path, record: dict | None, count: int) -> None:
    """Cheap checks of one array: present, header readable, whole, recorded shape, consistent count."""
    root, meta = dataset.root, dataset.meta
    if not path.is_file():
        raise damaged(root, path, "is missing", meta)
    size = path.stat().st_size
    if record is not None and size != record.get("bytes"):
        raise damaged(root, path, f"holds {size} bytes, the manifest recorded {record.get('bytes')}", meta)
    try:
        shape, dtype, offset = npy_header(path)
    except (OSError, ValueError, EOFError) as exc:
        raise damaged(root, path, f"has no readable array header ({exc})", meta) from exc
    expected_size = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected_size:
        how = "is truncated" if size < expected_size else "has trailing bytes"
        raise damaged(root, path, f"{how} ({size} bytes, its header needs {expected_size})", meta)
    if record is not None and (list(shape) != record.get("shape") or dtype.str != record.get("dtype")):
        raise damaged(
            root,
            path,
            f"has shape {list(shape)} {dtype.str}, the manifest recorded "
            f"{record.get('shape')} {record.get('dtype')}",
            meta,
        )
    rows = {"box_offsets.npy": count + 1, "boxes.npy": None, "box_labels.npy": None}.get(path.name, count)
    if rows is not None and (not shape or shape[0] != rows):
        raise damaged(
            root, path, f"holds {shape[0] if shape else 0} rows, the split has {count} images", meta
        )


def verify_manifest(dataset: PreparedDataset) -> None:
    """Cheap integrity check on open: ids and counts per split, every file present, whole and of its shape."""
    manifest = _read_manifest(dataset)
    for name in dataset.splits:
        split = dataset.split(name)
        expected = manifest["splits"].get(name)
        if (
            not isinstance(expected, dict)
            or expected.get("count") != len(split)
            or expected.get("ids_sha256") != ids_hash(split.image_ids)
        ):
            raise damaged(
                dataset.root,
                dataset.root / name / "meta.json",
                "does not match manifest.json (image ids or count differ)",
                dataset.meta,
            )
        records = expected.get("files") or {}
        for array in _expected_arrays(dataset):
            _check_array(dataset, dataset.root / name / array, records.get(array), len(split))
        for column in split._code_labels:
            file = code_file(column)
            _check_array(dataset, dataset.root / name / file, records.get(file), len(split))
        for column, kind in split._text_kinds.items():
            for file in column_files(column, kind):
                path = dataset.root / name / file
                if not path.is_file():
                    raise damaged(dataset.root, path, "is missing", dataset.meta)
                recorded = (records.get(file) or {}).get("bytes")
                if recorded is not None and path.stat().st_size != recorded:
                    raise damaged(dataset.root, path, "changed size since it was written", dataset.meta)
        meta_record = records.get("meta.json")
        meta_path = dataset.root / name / "meta.json"
        if meta_record is not None and meta_path.stat().st_size != meta_record.get("bytes"):
            raise damaged(dataset.root, meta_path, "changed size since it was written", dataset.meta)


def verify_prepared(path: str | Path) -> list[str]:
    """Full check of a prepared cache: the cheap checks, then every file's sha256 against the manifest.

    Raises DamagedCacheError for damage that stops the cache from opening; returns one line per
    file whose contents changed (empty when the cache is intact).
    """
    dataset = open_prepared(path)
    manifest = _read_manifest(dataset)
    lines = []
    for name in dataset.splits:
        records = manifest["splits"][name].get("files")
        if not records:
            return [
                f"{dataset.root / 'manifest.json'}: this cache was written before checksums were recorded, "
                f"so its contents cannot be verified; rebuild it with `{rebuild_command(dataset.root, dataset.meta)}`"
            ]
        for file, record in sorted(records.items()):
            file_path = dataset.root / name / file
            if sha256_file(file_path) != record.get("sha256"):
                lines.append(
                    str(
                        damaged(
                            dataset.root,
                            file_path,
                            "contents changed since prepare (sha256 differs)",
                            dataset.meta,
                        )
                    )
                )
    return lines
