"""Decoding raw image files into float32 [0, 1] greyscale arrays, and histogram equalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrbench.errors import DataError


def to_unit_range(pixels: np.ndarray, max_value: float | None = None) -> np.ndarray:
    """Scale integer/float pixels to [0, 1] by `max_value` (default: the dtype's range)."""
    pixels = np.asarray(pixels)
    if max_value is None:
        max_value = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else 1.0
    return np.clip(pixels.astype(np.float32) / np.float32(max_value), 0.0, 1.0)


def read_raster(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG into float32 HxW in [0, 1]; RGB(A) is converted to luminance.

    8-bit images are scaled by 255. 16-bit PNGs carry no bit-depth metadata (many store 12-bit
    data), so they are min-max scaled per image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                return np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
            if img.mode != "L":
                img = img.convert("L")
            return to_unit_range(np.asarray(img, dtype=np.uint8))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"cannot decode image: {exc}", expected="a readable PNG/JPEG file") from exc


def read_binary_mask(path: str | Path) -> np.ndarray:
    """Read a 0/1 (or 0/255) PNG mask as bool HxW."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"cannot decode mask: {exc}", expected="a readable PNG mask") from exc
    return arr > 0


def equalize_histogram(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """Global histogram equalisation of a float image, as the reference applies it.

    The reference equalises each float image with `skimage.exposure.equalize_hist` (256 bins), so
    this follows the same rule: `bins` equal-width bins spanning the image's own min..max, the
    normalised cumulative histogram taken at the bin centres, and every pixel mapped by linear
    interpolation between those points (values below the first centre get the first bin's share,
    not 0). Returns float32 in [0, 1].
    """
    values = np.asarray(image, dtype=np.float64)
    hist, edges = np.histogram(values, bins=bins)
    cdf = np.cumsum(hist, dtype=np.float64)
    if cdf[-1] == 0:
        return values.astype(np.float32)
    centres = (edges[:-1] + edges[1:]) / 2.0
    out = np.interp(values.ravel(), centres, cdf / cdf[-1]).reshape(values.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
