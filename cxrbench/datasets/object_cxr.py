"""Object-CXR (foreign objects on chest X-rays, JF Healthcare / MIDL 2020 challenge) adapter.

Citation: JF Healthcare, "object-CXR: Automatic detection of foreign objects on chest X-rays",
MIDL 2020 challenge. Download: https://jfhealthcare.github.io/object-CXR/ (links to the image
archives and train.csv/dev.csv; code at https://github.com/jfhealthcare/object-CXR). Licence:
CC BY-NC 4.0 (non-commercial research; see the challenge page).

Raw layout: train/*.jpg (8000), dev/*.jpg (1000) of varying size, and train.csv/dev.csv with
columns image_name,annotation. An annotation lists objects separated by ';', each "type coords"
with x = column and y = row in raw pixels: "0 x1 y1 x2 y2" (box), "1 x1 y1 x2 y2" (ellipse given
by its bounding box), "2 x1 y1 x2 y2 x3 y3 ..." (polygon); an empty annotation means no object.

Geometry (the reference swapped box width/height and rasterised polygons transposed): detection
boxes are each object's bounding box in xyxy, clipped to the image; the mask ("foreign_object")
fills boxes and ellipses as their bounding box (the protocol's rule) and polygons as polygons, at
raw resolution with the same pixel convention as the boxes (pixel (row r, col c) covers
[c, c+1) x [r, r+1) and is inside when its centre is).
Split: test = official dev; train/val = seeded 80/20 of train (each image is its own patient).
Histogram-equalised at preparation (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrbench.datasets.base import DatasetAdapter, LoadedSample, Problems, RawSample
from cxrbench.datasets.csv_rows import parse_float, read_rows, unique_rows
from cxrbench.datasets.geometry import check_box
from cxrbench.datasets.imaging import read_raster

FOLDERS = {"train": "train", "test": "dev"}  # split hint -> raw folder (the official dev set is our test)
CSV_OF = {"train": "train.csv", "test": "dev.csv"}
BOX, ELLIPSE, POLYGON = 0, 1, 2
EXPECTED_OBJECT = (
    "objects separated by ';', each '0 x1 y1 x2 y2' (box), '1 x1 y1 x2 y2' (ellipse bounding box) or "
    "'2 x1 y1 x2 y2 x3 y3 ...' (polygon, >= 3 points), numeric coordinates"
)


@dataclass(frozen=True)
class Shape:
    """One annotated object in raw pixels: kind 0/1/2 and its points (N x 2, columns x, y)."""

    kind: int
    points: np.ndarray

    @property
    def bbox(self) -> np.ndarray:
        """xyxy bounding box (corners of a box/ellipse may be given in either order)."""
        lo, hi = self.points.min(axis=0), self.points.max(axis=0)
        return np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float32)


def parse_annotation(text: str) -> list[Shape]:
    """Parse one annotation cell; raises ValueError with the reason for malformed text."""
    shapes = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        tokens = part.split()
        if tokens[0] not in ("0", "1", "2"):
            raise ValueError(f"unknown object type {tokens[0]!r} in {part!r}")
        kind = int(tokens[0])
        values = [parse_float(t) for t in tokens[1:]]
        if any(v is None or not np.isfinite(v) for v in values):
            raise ValueError(f"non-numeric coordinate in {part!r}")
        if kind in (BOX, ELLIPSE) and len(values) != 4:
            raise ValueError(f"type {kind} needs 4 coordinates, got {len(values)} in {part!r}")
        if kind == POLYGON and (len(values) % 2 or len(values) < 6):
            raise ValueError(f"polygon needs an even number (>= 6) of coordinates, got {len(values)}")
        shapes.append(Shape(kind, np.asarray(values, dtype=np.float64).reshape(-1, 2)))
    return shapes


def rasterise(shapes: Iterable[Shape], height: int, width: int) -> np.ndarray:
    """Fill the shapes into a bool HxW mask (pixel inside when its centre is inside the shape).

    Boxes and ellipses fill their bounding box (as the protocol and the reference use ellipses),
    polygons their outline; parts beyond the image are clipped."""
    mask = np.zeros((height, width), dtype=bool)
    polygons = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(polygons)
    drew_polygon = False
    for shape in shapes:
        x1, y1, x2, y2 = (float(v) for v in shape.bbox)
        c1, c2 = int(np.clip(np.ceil(x1 - 0.5), 0, width)), int(np.clip(np.ceil(x2 - 0.5), 0, width))
        r1, r2 = int(np.clip(np.ceil(y1 - 0.5), 0, height)), int(np.clip(np.ceil(y2 - 0.5), 0, height))
        if c2 <= c1 or r2 <= r1:
            continue
        if shape.kind in (BOX, ELLIPSE):  # an ellipse counts as its bounding box (the protocol's rule)
            mask[r1:r2, c1:c2] = True
        else:
            # PIL puts integer coordinates at pixel centres, i.e. continuous coordinate c -> c - 0.5.
            draw.polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in shape.points], fill=1, outline=1)
            drew_polygon = True
    if drew_polygon:
        mask |= np.asarray(polygons, dtype=bool)
    return mask


class ObjectCXRAdapter(DatasetAdapter):
    name = "object_cxr"
    classes = ("foreign_object",)
    has_masks = True
    has_boxes = True
    masks_from_boxes = False
    equalize = True
    split_fractions = {"train": 0.8, "val": 0.2}  # of the official train images; test = official dev
    expected_counts = {"train": 6400, "val": 1600, "test": 1000}
    layout = (
        "RAW_DIR/\n"
        "  train.csv, dev.csv   image_name,annotation (objects ';'-separated: '0 x1 y1 x2 y2' box,\n"
        "                       '1 x1 y1 x2 y2' ellipse bbox, '2 x1 y1 x2 y2 x3 y3 ...' polygon; empty = none)\n"
        "  train/<image_name>   JPEG images listed in train.csv (8000)\n"
        "  dev/<image_name>     JPEG images listed in dev.csv (1000; used as the test split)"
    )

    def required_files(self, raw_root: Path) -> list[Path]:
        return [raw_root / f for f in CSV_OF.values()] + [raw_root / f for f in FOLDERS.values()]

    def image_files(self, raw_root: Path) -> Iterable[Path]:
        for folder in FOLDERS.values():
            yield from sorted(
                p for p in (raw_root / folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg")
            )

    def list_samples(self, raw_root: Path, problems: Problems) -> list[RawSample]:
        samples: list[RawSample] = []
        seen: dict[str, tuple[str, int]] = {}
        for hint, csv_name in CSV_OF.items():
            path = raw_root / csv_name
            for number, row in unique_rows(read_rows(path, ["image_name", "annotation"]), path, problems):
                name = row["image_name"]
                if not name or Path(name).name != name:
                    problems.add(
                        path, f"bad image_name {name!r}; row skipped", row=number, expected="a file name"
                    )
                    continue
                image_id = Path(name).stem
                if image_id in seen:
                    first = seen[image_id]
                    problems.add(
                        path,
                        f"image {name!r} already listed in {first[0]}, row {first[1]}; row skipped",
                        row=number,
                        expected="each image listed once",
                    )
                    continue
                try:
                    shapes = parse_annotation(row["annotation"])
                except ValueError as exc:
                    problems.add(
                        path,
                        f"malformed annotation: {exc}; row skipped",
                        row=number,
                        expected=EXPECTED_OBJECT,
                    )
                    continue
                seen[image_id] = (str(path), number)
                samples.append(
                    RawSample(
                        image_id=image_id,
                        patient_id=image_id,
                        path=raw_root / FOLDERS[hint] / name,
                        boxes=np.stack([s.bbox for s in shapes]) if shapes else np.zeros((0, 4), np.float32),
                        labels=np.zeros(len(shapes), dtype=np.int64),
                        box_rows=[(str(path), number)] * len(shapes),
                        split_hint=hint,
                        source=(str(path), number),
                        annotation=shapes,
                    )
                )
        return samples

    def load(self, sample: RawSample) -> LoadedSample:
        image = read_raster(sample.path)
        height, width = image.shape
        # Shapes whose box prepare rejects (degenerate, or entirely outside) are left out of the mask
        # too; shapes overhanging the image are clipped there, as their boxes are.
        shapes = [s for s in sample.annotation if check_box(s.bbox, height, width) is None]
        return LoadedSample(image, rasterise(shapes, height, width)[None])

    def split_requirement(self) -> str:
        from cxrbench.datasets.splits import minimum_patients

        return (
            f"it needs at least {minimum_patients(self.split_fractions)} images in train.csv (split 80/20 "
            "into train and val) and at least 1 in dev.csv (the test split)"
        )

    def assign_splits(self, samples: list[RawSample], seed: int) -> dict[str, np.ndarray]:
        """test = official dev; seeded 80/20 train/val of the official train images."""
        from cxrbench.datasets.splits import split_by_patient

        train_idx = np.array([i for i, s in enumerate(samples) if s.split_hint == "train"], dtype=np.int64)
        test_idx = np.array([i for i, s in enumerate(samples) if s.split_hint == "test"], dtype=np.int64)
        parts = split_by_patient([samples[i].patient_id for i in train_idx], self.split_fractions, seed)
        return {"train": train_idx[parts["train"]], "val": train_idx[parts["val"]], "test": test_idx}
