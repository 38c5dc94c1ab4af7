"""RSNA Pneumonia Detection Challenge (stage 2 training set) adapter.

Citation: Shih G. et al., "Augmenting the National Institutes of Health Chest Radiograph Dataset
with Expert Annotations of Possible Pneumonia", Radiology: Artificial Intelligence 1(1), 2019.
Download: https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data (Kaggle account;
accept the competition rules). Licence: the competition's data-use terms (non-commercial research).

26,684 patients, one 1024x1024 8-bit MONOCHROME2 DICOM each (JPEG Baseline pixel data).
Split 60/20/20 by patient (16010/5337/5337), nested seeded 1% and 10% train subsets. Not
histogram-equalised (docs/protocol.md). Boxes are also rasterised to masks for the linear tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cxrbench.datasets.base import DatasetAdapter, LoadedSample, Problems, RawSample
from cxrbench.datasets.csv_rows import parse_float, read_rows, unique_rows
from cxrbench.datasets.dicom_io import read_dicom_image, read_dicom_scaled

LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"


class RSNAAdapter(DatasetAdapter):
    name = "rsna"
    classes = ("opacity",)
    has_masks = True
    masks_from_boxes = True
    has_boxes = True
    equalize = False
    subset_percents = (1, 10)
    expected_counts = {"train": 16010, "val": 5337, "test": 5337}
    image_format = "dicom"
    layout = (
        "RAW_DIR/\n"
        f"  {LABELS}            patientId,x,y,width,height,Target (one row per box; Target 0 rows empty)\n"
        f"  {IMAGES}/<patientId>.dcm   1024x1024 DICOM, one per patient"
    )

    def required_files(self, raw_root: Path) -> list[Path]:
        return [raw_root / LABELS, raw_root / IMAGES]

    def image_files(self, raw_root: Path) -> Iterable[Path]:
        return (raw_root / IMAGES).glob("*.dcm")

    def list_samples(self, raw_root: Path, problems: Problems) -> list[RawSample]:
        path = raw_root / LABELS
        samples: dict[str, RawSample] = {}
        boxes: dict[str, list[list[float]]] = {}
        columns = ["patientId", "x", "y", "width", "height", "Target"]
        for number, row in unique_rows(read_rows(path, columns), path, problems):
            pid = row["patientId"]
            if not pid:
                problems.add(path, "empty patientId; row skipped", row=number, expected="a patient id")
                continue
            if pid not in samples:
                samples[pid] = RawSample(
                    pid, pid, raw_root / IMAGES / f"{pid}.dcm", source=(str(path), number)
                )
                boxes[pid] = []
            target = row["Target"]
            if target == "0":
                if any(row[c] for c in ("x", "y", "width", "height")):
                    problems.add(
                        path,
                        "Target 0 row has box values; row skipped",
                        row=number,
                        expected="empty x,y,width,height",
                    )
                continue
            values = [parse_float(row[c]) for c in ("x", "y", "width", "height")]
            if target != "1" or any(v is None for v in values):
                problems.add(
                    path,
                    f"malformed box row (Target={target!r}, box={[row[c] for c in ('x', 'y', 'width', 'height')]}); row skipped",
                    row=number,
                    expected="Target 1 with numeric x,y,width,height, or Target 0 with an empty box",
                )
                continue
            x, y, w, h = values
            boxes[pid].append([x, y, x + w, y + h])
            samples[pid].box_rows.append((str(path), number))
        for pid, sample in samples.items():
            sample.boxes = np.asarray(boxes[pid], dtype=np.float32).reshape(-1, 4)
            sample.labels = np.zeros(len(sample.boxes), dtype=np.int64)
        return list(samples.values())

    def load(self, sample: RawSample) -> LoadedSample:
        return LoadedSample(read_dicom_image(sample.path))

    def load_for_prepare(self, sample: RawSample) -> LoadedSample:
        """JPEG Baseline pixels stay a Pillow image until resized (the same values, fewer copies)."""
        return LoadedSample(read_dicom_scaled(sample.path))
