"""The dataset adapter contract: raw download -> validated samples -> prepared cache.

An adapter knows one dataset's raw layout. It lists samples from the annotation files (recording
every malformed row as a `Problem` with file and row), loads one sample's image and masks at raw
resolution, and says how splits are made. Everything generic (geometry, splits, caching,
atomicity, resume) lives in `prepare.py`, so an adapter stays a small parser.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cxrbench.errors import DataError

PATIENT_SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}


@dataclass(frozen=True)
class Problem:
    """One malformed input: the file, the row (1-based, header = row 1), what is wrong, what was expected."""

    file: str
    message: str
    row: int | None = None
    expected: str | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}, row {self.row}"
        return f"{where}: {self.message}" + (f" (expected {self.expected})" if self.expected else "")

    def to_error(self) -> DataError:
        return DataError(self.file, self.message, row=self.row, expected=self.expected)


@dataclass
class Problems:
    """Collects problems; in strict mode the first one raises immediately."""

    strict: bool = False
    items: list[Problem] = field(default_factory=list)

    def add(
        self, file: str | Path, message: str, row: int | None = None, expected: str | None = None
    ) -> None:
        problem = Problem(str(file), message, row, expected)
        if self.strict:
            raise problem.to_error()
        self.items.append(problem)
        warnings.warn(str(problem), stacklevel=2)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class RawSample:
    """One image as listed by the raw annotations (boxes in raw pixel xyxy)."""

    image_id: str
    patient_id: str
    path: Path
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box_rows: list[tuple[str, int]] = field(default_factory=list)
    split_hint: str | None = None
    source: tuple[str, int | None] | None = None
    annotation: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def samples_inside(samples: list[RawSample], raw_root: Path, problems: Problems) -> list[RawSample]:
    """The samples whose image path stays inside `raw_root`; each other one is a problem, row skipped.

    An annotation id such as `../../etc/x` would otherwise make cxrbench read a file outside the
    download. The test is on the path as written (symlinked folders inside the download still work).
    """
    root = os.path.normpath(os.path.abspath(raw_root))
    kept = []
    for sample in samples:
        path = os.path.normpath(os.path.abspath(sample.path))
        if os.path.commonpath([root, path]) == root:
            kept.append(sample)
            continue
        report_sample(
            problems,
            sample,
            f"image path {sample.path} leaves the raw folder {raw_root}; row skipped",
            expected="an image id naming a file inside the download",
        )
    return kept


def report_sample(problems: Problems, sample: RawSample, message: str, expected: str) -> None:
    """A problem with one sample, at the annotation row that listed it (else at its image file)."""
    file, row = sample.source or (str(sample.path), None)
    problems.add(file, message, row=row, expected=expected)


@dataclass
class LoadedSample:
    """A decoded sample at raw resolution: image float32 HxW in [0, 1], masks bool CxHxW or None."""

    image: np.ndarray
    masks: np.ndarray | None = None


@dataclass
class VerifyReport:
    dataset: str
    raw_root: Path
    n_samples: int
    missing: list[str]
    extra: list[str]
    problems: list[Problem]
    expected_layout: str
    info: dict[str, int] = field(default_factory=dict)

    deep: bool = False

    @property
    def ok(self) -> bool:
        """Nothing missing or malformed, and at least one image listed (prepare refuses an empty dataset)."""
        return not self.missing and not self.problems and self.n_samples > 0


class DatasetAdapter(ABC):
    """Base class of the six adapters. Subclasses set the class attributes and three methods."""

    name: ClassVar[str]
    classes: ClassVar[tuple[str, ...]] = ()
    has_masks: ClassVar[bool] = False
    has_boxes: ClassVar[bool] = False
    masks_from_boxes: ClassVar[bool] = False
    extra_fields: ClassVar[tuple[str, ...]] = ()
    # Extra fields stored as memory-mapped text columns (text_columns.py) rather than in meta.json.
    text_fields: ClassVar[tuple[str, ...]] = ()
    # Extra fields of {label: small int | None} dicts stored as one int8 matrix (code_columns.py).
    code_fields: ClassVar[dict[str, tuple[str, ...]]] = {}
    equalize: ClassVar[bool] = False
    split_fractions: ClassVar[dict[str, float]] = PATIENT_SPLIT
    subset_percents: ClassVar[tuple[float, ...]] = ()
    expected_counts: ClassVar[dict[str, int]] = {}
    layout: ClassVar[str] = ""
    image_format: ClassVar[str] = "raster"  # or "dicom": what `verify` expects each image file to be

    def __init__(self) -> None:
        # Counts of images excluded by design while listing (e.g. no mask), shown as info, not errors.
        self.info: dict[str, int] = {}
        # The ids of the reference split lists when prepare uses them (None otherwise): an adapter
        # whose choice of samples is itself a draw (NIH's No-Finding images) takes the listed ones.
        self.listed_ids: frozenset[str] | None = None

    @abstractmethod
    def required_files(self, raw_root: Path) -> list[Path]:
        """Annotation files (and folders) that must exist before anything can be parsed."""

    @abstractmethod
    def list_samples(self, raw_root: Path, problems: Problems) -> list[RawSample]:
        """Parse the annotation files into samples; malformed rows go to `problems`."""

    @abstractmethod
    def load(self, sample: RawSample) -> LoadedSample:
        """Decode one sample's image (and masks) at raw resolution."""

    def load_for_prepare(self, sample: RawSample) -> LoadedSample:
        """`load` as `prepare` reads it: its image may instead be a Pillow "F" image of the same
        float32 values, which prepare resizes without copying it into numpy first (RSNA's JPEGs)."""
        return self.load(sample)

    def reference_id(self, sample: RawSample) -> str:
        """The id the reference split lists use for this sample (override when it differs from image_id)."""
        return sample.image_id

    def image_files(self, raw_root: Path) -> Iterable[Path]:
        """All image files present on disk (for the 'extra files' check); override per layout."""
        return ()

    def assign_splits(self, samples: list[RawSample], seed: int) -> dict[str, np.ndarray]:
        """Default: seeded split by patient with `split_fractions`; adapters with an official split override."""
        from cxrbench.datasets.splits import split_by_patient

        return split_by_patient([s.patient_id for s in samples], self.split_fractions, seed)

    def split_requirement(self) -> str:
        """What a dataset needs so that no split is empty (for the error when one is)."""
        from cxrbench.datasets.splits import minimum_patients

        shares = "/".join(f"{round(100 * f)}" for f in self.split_fractions.values())
        return (
            f"a {shares} {'/'.join(self.split_fractions)} split by patient needs at least "
            f"{minimum_patients(self.split_fractions)} images from as many different patients"
        )

    def check_annotation(self, sample: RawSample, height: int, width: int) -> None:
        """Raise DataError when a sample's annotation files do not fit its image (override per layout)."""
        return None

    def check_sample(self, sample: RawSample, problems: Problems, deep: bool = False) -> None:
        """Record what `prepare` would skip in one present sample, with the same messages.

        Reads the image header (or, with `deep`, decodes the image and its masks as prepare does)
        and checks every box against the image size (overhanging boxes are fine: prepare clips them).
        """
        from cxrbench.datasets.geometry import check_box
        from cxrbench.datasets.image_probe import probe_image

        try:
            if deep:
                height, width = self.load(sample).image.shape
            else:
                height, width = probe_image(sample.path, self.image_format)
                self.check_annotation(sample, height, width)
        except DataError as exc:
            problems.add(exc.file, f"{exc.detail}; image skipped", row=exc.row, expected=exc.expected)
            return
        for k, box in enumerate(sample.boxes):
            reason = check_box(box, height, width)
            if reason is not None:
                file, row = sample.box_rows[k] if k < len(sample.box_rows) else (str(sample.path), None)
                problems.add(file, f"{reason}; row skipped", row=row, expected="a box overlapping the image")

    def listed_samples(self, raw_root: Path, problems: Problems) -> list[RawSample]:
        """`list_samples`, without samples whose image path leaves `raw_root` (a problem each)."""
        return samples_inside(self.list_samples(raw_root, problems), raw_root, problems)

    def check_required(self, raw_root: Path) -> list[str]:
        return [str(p) for p in self.required_files(raw_root) if not p.exists()]

    def verify(self, raw_root: str | Path, deep: bool = False) -> VerifyReport:
        """Check the raw layout: missing annotation/image files, extra images, malformed rows, and
        every present image (header, or full decode with `deep`) and box: all that prepare would skip."""
        raw_root = Path(raw_root)
        missing = self.check_required(raw_root)
        problems = Problems(strict=False)
        samples: list[RawSample] = []
        if not missing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                samples = self.listed_samples(raw_root, problems)
                listed = {s.path.resolve() for s in samples}
                missing += [str(s.path) for s in samples if not s.path.exists()]
                for sample in samples:
                    if sample.path.exists():
                        self.check_sample(sample, problems, deep)
            extra = sorted(str(p) for p in self.image_files(raw_root) if p.resolve() not in listed)
        else:
            extra = []
        info = dict(getattr(self, "info", {}))
        return VerifyReport(
            self.name, raw_root, len(samples), missing, extra, problems.items, self.layout, info, deep
        )
