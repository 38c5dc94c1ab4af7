"""A synthetic chest radiograph ("phantom") with lungs, heart, spine and ribs, and lesion painters.

Images are synthesised on a small canvas (`SYNTH`, ~256 px) and upsampled to the dataset's real
resolution with fine noise added there, which keeps generation fast while the files have the real
size. Every painter returns or edits the canvas in place; coordinates are canvas pixels and
`Canvas.to_output` maps them to output pixels, so annotations always agree with what is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

SYNTH = 256


@dataclass
class Canvas:
    """A phantom under construction: canvas image, lung masks and the output size."""

    image: np.ndarray  # float32 h x w in [0, 1]
    lungs: np.ndarray  # bool 2 x h x w (patient's right lung = image left, then left lung)
    heart: np.ndarray  # bool h x w
    out_height: int
    out_width: int

    @property
    def scale_x(self) -> float:
        return self.out_width / self.image.shape[1]

    @property
    def scale_y(self) -> float:
        return self.out_height / self.image.shape[0]

    def to_output(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Canvas xyxy -> output-pixel xyxy."""
        x1, y1, x2, y2 = box
        return (x1 * self.scale_x, y1 * self.scale_y, x2 * self.scale_x, y2 * self.scale_y)

    def mask_to_output(self, mask: np.ndarray) -> np.ndarray:
        """Canvas bool mask -> output-size bool mask (nearest neighbour)."""
        img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        return np.asarray(img.resize((self.out_width, self.out_height), Image.Resampling.NEAREST)) > 127

    def render(self, rng: np.random.Generator, noise: float = 0.015) -> np.ndarray:
        """Upsample to the output size and add fine quantum-like noise; float32 in [0, 1]."""
        img = Image.fromarray(self.image.astype(np.float32), mode="F")
        out = np.asarray(
            img.resize((self.out_width, self.out_height), Image.Resampling.BILINEAR), dtype=np.float32
        )
        out = out + rng.normal(0.0, noise, size=out.shape).astype(np.float32)
        return np.clip(out, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smoothed Gaussian noise (tissue texture)."""
    field = gaussian_filter(rng.normal(size=shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0


def chest(rng: np.random.Generator, out_height: int, out_width: int) -> Canvas:
    """A random but anatomically plausible chest: torso, lungs with vessels, ribs, spine, heart."""
    ratio = out_height / out_width
    h, w = (SYNTH, round(SYNTH / ratio)) if ratio >= 1 else (round(SYNTH * ratio), SYNTH)
    jitter = lambda s: 1.0 + rng.uniform(-s, s)  # noqa: E731
    image = np.full((h, w), 0.04, dtype=np.float32)
    torso = _ellipse(h, w, h * 0.55, w * 0.5, h * 0.52 * jitter(0.05), w * 0.46 * jitter(0.05))
    image[torso] = 0.55
    lungs = np.zeros((2, h, w), dtype=bool)
    for k, side in enumerate((-1, 1)):
        cx = w * (0.5 + side * 0.19 * jitter(0.06))
        lungs[k] = _ellipse(
            h, w, h * 0.47 * jitter(0.04), cx, h * 0.3 * jitter(0.06), w * 0.15 * jitter(0.08)
        )
    lung_any = lungs.any(0)
    texture = 0.04 * smooth_noise(rng, (h, w), 1.2) + 0.03 * smooth_noise(rng, (h, w), 4)
    image[lung_any] = 0.2 + texture[lung_any]
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 2 * np.pi)
    ribs = (
        np.sin((yy / h) * 2 * np.pi * 6.5 + 4.0 * ((xx - w / 2) / w) ** 2 * 2 * np.pi + phase) > 0.82
    ) & torso
    image[ribs] += 0.12
    spine = (np.abs(xx + 0.5 - w * 0.5) < w * 0.045) & torso
    image[spine] = np.maximum(image[spine], 0.62)
    heart = _ellipse(h, w, h * 0.62, w * 0.54, h * 0.13 * jitter(0.1), w * 0.14 * jitter(0.1))
    image[heart] = np.maximum(image[heart], 0.6)
    image = gaussian_filter(image, 0.7).astype(np.float32)
    return Canvas(np.clip(image, 0, 1), lungs, heart, out_height, out_width)


def random_box_in(
    rng: np.random.Generator, mask: np.ndarray, min_size: float, max_size: float
) -> tuple[float, float, float, float]:
    """A random canvas box whose centre lies inside `mask`."""
    ys, xs = np.nonzero(mask)
    k = rng.integers(len(ys))
    bw, bh = rng.uniform(min_size, max_size, size=2)
    h, w = mask.shape
    cx, cy = float(xs[k]) + 0.5, float(ys[k]) + 0.5
    x1, y1 = float(np.clip(cx - bw / 2, 0, w - bw)), float(np.clip(cy - bh / 2, 0, h - bh))
    return (x1, y1, x1 + bw, y1 + bh)


def paint_opacity(
    canvas: Canvas, rng: np.random.Generator, box: tuple[float, float, float, float], strength: float = 0.3
) -> None:
    """Airspace opacity: a soft, patchy brightening filling the box (pneumonia-like)."""
    h, w = canvas.image.shape
    x1, y1, x2, y2 = box
    inside = _ellipse(h, w, (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2)
    patch = gaussian_filter(inside.astype(np.float32), 1.5) * (0.75 + 0.25 * smooth_noise(rng, (h, w), 2))
    canvas.image = np.clip(canvas.image + strength * patch, 0, 1).astype(np.float32)


def paint_pneumothorax(canvas: Canvas, rng: np.random.Generator, lung: int) -> np.ndarray:
    """Pneumothorax: a dark, texture-free rim of the lung (apex/lateral) with a thin pleural line.

    Returns the canvas mask of the air region.
    """
    mask = canvas.lungs[lung]
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    side = -1 if lung == 0 else 1
    yy, xx = np.mgrid[0:h, 0:w]
    depth = rng.uniform(0.25, 0.5)
    direction = np.array([rng.uniform(-1.0, -0.3), side * rng.uniform(0.3, 1.0)])
    direction /= np.linalg.norm(direction)
    proj = (yy - cy) * direction[0] + (xx - cx) * direction[1]
    extent = proj[mask].max()
    air = mask & (proj > extent * (1 - depth))
    image = canvas.image.copy()
    image[air] = 0.07 + 0.01 * rng.normal(size=int(air.sum()))
    edge = (
        air & ~np.roll(air, 1, 0)
        | air & ~np.roll(air, 1, 1)
        | air & ~np.roll(air, -1, 0)
        | air & ~np.roll(air, -1, 1)
    )
    image[edge & mask] = 0.45
    canvas.image = np.clip(image, 0, 1).astype(np.float32)
    return air


def paint_shape(canvas: Canvas, mask: np.ndarray, value: float = 0.97) -> None:
    """A dense foreign object (metal-like): flat, bright, sharp-edged."""
    canvas.image = np.where(mask, np.float32(value), canvas.image).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def to_uint16(image: np.ndarray, bits: int = 12) -> np.ndarray:
    return np.clip(np.round(image * (2**bits - 1)), 0, 2**bits - 1).astype(np.uint16)
