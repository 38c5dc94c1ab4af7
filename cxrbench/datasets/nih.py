"""NIH ChestX-ray8 (ChestX-ray14) bounding-box subset adapter.

Citation: Wang X., Peng Y., Lu L., Lu Z., Bagheri M., Summers R. M., "ChestX-ray8: Hospital-scale
Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common
Thorax Diseases", CVPR 2017. Download: https://nihcc.app.box.com/v/ChestXray-NIHCC (also
https://www.kaggle.com/datasets/nih-chest-xrays/data). Licence: released by the NIH Clinical
Center without restriction on use; cite the paper and acknowledge the NIH Clinical Center.

Samples are the 880 images with at least one box in BBox_List_2017.csv (8 classes, rasterised to
8 class masks) plus 100 "No Finding" images from the official test list (per
Data_Entry_2017_v2020.csv, excluding boxed images). With the reference split lists (the default)
those are the 100 the lists name (the reference drew them unseeded); with `--splits patient` 100 of
the sorted candidates are drawn with a generator seeded by the protocol seed (all of them when
there are fewer) and split 60/20/20 by patient (Data_Entry's Patient ID). The reference lists
(588/196/196) name images by Image Index without ".png".
Images (1024x1024 PNG, mostly 8-bit grey, a few RGBA) may sit in any images_0NN/images/ folder, so
they are found by scanning `images_*/images/*.png`. Histogram-equalised (docs/protocol.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrbench.datasets.base import DatasetAdapter, LoadedSample, Problems, RawSample
from cxrbench.datasets.csv_rows import parse_float, read_rows, unique_rows
from cxrbench.datasets.imaging import read_raster
from cxrbench.datasets.splits import DEFAULT_SEED

BBOX = "BBox_List_2017.csv"
DATA_ENTRY = "Data_Entry_2017_v2020.csv"
TEST_LIST = "test_list.txt"
IMAGE_GLOB = "images_*/images/*.png"
BBOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltrate",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
# Data_Entry spells the class "Infiltration"; accept that spelling in the box file too.
CLASS_INDEX = {**{name: k for k, name in enumerate(CLASSES)}, "Infiltration": CLASSES.index("Infiltrate")}
NO_FINDING = "No Finding"
N_NO_FINDING = 100
NO_FINDING_SEED = DEFAULT_SEED


@dataclass(frozen=True)
class Entry:
    """One Data_Entry row: the image's patient, its finding labels and where it was listed."""

    patient_id: str
    labels: str
    row: int


def select_no_finding(
    image_ids: Iterable[str], k: int = N_NO_FINDING, seed: int = NO_FINDING_SEED
) -> list[str]:
    """A seeded choice of `k` ids (all when fewer), independent of the input order; returned sorted."""
    ids = sorted(set(image_ids))
    if len(ids) <= k:
        return ids
    pick = np.random.default_rng(seed).choice(len(ids), size=k, replace=False)
    return sorted(ids[i] for i in pick)


def reference_key(image_index: str) -> str:
    """The reference split lists name an image by its Image Index without ".png"."""
    return image_index.removesuffix(".png")


def index_images(raw_root: Path, problems: Problems | None = None) -> dict[str, Path]:
    """Image Index -> path over all images_*/images/ folders (the first folder wins on duplicates)."""
    found: dict[str, Path] = {}
    for path in sorted(raw_root.glob(IMAGE_GLOB)):
        if path.name in found:
            if problems is not None:
                problems.add(
                    path,
                    f"duplicate of {found[path.name]}; the first copy is used",
                    expected="each Image Index in one images_*/images/ folder",
                )
            continue
        found[path.name] = path
    return found


def _valid_index(name: str) -> bool:
    return name.endswith(".png") and "/" not in name and len(name) > 4


def read_data_entry(path: Path, problems: Problems) -> dict[str, Entry]:
    """Data_Entry rows by Image Index; rows without an image, patient or labels are skipped."""
    entries: dict[str, Entry] = {}
    for number, row in read_rows(path, ENTRY_COLUMNS):
        name, patient, labels = row["Image Index"], row["Patient ID"], row["Finding Labels"]
        if not _valid_index(name) or not patient.isdigit() or not labels:
            problems.add(
                path,
                f"malformed row (Image Index={name!r}, Patient ID={patient!r}, Finding Labels={labels!r}); row skipped",
                row=number,
                expected="an Image Index like 00000001_000.png, an integer Patient ID and Finding Labels",
            )
            continue
        if name in entries:
            problems.add(
                path,
                f"duplicate Image Index {name} (first listed in row {entries[name].row}); row skipped",
                row=number,
                expected="one row per image",
            )
            continue
        entries[name] = Entry(str(int(patient)), labels, number)
    return entries


def read_test_list(path: Path, problems: Problems) -> list[tuple[int, str]]:
    """(line number, Image Index) for each non-blank line of test_list.txt."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, f"cannot read: {exc}", expected="a text file with one Image Index per line")
        return []
    out = []
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if not _valid_index(name):
            problems.add(
                path,
                f"malformed line {name!r}; row skipped",
                row=number,
                expected="an Image Index like 00000003_001.png",
            )
            continue
        out.append((number, name))
    return out


class NIHAdapter(DatasetAdapter):
    name = "nih"
    classes = CLASSES
    has_masks = True
    masks_from_boxes = True
    has_boxes = True
    equalize = True
    expected_counts = {"train": 588, "val": 196, "test": 196}
    layout = (
        "RAW_DIR/\n"
        f"  {BBOX}                 Image Index, Finding Label, Bbox x, y, w, h (one row per box, pixels)\n"
        f"  {DATA_ENTRY}        Image Index,Finding Labels,Follow-up #,Patient ID,... (one row per image)\n"
        f"  {TEST_LIST}                    one Image Index per line (official test list)\n"
        "  images_001/images/<Image Index>.png ... images_012/images/<Image Index>.png   1024x1024 PNG"
    )

    def required_files(self, raw_root: Path) -> list[Path]:
        return [raw_root / BBOX, raw_root / DATA_ENTRY, raw_root / TEST_LIST]

    def image_files(self, raw_root: Path) -> Iterable[Path]:
        """Files in images_*/images/ that Data_Entry does not list.

        Only ~1% of the download are samples, so "extra" means unknown to the dataset, not unused.
        """
        problems = Problems(strict=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            listed = read_data_entry(raw_root / DATA_ENTRY, problems)
        return (p for p in sorted(raw_root.glob("images_*/images/*")) if p.name not in listed)

    def list_samples(self, raw_root: Path, problems: Problems) -> list[RawSample]:
        entries = read_data_entry(raw_root / DATA_ENTRY, problems)
        located = index_images(raw_root, problems)
        bbox_path = raw_root / BBOX
        samples: dict[str, RawSample] = {}
        boxes: dict[str, list[list[float]]] = {}
        labels: dict[str, list[int]] = {}
        boxed: set[str] = set()
        for number, row in unique_rows(read_rows(bbox_path, BBOX_COLUMNS), bbox_path, problems):
            name, finding = row["Image Index"], row["Finding Label"]
            values = [parse_float(row[c]) for c in BBOX_COLUMNS[2:]]
            if _valid_index(name):
                boxed.add(name)
            if not _valid_index(name) or finding not in CLASS_INDEX:
                problems.add(
                    bbox_path,
                    f"malformed row (Image Index={name!r}, Finding Label={finding!r}); row skipped",
                    row=number,
                    expected=f"an Image Index and one of {', '.join(CLASSES)}",
                )
                continue
            if any(v is None or not math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
                problems.add(
                    bbox_path,
                    f"malformed box {[row[c] for c in BBOX_COLUMNS[2:]]}; row skipped",
                    row=number,
                    expected="numeric x, y and positive w, h",
                )
                continue
            if name not in entries:
                problems.add(
                    bbox_path,
                    f"{name} is not listed in {DATA_ENTRY}, so its patient is unknown; row skipped",
                    row=number,
                    expected=f"every boxed image listed in {DATA_ENTRY}",
                )
                continue
            if name not in samples:
                samples[name] = self._sample(raw_root, name, entries[name], located, (str(bbox_path), number))
                boxes[name], labels[name] = [], []
            x, y, w, h = values
            boxes[name].append([x, y, x + w, y + h])
            labels[name].append(CLASS_INDEX[finding])
            samples[name].box_rows.append((str(bbox_path), number))
        for name, sample in samples.items():
            sample.boxes = np.asarray(boxes[name], dtype=np.float32).reshape(-1, 4)
            sample.labels = np.asarray(labels[name], dtype=np.int64)
        test_path = raw_root / TEST_LIST
        candidates, line_of = [], {}
        for number, name in read_test_list(test_path, problems):
            entry = entries.get(name)
            if entry is None:
                problems.add(
                    test_path,
                    f"{name} is not listed in {DATA_ENTRY}; row skipped",
                    row=number,
                    expected=f"test-list images listed in {DATA_ENTRY}",
                )
                continue
            if entry.labels == NO_FINDING and name not in boxed:
                candidates.append(name)
                line_of[name] = number
        if self.listed_ids is None:
            chosen = select_no_finding(candidates)
        else:  # the reference split lists name the No-Finding images they drew
            chosen = sorted(name for name in set(candidates) if reference_key(name) in self.listed_ids)
        normal = [
            self._sample(raw_root, name, entries[name], located, (str(test_path), line_of[name]))
            for name in chosen
        ]
        return [samples[name] for name in sorted(samples)] + normal

    @staticmethod
    def _sample(
        raw_root: Path, name: str, entry: Entry, located: dict[str, Path], source: tuple[str, int]
    ) -> RawSample:
        # An image found in no folder gets a glob-like path: it never exists, and says where we looked.
        path = located.get(name, raw_root / "images_*" / "images" / name)
        return RawSample(name, entry.patient_id, path, source=source)

    def reference_id(self, sample: RawSample) -> str:
        return reference_key(sample.image_id)

    def load(self, sample: RawSample) -> LoadedSample:
        return LoadedSample(read_raster(sample.path))
