"""Per-image statistics in a binary sidecar beside the run record (`run-<key>.stats.npz`).

A record's per-image statistics (tens of thousands of numbers per run) made the JSON records large
and slow to read. The writer moves every list-valued entry of ``test_per_image`` into one npz file
next to the record, whatever its name or nesting (the metrics decide which statistics exist; this
module only knows JSON shapes): a list nested d levels deep is stored as its flat leaves plus one
offsets array per level, ``None`` leaves as a mask. The record keeps a small reference (file name,
sha256, a manifest of the entries, the image count and a digest of the sorted image ids), so a
reader can check the test images of runs without opening the file, and the file is verified
against its hash whenever it is read. The file is written deterministically (fixed zip timestamps),
so the same statistics give the same bytes and the same hash.

Extra arrays (the default bootstrap replicates, see `cxrbench.protocol.bootstrap`) may ride along
under their own names; they are read without decoding the statistics.
"""

from __future__ import annotations

import glob
import hashlib
import io
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, pairwise
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_path, sha256_text

FORMAT = 1
SUFFIX = ".stats.npz"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_KINDS = ("int", "float", "bool", "str")


class SidecarError(CxrbenchError):
    """A sidecar that is missing, does not match its record's hash, or cannot be decoded."""


def sidecar_name(record_path: Path, sha256: str) -> str:
    """The sidecar's file name: the record's stem plus the start of the file's own hash, so a rewrite
    never replaces the file an existing record points at (the old one is removed after the record)."""
    return f"{Path(record_path).stem}.{sha256[:16]}{SUFFIX}"


def remove_stale(record_path: Path, keep: str | None) -> None:
    """Delete the record's other sidecars (left by an earlier version of the record)."""
    record_path = Path(record_path)
    for old in record_path.parent.glob(f"{glob.escape(record_path.stem)}.*{SUFFIX}"):
        if old.name != keep:
            old.unlink(missing_ok=True)


@dataclass(frozen=True)
class ImageSet:
    """Which test images a run scored, without the ids themselves: the sha256 of the sorted ids
    (one per line), their count, and whether they are all distinct."""

    digest: str
    size: int
    unique: bool

    def __len__(self) -> int:
        return self.size


def image_set(image_ids: Sequence[Any]) -> ImageSet:
    ids = sorted(str(i) for i in image_ids)
    return ImageSet(sha256_text("\n".join(ids)), len(ids), len(set(ids)) == len(ids))


# ---------------------------------------------------------------------------------------------- encode


def _leaf_kind(leaves: list) -> tuple[str, bool] | None:
    """(kind of the non-None leaves, whether any leaf is None); None when they cannot share an array."""
    kinds = {_KIND_OF.get(t) or _kind_of_type(t) for t in {type(v) for v in leaves}}
    has_none = "none" in kinds
    kinds.discard("none")
    if None in kinds or len(kinds - {"int", "float"}) > (0 if kinds & {"int", "float"} else 1):
        return None
    if not kinds or kinds <= {"int", "float"}:
        return ("int" if kinds == {"int"} else "float"), has_none
    return kinds.pop(), has_none


_KIND_OF: dict[type, str] = {int: "int", float: "float", bool: "bool", str: "str", type(None): "none"}


def _kind_of_type(t: type) -> str | None:
    for base, kind in ((np.bool_, "bool"), (np.integer, "int"), (np.floating, "float"), (np.str_, "str")):
        if issubclass(t, base):
            return kind
    return None


def _flatten(value: list) -> tuple[list, list[np.ndarray]] | None:
    """(leaves, offsets per nesting level) of a list of lists of ...; None for mixed nesting."""
    offsets: list[np.ndarray] = []
    items = value
    while items and all(isinstance(v, list | tuple) for v in items):
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        offsets.append(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        items = list(chain.from_iterable(items))
    if any(isinstance(v, list | tuple) for v in items):
        return None
    return items, offsets


def _leaf_array(leaves: list, kind: str, has_none: bool) -> np.ndarray | None:
    if kind == "str":
        data = [b"" if v is None else str(v).encode("utf-8") for v in leaves]
        if any(d.endswith(b"\x00") for d in data):  # numpy bytes arrays drop trailing NULs
            return None
        return np.array(data, dtype=np.bytes_) if data else np.zeros(0, dtype="S1")
    fill = {"int": 0, "float": np.nan, "bool": False}[kind]
    dtype = {"int": np.int64, "float": np.float64, "bool": np.bool_}[kind]
    try:
        return np.array([fill if v is None else v for v in leaves] if has_none else leaves, dtype=dtype)
    except OverflowError:  # an int beyond 64 bits stays in the JSON record
        return None


def encode_stats(per_image: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[dict], dict]:
    """(arrays for the npz, manifest of the entries they encode, entries that stay in the JSON).

    Every list (or array) entry is encoded; anything else (a scalar, a dict, a list mixing kinds of
    leaves) stays inline."""
    arrays: dict[str, np.ndarray] = {}
    manifest: list[dict] = []
    inline: dict = {}
    for key, value in per_image.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        flat = _flatten(list(value)) if isinstance(value, list | tuple) else None
        kind = _leaf_kind(flat[0]) if flat is not None else None
        leaf = _leaf_array(flat[0], *kind) if kind is not None else None
        if leaf is None:
            inline[key] = value
            continue
        name = f"a{len(manifest)}"
        arrays[name] = leaf
        widths: list[int | None] = []
        for level, off in enumerate(flat[1]):  # type: ignore[index]
            steps = np.diff(off)
            if (
                steps.size and steps[0] > 0 and (steps == steps[0]).all()
            ):  # rectangular: a width, not an offsets array
                widths.append(int(steps[0]))
            else:
                widths.append(None)
                arrays[f"{name}_o{level}"] = off
        if kind[1]:  # type: ignore[index]
            arrays[f"{name}_none"] = np.array([v is None for v in flat[0]], dtype=bool)  # type: ignore[index]
        manifest.append(
            {
                "key": str(key),
                "array": name,
                "kind": kind[0],
                "depth": len(flat[1]),
                "none": kind[1],
                "widths": widths,
            }  # type: ignore[index]
        )
    return arrays, manifest, inline


# ---------------------------------------------------------------------------------------------- decode


def _decode(arrays: Mapping[str, np.ndarray], entry: Mapping[str, Any]) -> list:
    name, kind = entry["array"], entry["kind"]
    if kind not in _KINDS:
        raise SidecarError(f"unknown sidecar entry kind {kind!r}")
    leaf = arrays[name]
    values = [b.decode("utf-8") for b in leaf.tolist()] if kind == "str" else leaf.tolist()
    if entry.get("none"):
        for i in np.flatnonzero(arrays[f"{name}_none"]).tolist():
            values[i] = None
    widths = entry.get("widths") or [None] * int(entry["depth"])
    for level in reversed(range(int(entry["depth"]))):
        if widths[level] is None:
            off = arrays[f"{name}_o{level}"].tolist()
            values = [values[a:b] for a, b in pairwise(off)]
        else:
            w = int(widths[level])
            values = [values[a : a + w] for a in range(0, len(values), w)]  # w > 0 (encode_stats)

    return values


# ---------------------------------------------------------------------------------------------- files


def _npy_bytes(array: np.ndarray) -> bytes:
    member = io.BytesIO()
    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return member.getvalue()


def _member_ref(data: bytes, name: str) -> dict:
    """Byte offset, size and sha256 of an (uncompressed) member's .npy bytes inside the npz."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(f"{name}.npy")
    header = data[info.header_offset : info.header_offset + 30]
    start = (
        info.header_offset
        + 30
        + int.from_bytes(header[26:28], "little")
        + int.from_bytes(header[28:30], "little")
    )
    member = data[start : start + info.file_size]
    return {"offset": start, "size": info.file_size, "sha256": hashlib.sha256(member).hexdigest()}


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed npz with fixed timestamps: equal arrays give equal bytes (hence equal hashes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), _npy_bytes(arrays[name]))
    return buffer.getvalue()


def write_sidecar(
    record_path: Path, per_image: Mapping[str, Any], extra: Mapping[str, np.ndarray] | None = None
) -> tuple[dict | None, dict]:
    """Write the sidecar of the record at `record_path` atomically; return (the reference the record
    keeps, the entries that stay inline). No file (reference None) when nothing is list-valued.

    `extra` arrays are stored under their own names (listed in the reference's ``extra``)."""
    arrays, manifest, inline = encode_stats(per_image)
    if not manifest:
        return None, inline
    extra = dict(extra or {})
    clash = set(extra) & set(arrays)
    if clash:
        raise SidecarError(f"extra sidecar arrays clash with statistics: {sorted(clash)}")
    data = _npz_bytes({**arrays, **extra})
    extra_ref = {n: _member_ref(data, n) for n in sorted(extra)}
    digest = hashlib.sha256(data).hexdigest()
    path = Path(record_path).with_name(sidecar_name(record_path, digest))
    with atomic_path(path, suffix=".npz") as tmp:
        tmp.write_bytes(data)
    ids = per_image.get("image_ids")
    images = image_set(ids) if isinstance(ids, list | tuple | np.ndarray) else None
    ref = {
        "format": FORMAT,
        "file": path.name,
        "sha256": digest,
        "entries": manifest,
        "extra": extra_ref,  # name -> where its .npy member lies and its sha256: read alone, verified alone
        "n_images": None if images is None else images.size,
        "image_ids_sha256": None if images is None else images.digest,
        "image_ids_unique": None if images is None else images.unique,
    }
    return ref, inline


def read_arrays(
    path: Path, ref: Mapping[str, Any], names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The sidecar's arrays (only `names` when given), after checking the file against ``ref["sha256"]``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SidecarError(f"{path}: per-image statistics file unreadable ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise SidecarError(
            f"{path}: per-image statistics file does not match the sha256 in its record "
            "(changed or damaged; re-run the task, or `cxrbench rescore` to rewrite it from its predictions)"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {n: npz[n] for n in (npz.files if names is None else names)}
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise SidecarError(f"{path}: per-image statistics file cannot be decoded ({exc})") from exc


def read_stats(path: Path, ref: Mapping[str, Any], inline: Mapping[str, Any] | None = None) -> dict:
    """The per-image statistics in their JSON form (lists), as they were before `write_sidecar`."""
    if ref.get("format") != FORMAT:
        raise SidecarError(f"{path}: per-image statistics format {ref.get('format')!r}, expected {FORMAT}")
    arrays = read_arrays(path, ref)
    try:
        stats = {e["key"]: _decode(arrays, e) for e in ref["entries"]}
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise SidecarError(f"{path}: per-image statistics file cannot be decoded ({exc!r})") from exc
    return {**dict(inline or {}), **stats}


class SidecarStats(Mapping):
    """A record's ``test_per_image`` backed by its sidecar: read (and verified) on first access only, so
    scanning records stays cheap for readers that never need the statistics."""

    def __init__(self, path: Path, ref: Mapping[str, Any], inline: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.ref = dict(ref)
        self.inline = dict(inline or {})
        self._stats: dict | None = None

    def _load(self) -> dict:
        if self._stats is None:
            self._stats = read_stats(self.path, self.ref, self.inline)
        return self._stats

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter([*self.inline, *(e["key"] for e in self.ref.get("entries", []))])

    def __len__(self) -> int:
        return len(self.inline) + len(self.ref.get("entries", []))

    def __contains__(self, key: object) -> bool:  # without reading the file
        return key in self.inline or any(e["key"] == key for e in self.ref.get("entries", []))

    def __repr__(self) -> str:
        return f"SidecarStats({self.path.name}, keys={list(self)})"

    @property
    def image_set(self) -> ImageSet | None:
        if self.ref.get("image_ids_sha256") is None:
            return None
        return ImageSet(
            self.ref["image_ids_sha256"], int(self.ref["n_images"]), bool(self.ref["image_ids_unique"])
        )

    def extra(self, name: str) -> np.ndarray:
        """One of the extra arrays, read alone (its offset is in the reference) and checked against its own
        sha256."""
        where = (self.ref.get("extra") or {}).get(name)
        if not isinstance(where, dict):
            raise SidecarError(f"{self.path}: no array {name!r} in the per-image statistics file")
        try:  # a seek and one read: no zip directory to parse
            with open(self.path, "rb") as fh:
                fh.seek(int(where["offset"]))
                data = fh.read(int(where["size"]))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise SidecarError(f"{self.path}: per-image statistics file unreadable ({exc})") from exc
        if hashlib.sha256(data).hexdigest() != where.get("sha256"):
            raise SidecarError(
                f"{self.path}: array {name!r} does not match the sha256 in its record (changed or damaged)"
            )
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def same_stats(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two per-image statistics hold the same values (NaN equals NaN; 1 equals 1.0)."""
    if a is None or b is None:
        return a is None and b is None
    if (
        isinstance(a, SidecarStats)
        and isinstance(b, SidecarStats)
        and a.ref.get("sha256") == b.ref.get("sha256")
    ):
        return a.inline == b.inline
    arrays_a, manifest_a, inline_a = encode_stats(a)
    arrays_b, manifest_b, inline_b = encode_stats(b)
    shape = [(e["key"], e["depth"], e["none"]) for e in manifest_a]
    if inline_a != inline_b or shape != [(e["key"], e["depth"], e["none"]) for e in manifest_b]:
        return False
    for ea, eb in zip(manifest_a, manifest_b, strict=True):
        names = [n for n in arrays_a if n == ea["array"] or n.startswith(ea["array"] + "_")]
        for name in names:
            x, y = arrays_a[name], arrays_b[eb["array"] + name[len(ea["array"]) :]]
            if x.shape != y.shape:
                return False
            if x.dtype.kind == "f" or y.dtype.kind == "f":
                if not np.array_equal(x.astype(float), y.astype(float), equal_nan=True):
                    return False
            elif not np.array_equal(x, y):
                return False
    return True
