"""Representation statistics of an encoder's region features: uniformity, effective rank, smoothness.

Every statistic calls `cxrbench.representation`, the same functions the pre-training losses optimise,
on the L2-normalised region features and on the pooled global feature. Formulas and their meaning for
localized tasks: docs/analysis.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cxrbench.errors import CxrbenchError
from cxrbench.representation import (
    between_sample_uniformity,
    effective_rank,
    global_uniformity,
    mean_within_cosine,
    spatial_smoothness,
    within_sample_uniformity,
)

TEMPERATURE = 2.0  # t of the Gaussian potential (Wang & Isola)
# Scalar statistics of an analysis record that `correlate` relates to downstream scores.
SCALAR_STATISTICS = (
    "global_uniformity",
    "within_image_uniformity",
    "between_image_uniformity",
    "mean_within_cosine",
    "effective_rank_mean",
    "neighbour_cosine",
    "global_alignment",
    "local_alignment",
)


def finite_or_none(value: float) -> float | None:
    """A float for JSON: None where the statistic is undefined (NaN/inf)."""
    value = float(value)
    return value if math.isfinite(value) else None


def sample_indices(n_available: int, n_images: int, seed: int) -> np.ndarray:
    """A fixed seeded sample (sorted) of a split; the whole split when it is smaller."""
    if n_images < 1:
        raise CxrbenchError(f"--n-images must be at least 1, got {n_images}")
    if n_available <= n_images:
        return np.arange(n_available)
    return np.sort(np.random.default_rng(seed).choice(n_available, size=n_images, replace=False))


def region_statistics(regions: Tensor, grid: tuple[int, int], t: float = TEMPERATURE) -> dict[str, Any]:
    """All statistics of one batch of raw (un-normalised) region features B x (H*W) x D, row-major.

    The pooled global feature is the mean of the regions (= average pooling of the feature map); each
    statistic normalises its input itself. Undefined values (e.g. global uniformity of one image) are
    None, so the result is valid JSON.
    """
    if regions.dim() != 3:
        raise ValueError(f"expected regions B x N x D, got {tuple(regions.shape)}")
    with torch.no_grad():
        regions = regions.float()
        pooled = regions.mean(1)
        erank = effective_rank(regions).double().numpy()
        finite = erank[np.isfinite(erank)]
        smooth = spatial_smoothness(regions, grid)
        quantiles = np.quantile(finite, [0.0, 0.25, 0.5, 0.75, 1.0]) if finite.size else [math.nan] * 5
        return {
            "global_uniformity": finite_or_none(global_uniformity(pooled, t)),
            "within_image_uniformity": finite_or_none(within_sample_uniformity(regions, t)),
            "between_image_uniformity": finite_or_none(between_sample_uniformity(regions, t)),
            "mean_within_cosine": finite_or_none(mean_within_cosine(regions).nanmean()),
            "effective_rank_mean": finite_or_none(finite.mean() if finite.size else math.nan),
            "effective_rank_distribution": {
                "std": finite_or_none(finite.std() if finite.size else math.nan),
                **{k: finite_or_none(v) for k, v in zip(("min", "q25", "median", "q75", "max"), quantiles)},
                "n_regions": regions.shape[1],
            },
            "neighbour_cosine": finite_or_none(smooth.get(1, math.nan)),
            "spatial_smoothness": {str(d): finite_or_none(v) for d, v in smooth.items()},
        }


def feature_statistics(feature_map: Tensor, t: float = TEMPERATURE) -> dict[str, Any]:
    """`region_statistics` of a B x D x H x W feature map (regions in row-major grid order)."""
    if feature_map.dim() != 4:
        raise ValueError(f"expected a B x D x H x W feature map, got {tuple(feature_map.shape)}")
    h, w = feature_map.shape[-2:]
    return region_statistics(feature_map.flatten(2).transpose(1, 2), (h, w), t)
