"""SIIM-ACR Pneumothorax phantom: dicom-images-train/<study>/<series>/<ImageId>.dcm + train-rle.csv."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from cxrbench.datasets.dicom_io import write_dicom
from cxrbench.datasets.phantom.anatomy import chest, paint_pneumothorax, to_uint8, to_uint16
from cxrbench.datasets.phantom.ids import sample_reference_ids, shuffled_ids
from cxrbench.datasets.rle import rle_encode

DEFAULT_N = 80
SIZE = 1024
ODD_SHAPE = (1024, 880)  # the one 16-bit (12 bits stored), uncompressed, non-square image
UID_ROOT = "1.2.276.0.7230010.3.1"  # the root the real SIIM UIDs use


def siim_uids(image_id: str) -> tuple[str, str]:
    """(study, series) UIDs for a real ImageId, shaped like the real ones: the ImageId is
    `<root>.4.8323329.<n>.<t>.<k>`, its study and series `<root>.2.…` and `<root>.3.…` (last part k-2, k-1)."""
    prefix = f"{UID_ROOT}.4."
    if not image_id.startswith(prefix):
        return f"{UID_ROOT}.2.{image_id}", f"{UID_ROOT}.3.{image_id}"
    head, k = image_id[len(prefix) :].rsplit(".", 1)
    return f"{UID_ROOT}.2.{head}.{int(k) - 2}", f"{UID_ROOT}.3.{head}.{int(k) - 1}"


def split_in_halves(mask: np.ndarray) -> list[np.ndarray]:
    """Cut a mask at its middle row into two non-empty parts (two RLE rows that must be OR-ed)."""
    rows = np.flatnonzero(mask.any(axis=1))
    middle = (rows[0] + rows[-1]) // 2
    top = mask.copy()
    top[middle + 1 :] = False
    return [top, mask & ~top]


def write(out_dir: Path, n_images: int = DEFAULT_N, seed: int = 0) -> None:
    """Write `n_images` SIIM-like images; ~30% have a pneumothorax (dark rim of one or both lungs).

    ImageIds are a seeded sample of the reference split lists. Patients have 1-3 images each
    (consecutive in a seeded order, so, as in the reference split by image, a patient's images may
    fall into different splits; with `--splits patient` they do not). Image 0 is the 16-bit,
    non-square exception; image 1's mask is split over two RLE rows, image 2 has a bilateral
    pneumothorax (one row per lung); further images are random. Empty masks are written as "-1".
    """
    rng = np.random.default_rng(seed)
    image_dir = out_dir / "dicom-images-train"
    rows: list[tuple[str, str]] = []
    patient_id, left = "", 0
    for k, image_id in enumerate(shuffled_ids(rng, sample_reference_ids("siim", n_images, seed))):
        if left == 0:
            patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            left = int(rng.choice([1, 1, 2, 3]))
        left -= 1
        odd = k == 0
        height, width = ODD_SHAPE if odd else (SIZE, SIZE)
        canvas = chest(rng, height, width)
        positive = k < 3 or rng.random() < 0.3
        masks: list[np.ndarray] = []
        if positive:
            bilateral = k == 2 or (k > 2 and rng.random() < 0.2)
            lungs = [0, 1] if bilateral else [int(rng.integers(2))]
            masks = [canvas.mask_to_output(paint_pneumothorax(canvas, rng, lung)) for lung in lungs]
            if k == 1 or (k > 2 and not bilateral and rng.random() < 0.25):
                masks = split_in_halves(masks[0])
        pixels = canvas.render(rng)
        study, series = siim_uids(image_id)
        write_dicom(
            image_dir / study / series / f"{image_id}.dcm",
            to_uint16(pixels, 12) if odd else to_uint8(pixels),
            patient_id=patient_id,
            sop_instance_uid=image_id,
            study_uid=study,
            series_uid=series,
            view_position=str(rng.choice(["PA", "AP"])),
            jpeg_baseline=not odd,
            bits_stored=12 if odd else None,
            extra={
                "PatientSex": str(rng.choice(["M", "F"])),
                "PatientAge": f"{int(rng.integers(18, 90)):03d}Y",
            },
        )
        rows += [(image_id, rle_encode(m)) for m in masks if m.any()] or [(image_id, "-1")]
    with open(out_dir / "train-rle.csv", "w", newline="") as fh:
        fh.write("ImageId, EncodedPixels\n")  # the real header, leading space included
        fh.writelines(f"{image_id}, {rle}\n" for image_id, rle in rows)
