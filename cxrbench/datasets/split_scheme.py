"""Which prepared image goes to which split: the reference split lists (default) or seeded by patient.

- ``reference``: the train/validation/test id lists the published numbers were computed on
  (`reference_splits/`). Every listed id must be in the download (an error names the first few
  missing ids and their count); downloaded images in no list are left out and counted. Train
  subsets (1%, 10%) are nested, seeded prefixes of one permutation of the reference train list.
- ``patient``: the adapter's seeded split by patient (`splits.split_by_patient`) with nested seeded
  subsets of the train split, as before the reference lists were shipped.
- ``official``: MIMIC-CXR's own split (it has no reference lists; ``reference`` means this there).

A phantom download (`cxrbench phantom` writes `PHANTOM_MARKER` into it) holds synthetic pixels
for a seeded sample of the reference ids, so its lists are restricted to the ids it holds and the
split is recorded as a subset: such a cache is never "comparable with published". Without the
marker a missing id stays an error.

`SplitIdentity` is what the protocol hash and each run record carry of the split: the scheme, the
hash over all shipped reference lists, whether only part of them was prepared, and the seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.datasets.base import DatasetAdapter, RawSample
from cxrbench.datasets.reference_splits import (
    REFERENCE_DATASETS,
    all_reference_lists_sha256,
    reference_lists_sha256,
    reference_split_ids,
)
from cxrbench.datasets.splits import DEFAULT_SEED, minimum_patients, nested_subsets
from cxrbench.errors import CxrbenchError

REFERENCE, PATIENT, OFFICIAL = "reference", "patient", "official"
UNRECORDED = "unrecorded"  # a cache or record written before the split was recorded
SCHEMES = (REFERENCE, PATIENT)  # what `cxrbench prepare --splits` accepts
PHANTOM_MARKER = "cxrbench-phantom.json"  # written by `cxrbench phantom` into each phantom download
MISSING_SHOWN = 5


@dataclass(frozen=True)
class SplitIdentity:
    """What a run's protocol hash and record carry of its data split (the same for all five datasets
    of one scheme, so one table of many tasks holds one protocol hash)."""

    scheme: str
    lists_sha256: str | None = None  # reference: hash over all shipped reference lists
    subset: bool = False  # reference: only part of the listed ids prepared (a phantom, or images skipped)
    seed: int = DEFAULT_SEED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any] | None) -> SplitIdentity:
        """From a record's or cache's entry; None (written before splits were recorded) is "unrecorded"."""
        if not isinstance(value, Mapping):
            return cls(UNRECORDED)
        return cls(
            str(value.get("scheme", UNRECORDED)),
            value.get("lists_sha256"),
            bool(value.get("subset", False)),
            int(value.get("seed", DEFAULT_SEED)),
        )

    @property
    def full_reference(self) -> bool:
        """All shipped reference lists, complete: the test images the published numbers were computed on."""
        return (
            self.scheme == REFERENCE and not self.subset and self.lists_sha256 == all_reference_lists_sha256()
        )

    def describe(self) -> str:
        if self.scheme == REFERENCE:
            return "reference splits" + (" (a subset: phantom or incomplete data)" if self.subset else "")
        if self.scheme == PATIENT:
            return f"seeded by-patient splits (seed {self.seed})"
        if self.scheme == UNRECORDED:
            return "splits not recorded (prepared or run by an older cxrbench)"
        return f"{self.scheme} splits"


def full_reference_identity() -> SplitIdentity:
    """The split of the published protocol: every reference list, complete."""
    return SplitIdentity(REFERENCE, all_reference_lists_sha256(), False, DEFAULT_SEED)


def resolve_scheme(adapter: DatasetAdapter, splits: str) -> str:
    """The scheme `prepare --splits` means for this dataset (MIMIC-CXR: its official split)."""
    if splits not in SCHEMES:
        raise CxrbenchError(f"--splits {splits!r} is not known; choose {' or '.join(SCHEMES)}")
    if adapter.name in REFERENCE_DATASETS:
        return splits
    if splits == PATIENT:
        raise CxrbenchError(
            f"{adapter.name} has only its official split; leave out --splits (or use --splits reference)"
        )
    return OFFICIAL


def split_config(adapter: DatasetAdapter, scheme: str) -> dict:
    """What decides the split, as recorded in the cache's settings (a change forces a rebuild)."""
    method = type(adapter).assign_splits
    config: dict[str, Any] = {
        "scheme": scheme,
        "subset_percents": [float(p) for p in adapter.subset_percents],
    }
    if scheme == REFERENCE:
        config["lists_sha256"] = reference_lists_sha256(adapter.name)
    else:
        config["method"] = f"{method.__module__}.{method.__qualname__}"
        config["fractions"] = dict(adapter.split_fractions)
    return config


@dataclass
class Assignment:
    """Sample indices per split (in list order for the reference scheme) and what to report."""

    scheme: str
    splits: dict[str, np.ndarray]
    phantom: bool = False
    missing: int = 0  # listed ids absent from a phantom download
    info: dict[str, int] = field(default_factory=dict)


def assign_splits(
    adapter: DatasetAdapter, samples: Sequence[RawSample], scheme: str, seed: int, raw_root: Path
) -> Assignment:
    """Split `samples` by `scheme` (see the module docstring); CxrbenchError for missing listed ids."""
    if scheme != REFERENCE:
        return Assignment(scheme, adapter.assign_splits(list(samples), seed))
    lists = reference_split_ids(adapter.name)
    phantom = (raw_root / PHANTOM_MARKER).is_file()
    position = {adapter.reference_id(s): i for i, s in enumerate(samples)}
    missing = [image_id for ids in lists.values() for image_id in ids if image_id not in position]
    if missing and not phantom:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
        raise CxrbenchError(
            f"{adapter.name}: {len(missing)} of the {sum(map(len, lists.values()))} ids of the reference "
            f"split lists are not usable images under {raw_root} (first: {shown}); complete the download "
            "(problems reported above skip images too), or prepare with `--splits patient` to split "
            "what is there by patient"
        )
    listed = {image_id for ids in lists.values() for image_id in ids}
    unlisted = sum(1 for image_id in position if image_id not in listed)
    splits = {
        name: np.array([position[i] for i in ids if i in position], dtype=np.int64)
        for name, ids in lists.items()
    }
    info = {"not_in_reference_lists": unlisted} if unlisted else {}
    return Assignment(REFERENCE, splits, phantom, len(missing), info)


def listed_ids(adapter: DatasetAdapter, scheme: str) -> frozenset[str] | None:
    """The reference ids (for adapters whose sample choice itself depends on them, e.g. NIH's normals)."""
    if scheme != REFERENCE:
        return None
    return frozenset(i for ids in reference_split_ids(adapter.name).values() for i in ids)


def train_subsets(
    adapter: DatasetAdapter, scheme: str, train_ids: Sequence[str], seed: int
) -> dict[str, np.ndarray]:
    """Nested train subsets (key "1", "10", ...) as sorted positions in the prepared train split.

    Reference scheme: one seeded permutation of the whole reference train list; a subset is its
    first round(p% of the prepared train images) ids that were prepared (so on the full data the
    1% subset of RSNA is the first 160 ids of that permutation, 10% the first 1601). Other schemes:
    prefixes of a seeded permutation of the prepared train split (`splits.nested_subsets`).
    """
    if not adapter.subset_percents:
        return {}
    if scheme != REFERENCE:
        return nested_subsets(len(train_ids), adapter.subset_percents, seed)
    reference_train = reference_split_ids(adapter.name)["train"]
    order = np.random.default_rng(seed + 1).permutation(len(reference_train))
    position = {image_id: k for k, image_id in enumerate(train_ids)}
    ranked = [position[reference_train[i]] for i in order if reference_train[i] in position]
    out = {}
    for pct in sorted(adapter.subset_percents):
        k = min(len(ranked), max(2, round(pct / 100.0 * len(ranked))))
        out[f"{pct:g}"] = np.sort(np.asarray(ranked[:k], dtype=np.int64))
    return out


def patients_in_several_splits(patients_per_split: Mapping[str, Sequence[str]]) -> int:
    """How many patients have images in more than one split (the siim reference split is by image)."""
    seen: dict[str, set[str]] = {}
    for split, patients in patients_per_split.items():
        for patient in patients:
            seen.setdefault(patient, set()).add(split)
    return sum(1 for splits in seen.values() if len(splits) > 1)


def empty_split_requirement(adapter: DatasetAdapter, scheme: str) -> str:
    """What a dataset needs so that no split is empty, for the error when one is."""
    if scheme == REFERENCE:
        return (
            "the reference split lists place none of the downloaded images there; a download needs "
            "images of every list (prepare with `--splits patient` to split what is there by patient, "
            f"which needs at least {minimum_patients(adapter.split_fractions)} images from as many patients)"
        )
    return adapter.split_requirement()
