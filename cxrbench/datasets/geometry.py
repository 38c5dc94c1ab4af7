"""Pad-to-square + resize, applied identically to images, masks and boxes.

Convention: boxes are continuous pixel coordinates (x1, y1, x2, y2) where pixel i covers
[i, i + 1). Padding is centred (extra pixel at the bottom/right) with value 0, so a box maps as
x' = (x + pad_left) * scale, y' = (y + pad_top) * scale with scale = size / max(h, w).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class SquareResize:
    """The geometry that maps a raw (h, w) image onto a (size, size) prepared image."""

    height: int
    width: int
    size: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def pad_top(self) -> int:
        return (self.side - self.height) // 2

    @property
    def pad_left(self) -> int:
        return (self.side - self.width) // 2

    @property
    def scale(self) -> float:
        return self.size / self.side

    def pad(self, array: np.ndarray) -> np.ndarray:
        """Zero-pad the last two axes to a centred square."""
        side = self.side
        out = np.zeros((*array.shape[:-2], side, side), dtype=array.dtype)
        out[..., self.pad_top : self.pad_top + self.height, self.pad_left : self.pad_left + self.width] = (
            array
        )
        return out

    def image(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """float32 HxW in [0, 1] (or a Pillow "F" image of them) -> float32 size x size, antialiased bilinear resize."""
        if isinstance(image, Image.Image):
            if self.height == self.width and self.side != self.size:  # resized as is, no copy into numpy
                resized = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
                return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
            image = np.array(image, dtype=np.float32)
        image = image.astype(np.float32, copy=False)
        padded = image if self.height == self.width else self.pad(image)  # square: nothing to pad
        if self.side == self.size:
            return padded.copy() if padded is image else padded
        resized = Image.fromarray(padded, mode="F").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)

    def masks(self, masks: np.ndarray) -> np.ndarray:
        """bool CxHxW -> bool C x size x size, nearest neighbour (as the protocol prescribes)."""
        padded = self.pad(masks.astype(np.uint8))
        if self.side == self.size:
            return padded.astype(bool)
        out = np.empty((masks.shape[0], self.size, self.size), dtype=bool)
        for c, plane in enumerate(padded):
            resized = Image.fromarray(plane * 255, mode="L").resize(
                (self.size, self.size), Image.Resampling.NEAREST
            )
            out[c] = np.asarray(resized) > 127
        return out

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in raw pixels -> xyxy boxes in prepared pixels."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        offset = np.array([self.pad_left, self.pad_top, self.pad_left, self.pad_top], dtype=np.float32)
        return ((boxes + offset) * np.float32(self.scale)).astype(np.float32)


def boxes_to_masks(
    boxes: np.ndarray, labels: np.ndarray, n_classes: int, shape: tuple[int, int]
) -> np.ndarray:
    """Rasterise xyxy boxes into per-class bool masks (pixel i is inside when its centre is)."""
    h, w = shape
    masks = np.zeros((n_classes, h, w), dtype=bool)
    for (x1, y1, x2, y2), label in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1)):
        c1, c2 = int(np.clip(np.ceil(x1 - 0.5), 0, w)), int(np.clip(np.ceil(x2 - 0.5), 0, w))
        r1, r2 = int(np.clip(np.ceil(y1 - 0.5), 0, h)), int(np.clip(np.ceil(y2 - 0.5), 0, h))
        masks[int(label), r1:r2, c1:c2] = True
    return masks


def check_box(box: np.ndarray, height: int, width: int) -> str | None:
    """Why a raw box is unusable (None when usable): non-finite, of non-positive size, or without any
    overlap with the image. A box that overhangs the image is usable: prepare clips it (`clip_boxes`)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.all(np.isfinite([x1, y1, x2, y2])):
        return "box has non-finite coordinates"
    if x2 <= x1 or y2 <= y1:
        return f"box has non-positive size ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies entirely outside the {width}x{height} image"
    return None


def overhangs(box: np.ndarray, height: int, width: int) -> bool:
    """Whether a box reaches beyond the image (so that clipping changes it)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1 < 0 or y1 < 0 or x2 > width or y2 > height


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes clipped to the image [0, width] x [0, height] (objects overhanging it are kept, not dropped)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes
