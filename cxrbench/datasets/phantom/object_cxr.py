"""Object-CXR phantom: train/*.jpg, dev/*.jpg (varying, non-square sizes) + train.csv, dev.csv.

Image names are a seeded sample of the reference split lists (train and validation ids in train/,
test ids in dev/, the official dev set). About half of the images carry 1-3 bright, sharp-edged
foreign objects cycling through the three annotation types (box, ellipse, polygon). Boxes and
polygons are drawn on the canvas with the adapter's own rasteriser, ellipses as ellipses (the
annotation gives their bounding box, which is also what the mask uses), and their coordinates are
scaled to output pixels, so annotations match what is drawn.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from cxrbench.datasets.object_cxr import BOX, ELLIPSE, POLYGON, Shape, rasterise
from cxrbench.datasets.phantom.anatomy import Canvas, chest, paint_shape, random_box_in, to_uint8
from cxrbench.datasets.phantom.ids import sample_reference_ids

DEFAULT_N = 100


def random_shape(rng: np.random.Generator, canvas: Canvas, kind: int) -> Shape:
    """A foreign object in canvas coordinates: a box, an ellipse (by its bbox) or a star polygon."""
    region = canvas.lungs.any(0) | canvas.heart
    if kind in (BOX, ELLIPSE):
        x1, y1, x2, y2 = random_box_in(rng, region, 7, 26)
        return Shape(kind, np.array([[x1, y1], [x2, y2]]))
    x1, y1, x2, y2 = random_box_in(rng, region, 14, 30)
    n = int(rng.integers(5, 9))
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n
    radius = rng.uniform(0.5, 1.0, n)
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    points = np.stack([cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)], axis=1)
    return Shape(POLYGON, points)


def draw_shape(shape: Shape, height: int, width: int) -> np.ndarray:
    """The pixels an object covers on the canvas: an ellipse as an ellipse, other shapes as rasterised."""
    if shape.kind != ELLIPSE:
        return rasterise([shape], height, width)
    x1, y1, x2, y2 = (float(v) for v in shape.bbox)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def annotation_text(shape: Shape, canvas: Canvas) -> str:
    """The Object-CXR annotation of a canvas shape, in integer output pixels (x = column, y = row)."""
    scale = np.array([canvas.scale_x, canvas.scale_y])
    points = np.round(shape.points * scale).astype(int)
    return " ".join([str(shape.kind), *(f"{x} {y}" for x, y in points)])


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    """A varying, mostly non-square output size (height, width) in even pixels."""
    height = 2 * int(rng.integers(400, 640))
    width = 2 * int(rng.integers(360, 600))
    return height, width


def write(out_dir: Path, n_images: int = DEFAULT_N, seed: int = 0) -> None:
    """Write `n_images` Object-CXR-like images (reference test ids in dev/), ~50% with objects."""
    rng = np.random.default_rng(seed)
    sampled = sample_reference_ids("object_cxr", n_images, seed)
    dev = set(sampled["test"])
    rows: dict[str, list[list[str]]] = {"train": [], "dev": []}
    for folder in rows:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    kind_counter = 0
    for k, image_id in enumerate(sorted(i for ids in sampled.values() for i in ids)):
        folder = "dev" if image_id in dev else "train"
        name = f"{image_id}.jpg"
        height, width = random_size(rng)
        canvas = chest(rng, height, width)
        parts = []
        if rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 4))):
                shape = random_shape(rng, canvas, kind_counter % 3)
                kind_counter += 1
                paint_shape(canvas, draw_shape(shape, *canvas.image.shape), float(rng.uniform(0.9, 1.0)))
                parts.append(annotation_text(shape, canvas))
        pixels = to_uint8(canvas.render(rng))
        image = Image.fromarray(pixels, mode="L")
        if k % 7 == 3:  # some downloads are RGB JPEGs
            image = image.convert("RGB")
        image.save(out_dir / folder / name, quality=92)
        rows[folder].append([name, ";".join(parts)])
    for folder, folder_rows in rows.items():
        with open(out_dir / f"{folder}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_name", "annotation"])
            writer.writerows(folder_rows)
