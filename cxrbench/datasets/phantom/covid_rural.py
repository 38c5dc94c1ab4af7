"""COVID Rural phantom: jpgs/COVID-19-AR-<patient>_<MM-DD-YYYY>-XR.jpg + pngs_masks/<stem>.png (0/1).

Annotated images are named by a seeded sample of the reference split lists (which name patient and
study date, so patients keep several images), of varying (mostly non-square) size. Opacities are irregular unions
of soft patches painted in the lungs; the mask is the painted region thresholded on the canvas and
mapped to output pixels, so it matches what is visible. About 1 in 6 images gets no mask (not
annotated, as in the real download, where those images are dropped); those are named after
patients outside the lists.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from cxrbench.datasets.phantom.anatomy import Canvas, chest, paint_opacity, random_box_in, to_uint8
from cxrbench.datasets.phantom.ids import sample_reference_ids

DEFAULT_N = 60
UNLISTED_PATIENT = 17_000_000  # above every patient of the reference lists
MASK_THRESHOLD = 0.1  # canvas brightening that counts as opacity (strengths are 0.25-0.4)


def paint_opacities(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Paint 1-2 irregular hazy opacities in the lungs; return the canvas mask of the painted region.

    Each opacity is the union (pixelwise maximum, so overlaps do not stack) of a few soft patches.
    """
    before = canvas.image.copy()
    increment = np.zeros_like(before)
    for _ in range(int(rng.integers(1, 3))):
        lung = canvas.lungs[rng.integers(2)]
        x1, y1, x2, y2 = random_box_in(rng, lung, 30, 60)
        strength = float(rng.uniform(0.25, 0.4))
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = rng.uniform(x1, x2), rng.uniform(y1, y2)
            bw, bh = rng.uniform(14, 34, size=2)
            patch = replace(canvas, image=before.copy())
            paint_opacity(patch, rng, (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), strength)
            increment = np.maximum(increment, patch.image - before)
    increment *= gaussian_filter(canvas.lungs.any(0).astype(np.float32), 1.5)
    canvas.image = np.clip(before + increment, 0, 1).astype(np.float32)
    return increment > MASK_THRESHOLD


def write(out_dir: Path, n_images: int = DEFAULT_N, seed: int = 0) -> None:
    """Write `n_images` COVID-19-AR-like images, ~5/6 named by reference ids with an opacity mask."""
    rng = np.random.default_rng(seed)
    image_dir, mask_dir = out_dir / "jpgs", out_dir / "pngs_masks"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    n_unannotated = n_images // 6
    sampled = sample_reference_ids("covid_rural", n_images - n_unannotated, seed)
    names = [(name, True) for ids in sampled.values() for name in ids]
    for j in range(n_images - len(names)):  # not annotated: no mask file, as in the real download
        month, day = 1 + j // 28 % 12, 1 + j % 28
        names.append((f"COVID-19-AR-{UNLISTED_PATIENT + j // 3}_{month:02d}-{day:02d}-2012-XR", False))
    for k, (stem, annotated) in enumerate(sorted(names)):
        height = 2 * int(rng.integers(400, 560))
        width = height if k % 5 == 0 else 2 * int(rng.integers(380, 560))
        canvas = chest(rng, height, width)
        mask = paint_opacities(canvas, rng) if rng.random() < 0.9 else np.zeros_like(canvas.heart)
        image = Image.fromarray(to_uint8(canvas.render(rng)), mode="L")
        if k % 11 == 5:  # some exports are RGB JPEGs
            image = image.convert("RGB")
        image.save(image_dir / f"{stem}.jpg", quality=92)
        if annotated:
            out_mask = canvas.mask_to_output(mask).astype(np.uint8)
            Image.fromarray(out_mask, mode="L").save(mask_dir / f"{stem}.png")
