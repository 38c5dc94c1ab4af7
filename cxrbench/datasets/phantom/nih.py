"""NIH ChestX-ray8 phantom: images_0NN/images/*.png, BBox_List_2017.csv, Data_Entry_2017_v2020.csv, test_list.txt.

Each of the 8 box classes has its own painter with a pattern a model can learn (bands for
atelectasis, a big heart for cardiomegaly, a basal meniscus for effusion, speckles for infiltrate,
large/small sharp disks for mass/nodule, cloudy opacity for pneumonia, a dark lung rim for
pneumothorax); every painter returns the canvas box that encloses what it drew.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_erosion, gaussian_filter

from cxrbench.datasets.nih import CLASSES
from cxrbench.datasets.phantom.anatomy import (
    Canvas,
    chest,
    paint_opacity,
    paint_pneumothorax,
    random_box_in,
    to_uint8,
)
from cxrbench.datasets.phantom.ids import sample_reference_ids, shuffled_ids

DEFAULT_N = 100
SIZE = 1024
N_FOLDERS = 12
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
ENTRY_SPELLING = {"Infiltrate": "Infiltration"}
UNBOXED_FINDINGS = ("Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening", "Consolidation", "Edema")
UNLISTED_PATIENT = 31_000  # above every patient of the real dataset (and so of the reference lists)
Box = tuple[float, float, float, float]


def _mask_box(mask: np.ndarray) -> Box:
    """Canvas xyxy enclosing a bool mask (pixel i covers [i, i + 1))."""
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _grid(canvas: Canvas) -> tuple[np.ndarray, np.ndarray]:
    h, w = canvas.image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    return yy + 0.5, xx + 0.5


def _add(canvas: Canvas, layer: np.ndarray) -> None:
    canvas.image = np.clip(canvas.image + layer, 0, 1).astype(np.float32)


def _blend(canvas: Canvas, alpha: np.ndarray, value: np.ndarray | float) -> None:
    canvas.image = np.clip(canvas.image * (1 - alpha) + value * alpha, 0, 1).astype(np.float32)


def _inner(canvas: Canvas, lung: int, margin: int) -> np.ndarray:
    """The lung minus the heart shadow, eroded by `margin` canvas pixels: where lesions stay visible."""
    free = canvas.lungs[lung] & ~canvas.heart
    inner = binary_erosion(free, iterations=margin)
    return inner if inner.any() else free if free.any() else canvas.lungs[lung]


def paint_atelectasis(canvas: Canvas, rng: np.random.Generator, lung: int) -> Box:
    """Plate-like atelectasis: 2-3 thin, slightly tilted horizontal bright bands in the lower lung."""
    mask = _inner(canvas, lung, 8)
    ys, _ = np.nonzero(mask)
    lower = mask & (np.arange(mask.shape[0])[:, None] > np.median(ys))
    x1, y1, x2, y2 = random_box_in(rng, lower if lower.any() else mask, 30, 48)
    y2 = y1 + rng.uniform(12, 20)
    yy, xx = _grid(canvas)
    n = int(rng.integers(2, 4))
    slope = rng.uniform(-0.12, 0.12)
    cx, half = (x1 + x2) / 2, (x2 - x1) / 2
    taper = np.clip(1 - ((xx - cx) / half) ** 4, 0, 1)
    bands = np.zeros(canvas.image.shape, dtype=bool)
    for k in range(n):
        yc = y1 + (k + 0.5) * (y2 - y1) / n
        bands |= np.abs(yy - yc - slope * (xx - cx)) < rng.uniform(0.9, 1.4)
    layer = 0.45 * gaussian_filter(bands * taper, 0.6)
    _add(canvas, layer)
    return _mask_box(layer > 0.05)


def paint_cardiomegaly(canvas: Canvas, rng: np.random.Generator) -> Box:
    """Cardiomegaly: a heart half as wide again as normal, dense and smooth."""
    h, w = canvas.image.shape
    ys, xs = np.nonzero(canvas.heart)
    cy, cx = ys.mean() + 0.5 - h * 0.02, xs.mean() + 0.5
    ry, rx = h * rng.uniform(0.15, 0.18), w * rng.uniform(0.21, 0.25)
    yy, xx = _grid(canvas)
    heart = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    _blend(canvas, gaussian_filter(heart.astype(np.float32), 0.8), 0.66)
    canvas.heart = heart
    return _mask_box(heart)


def paint_effusion(canvas: Canvas, rng: np.random.Generator, lung: int) -> Box:
    """Pleural effusion: dense fluid filling the lung base, its surface a meniscus rising laterally."""
    mask = canvas.lungs[lung] & ~canvas.heart
    ys, xs = np.nonzero(mask)
    top, bottom = ys.min(), ys.max() + 1
    level = bottom - rng.uniform(0.22, 0.35) * (bottom - top)
    medial, lateral = (xs.max() + 1, xs.min()) if lung == 0 else (xs.min(), xs.max() + 1)
    yy, xx = _grid(canvas)
    rise = rng.uniform(0.08, 0.14) * (bottom - top) * ((xx - medial) / (lateral - medial)) ** 2
    fluid = mask & (yy > level - rise)
    _blend(canvas, gaussian_filter(fluid.astype(np.float32), 0.7), 0.62)
    return _mask_box(fluid)


def paint_infiltrate(canvas: Canvas, rng: np.random.Generator, lung: int) -> Box:
    """Infiltration: patchy, speckled (not smooth) opacity inside an ellipse."""
    x1, y1, x2, y2 = random_box_in(rng, _inner(canvas, lung, 6), 30, 56)
    yy, xx = _grid(canvas)
    inside = ((yy - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 + (
        (xx - (x1 + x2) / 2) / ((x2 - x1) / 2)
    ) ** 2 <= 1
    speckle = gaussian_filter((rng.random(canvas.image.shape) > 0.82).astype(np.float32), 0.7)
    _add(canvas, 0.5 * inside * speckle / speckle.max())
    return (x1, y1, x2, y2)


def _disk(canvas: Canvas, rng: np.random.Generator, lung: int, radius: float, value: float) -> Box:
    ys, xs = np.nonzero(_inner(canvas, lung, int(radius) + 2))
    k = rng.integers(len(ys))
    cy, cx = ys[k] + 0.5, xs[k] + 0.5
    yy, xx = _grid(canvas)
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    canvas.image = np.where(disk, np.maximum(canvas.image, np.float32(value)), canvas.image).astype(
        np.float32
    )
    return (cx - radius, cy - radius, cx + radius, cy + radius)


def paint_mass(canvas: Canvas, rng: np.random.Generator, lung: int) -> Box:
    """Mass: a large, bright, sharp-edged disk."""
    return _disk(canvas, rng, lung, rng.uniform(10, 15), 0.8)


def paint_nodule(canvas: Canvas, rng: np.random.Generator, lung: int) -> Box:
    """Nodule: a small, bright, sharp-edged disk."""
    return _disk(canvas, rng, lung, rng.uniform(3.5, 5.5), 0.82)


def paint_pneumonia(canvas: Canvas, rng: np.random.Generator, lung: int) -> Box:
    """Pneumonia: diffuse, cloudy airspace opacity."""
    box = random_box_in(rng, _inner(canvas, lung, 6), 32, 64)
    paint_opacity(canvas, rng, box, strength=0.35)
    return box


def paint_pneumothorax_box(canvas: Canvas, rng: np.random.Generator, lung: int) -> Box:
    """Pneumothorax: dark, texture-free lung rim; the box encloses the air region."""
    return _mask_box(paint_pneumothorax(canvas, rng, lung))


PAINTERS: dict[str, Callable[..., Box]] = {
    "Atelectasis": paint_atelectasis,
    "Effusion": paint_effusion,
    "Infiltrate": paint_infiltrate,
    "Mass": paint_mass,
    "Nodule": paint_nodule,
    "Pneumonia": paint_pneumonia,
    "Pneumothorax": paint_pneumothorax_box,
}


def paint_findings(canvas: Canvas, rng: np.random.Generator, findings: list[str]) -> list[Box]:
    """Paint each finding (cardiomegaly first, lung findings in alternating lungs); canvas boxes in order."""
    boxes: dict[int, Box] = {}
    order = sorted(range(len(findings)), key=lambda i: findings[i] != "Cardiomegaly")
    lung = int(rng.integers(2))
    for i in order:
        if findings[i] == "Cardiomegaly":
            boxes[i] = paint_cardiomegaly(canvas, rng)
        else:
            boxes[i] = PAINTERS[findings[i]](canvas, rng, lung)
            lung = 1 - lung
    return [boxes[i] for i in range(len(findings))]


def _plan_images(rng: np.random.Generator, n_images: int, seed: int) -> list[tuple[str, str, int, int]]:
    """(Image Index, role, patient id, follow-up) of every image, sorted by Image Index.

    Boxed and "No Finding" test-list images take the ids of a seeded sample of the reference lists
    (roles drawn at random); the other images (not samples) belong to patients outside the lists.
    """
    n_box = max(1, round(0.7 * n_images))
    n_normal = min(n_images - n_box, max(1, round(0.25 * n_images)))
    listed = shuffled_ids(rng, sample_reference_ids("nih", n_box + n_normal, seed))
    roles = ["normal"] * n_normal + ["box"] * (len(listed) - n_normal)
    images = []
    for image_id, role in zip(listed, roles):
        patient, follow_up = image_id.split("_")
        images.append((f"{image_id}.png", role, int(patient), int(follow_up)))
    for j in range(n_images - len(listed)):
        role = "other_findings" if j % 2 else "other_normal"
        pid, follow_up = UNLISTED_PATIENT + j // 2, j % 2
        images.append((f"{pid:08d}_{follow_up:03d}.png", role, pid, follow_up))
    return sorted(images)


def write(out_dir: Path, n_images: int = DEFAULT_N, seed: int = 0) -> None:
    """Write `n_images` NIH-like images: ~70% with 1-2 boxes (classes cycled so each appears),
    ~25% "No Finding" images of the test list, the rest unboxed images that are not samples.

    Boxed and No-Finding images are named by a seeded sample of the reference split lists. All
    images are 1024x1024 8-bit grey PNGs except the first boxed one, stored RGBA like a few real
    files. Images are spread over images_001..images_012 in Image Index order.
    """
    rng = np.random.default_rng(seed)
    images = _plan_images(rng, n_images, seed)
    box_rows, entry_rows, test_list = [], [], []
    box_count = 0
    patient_info: dict[int, tuple[int, str]] = {}
    for number, (name, role, pid, follow_up) in enumerate(images):
        folder = out_dir / f"images_{number * N_FOLDERS // len(images) + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        canvas = chest(rng, SIZE, SIZE)
        if role == "box":
            findings = [CLASSES[box_count % len(CLASSES)]]
            if rng.random() < 0.3:
                findings.append(CLASSES[(box_count + int(rng.integers(1, len(CLASSES)))) % len(CLASSES)])
            for finding, box in zip(findings, paint_findings(canvas, rng, findings)):
                x1, y1, x2, y2 = canvas.to_output(box)
                box_rows.append(
                    [name, finding, *(repr(float(v)) for v in (x1, y1, x2 - x1, y2 - y1)), "", "", ""]
                )
            labels = "|".join(sorted({ENTRY_SPELLING.get(f, f) for f in findings}))
            rgba = box_count == 0
            box_count += 1
        else:
            rgba = False
            if role == "other_findings":
                labels = "|".join(sorted(set(rng.choice(UNBOXED_FINDINGS, size=int(rng.integers(1, 3))))))
            else:
                labels = "No Finding"
        pixels = to_uint8(canvas.render(rng))
        image = Image.fromarray(pixels, mode="L")
        if rgba:
            image = image.convert("RGBA")
        # Noise-dominated pixels: run-length deflate is faster and smaller than the default strategy.
        image.save(folder / name, compress_level=1, compress_type=zlib.Z_RLE)
        if pid not in patient_info:
            patient_info[pid] = (int(rng.integers(18, 85)), str(rng.choice(["M", "F"])))
        age, sex = patient_info[pid]
        width, height = int(rng.integers(2400, 3057)), int(rng.integers(2400, 3057))
        spacing = f"{rng.choice([0.139, 0.143, 0.168]):.3f}"
        view = str(rng.choice(["PA", "AP"]))
        entry_rows.append(
            [name, labels, follow_up, pid, age + follow_up // 4, sex, view, width, height, spacing, spacing]
        )
        if role in ("normal", "other_findings"):
            test_list.append(name)
    with open(out_dir / "BBox_List_2017.csv", "w", newline="") as fh:
        fh.write(BBOX_HEADER + "\n")
        csv.writer(fh, lineterminator="\n").writerows(box_rows)
    with open(out_dir / "Data_Entry_2017_v2020.csv", "w", newline="") as fh:
        fh.write(ENTRY_HEADER + "\n")
        csv.writer(fh, lineterminator="\n").writerows(entry_rows)
    (out_dir / "test_list.txt").write_text("".join(f"{name}\n" for name in sorted(test_list)))
