"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019, stage 1 training set) adapter.

Citation: Zawacki A. et al., "SIIM-ACR Pneumothorax Segmentation", Kaggle, 2019;
images from the NIH ChestX-ray14 collection (Wang X. et al., CVPR 2017).
Download: https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation/data (Kaggle account,
accept the competition rules; the stage 1 files `dicom-images-train/` and `train-rle.csv` are
also mirrored at https://www.kaggle.com/datasets/jesperdramsch/siim-acr-pneumothorax-segmentation-data).
Licence: the competition's data-use terms (non-commercial research, attribution to SIIM/ACR/NIH).

Layout: `dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm` (1024x1024
8-bit MONOCHROME2, JPEG Baseline; file name = SOPInstanceUID = ImageId) and `train-rle.csv`
("ImageId, EncodedPixels": note the space in the real header). Masks are SIIM's relative-offset,
column-major RLE (`rle.py`), "-1" = no pneumothorax, several rows of one image are OR-ed, and
are decoded at the image's raw Rows x Columns. Histogram-equalised at preparation (docs/protocol.md).

Split 60/20/20 *by patient* (PatientID from the DICOM header, read without pixels), not by image
as in the reference (7229/2409/2409), so `expected_counts` is left empty: by-patient counts
depend on how many images each patient has. A row whose RLE is malformed or runs past the image
makes its whole image unusable (a partial mask would be a wrong label): the image is skipped
with a problem naming train-rle.csv and the row, or `--strict` stops there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrbench.datasets.base import DatasetAdapter, LoadedSample, Problems, RawSample
from cxrbench.datasets.csv_rows import read_rows, unique_rows
from cxrbench.datasets.dicom_io import read_dicom_header, read_dicom_image
from cxrbench.datasets.rle import RLEError, rle_decode
from cxrbench.errors import DataError

LABELS = "train-rle.csv"
IMAGES = "dicom-images-train"
EMPTY = "-1"
RLE_EXPECTED = '"-1" or space-separated integer pairs "gap length" inside the image'


@dataclass(frozen=True)
class RLEAnnotation:
    """The RLE rows of one image (row number, string; "-1" rows dropped) and its raw size."""

    csv: str
    rows: tuple[tuple[int, str], ...]
    height: int
    width: int


def decode_masks(annotation: RLEAnnotation) -> np.ndarray:
    """OR of all RLE rows of one image: bool 1 x H x W at the image's raw size."""
    mask = np.zeros((annotation.height, annotation.width), dtype=bool)
    for row, rle in annotation.rows:
        try:
            mask |= rle_decode(rle, annotation.height, annotation.width)
        except RLEError as exc:
            raise DataError(annotation.csv, str(exc), row=row, expected=RLE_EXPECTED) from exc
    return mask[None]


class SIIMAdapter(DatasetAdapter):
    name = "siim"
    classes = ("pneumothorax",)
    has_masks = True
    has_boxes = False
    masks_from_boxes = False
    equalize = True
    expected_counts: dict[str, int] = {}  # the reference's 7229/2409/2409 split by image, not patient
    image_format = "dicom"
    layout = (
        "RAW_DIR/\n"
        f"  {LABELS}    ImageId, EncodedPixels (SIIM relative column-major RLE; -1 = empty;\n"
        "                   several rows per image are OR-ed)\n"
        f"  {IMAGES}/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm   DICOM with PatientID"
    )

    def required_files(self, raw_root: Path) -> list[Path]:
        return [raw_root / LABELS, raw_root / IMAGES]

    def image_files(self, raw_root: Path) -> Iterable[Path]:
        """DICOMs whose ImageId train-rle.csv never names: the truly extra files.

        Images named in the CSV but skipped for a bad row or header are reported as problems
        instead, so they are not listed a second time as "extra".
        """
        named = {row["ImageId"] for _, row in read_rows(raw_root / LABELS, ["ImageId"])}
        return (p for p in _dicoms(raw_root) if p.stem not in named)

    def list_samples(self, raw_root: Path, problems: Problems) -> list[RawSample]:
        csv_path = raw_root / LABELS
        rows: dict[str, list[tuple[int, str]]] = {}
        bad: set[str] = set()
        for number, row in unique_rows(read_rows(csv_path, ["ImageId", "EncodedPixels"]), csv_path, problems):
            image_id, rle = row["ImageId"], row["EncodedPixels"]
            if not image_id:
                problems.add(csv_path, "empty ImageId; row skipped", row=number, expected="an ImageId")
                continue
            rows.setdefault(image_id, [])
            if not rle:
                problems.add(
                    csv_path,
                    f"empty EncodedPixels for {image_id}; row and image skipped",
                    row=number,
                    expected=RLE_EXPECTED,
                )
                bad.add(image_id)
                continue
            rows[image_id].append((number, rle))

        on_disk: dict[str, list[Path]] = {}
        for path in _dicoms(raw_root):
            on_disk.setdefault(path.stem, []).append(path)

        samples = []
        for image_id, image_rows in rows.items():
            if image_id in bad:
                continue
            first_row = image_rows[0][0] if image_rows else None
            paths = on_disk.get(image_id, [])
            if not paths:
                # Listed but absent: the generic missing-image check reports it (verify: "missing";
                # prepare: a problem naming train-rle.csv and this row).
                placeholder = raw_root / IMAGES / "*" / "*" / f"{image_id}.dcm"
                samples.append(RawSample(image_id, image_id, placeholder, source=(str(csv_path), first_row)))
                continue
            if len(paths) > 1:
                problems.add(
                    paths[1],
                    f"ImageId {image_id} has {len(paths)} files ({', '.join(map(str, paths))}); image skipped",
                    expected="one DICOM per ImageId",
                )
                continue
            sample = self._sample(image_id, paths[0], image_rows, csv_path, problems)
            if sample is not None:
                samples.append(sample)
        return samples

    def _sample(
        self,
        image_id: str,
        path: Path,
        image_rows: list[tuple[int, str]],
        csv_path: Path,
        problems: Problems,
    ) -> RawSample | None:
        """Read the header (PatientID, size) and validate every RLE row against that size."""
        try:
            header = read_dicom_header(path)
        except DataError as exc:
            problems.add(exc.file, f"{exc.detail}; image skipped", expected=exc.expected)
            return None
        patient_id = str(header.get("PatientID", "") or "").strip()
        height, width = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        if not patient_id or height <= 0 or width <= 0:
            problems.add(
                path,
                f"DICOM header lacks PatientID/Rows/Columns (PatientID={patient_id!r}, "
                f"Rows={height}, Columns={width}); image skipped",
                expected="a PatientID and positive Rows and Columns",
            )
            return None
        ok = True
        for number, rle in image_rows:
            if rle == EMPTY:
                continue
            try:
                rle_decode(rle, height, width)
            except RLEError as exc:
                problems.add(
                    csv_path, f"{exc} (ImageId {image_id}); image skipped", row=number, expected=RLE_EXPECTED
                )
                ok = False
        if not ok:
            return None
        annotation = RLEAnnotation(
            str(csv_path), tuple((n, r) for n, r in image_rows if r != EMPTY), height, width
        )
        return RawSample(
            image_id, patient_id, path, source=(str(csv_path), image_rows[0][0]), annotation=annotation
        )

    def load(self, sample: RawSample) -> LoadedSample:
        image = read_dicom_image(sample.path)
        annotation: RLEAnnotation = sample.annotation
        if image.shape != (annotation.height, annotation.width):
            raise DataError(
                sample.path,
                f"pixel data is {image.shape[0]}x{image.shape[1]} but the header says "
                f"{annotation.height}x{annotation.width}",
                expected="Rows x Columns pixels",
            )
        return LoadedSample(image, decode_masks(annotation))


def _dicoms(raw_root: Path) -> list[Path]:
    return sorted((raw_root / IMAGES).rglob("*.dcm"))
