"""RSNA Pneumonia phantom: stage_2_train_images/<patientId>.dcm + stage_2_train_labels.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cxrbench.datasets.dicom_io import write_dicom
from cxrbench.datasets.phantom.anatomy import chest, paint_opacity, random_box_in, to_uint8
from cxrbench.datasets.phantom.ids import sample_reference_ids, shuffled_ids

DEFAULT_N = 120
SIZE = 1024


def write(out_dir: Path, n_images: int = DEFAULT_N, seed: int = 0) -> None:
    """Write `n_images` RSNA-like studies; ~45% have 1-3 opacities (Target 1 rows with boxes).

    Patient ids are a seeded sample of the reference split lists (at most all of them). One image
    is stored MONOCHROME1 (inverted, uncompressed) to exercise that code path; the
    rest are 8-bit MONOCHROME2 with JPEG Baseline pixel data, like the real download.
    """
    rng = np.random.default_rng(seed)
    image_dir = out_dir / "stage_2_train_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    for k, patient_id in enumerate(shuffled_ids(rng, sample_reference_ids("rsna", n_images, seed))):
        canvas = chest(rng, SIZE, SIZE)
        boxes = []
        if rng.random() < 0.45:
            for _ in range(rng.integers(1, 4)):
                lung = canvas.lungs[rng.integers(2)]
                box = random_box_in(rng, lung, 28, 64)
                paint_opacity(canvas, rng, box)
                boxes.append(canvas.to_output(box))
        pixels = to_uint8(canvas.render(rng))
        monochrome1 = k == 1
        write_dicom(
            image_dir / f"{patient_id}.dcm",
            255 - pixels if monochrome1 else pixels,
            patient_id=patient_id,
            sop_instance_uid=None,
            view_position=str(rng.choice(["PA", "AP"])),
            photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
            jpeg_baseline=not monochrome1,
            extra={
                "PatientSex": str(rng.choice(["M", "F"])),
                "PatientAge": f"{int(rng.integers(18, 90)):03d}Y",
            },
        )
        if boxes:
            for x1, y1, x2, y2 in boxes:
                rows.append([patient_id, f"{x1:.1f}", f"{y1:.1f}", f"{x2 - x1:.1f}", f"{y2 - y1:.1f}", 1])
        else:
            rows.append([patient_id, "", "", "", "", 0])
    with open(out_dir / "stage_2_train_labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        writer.writerows(rows)
