"""Segmentation Dice from per-image sufficient statistics (intersection, predicted and true pixel counts).

Storing three integers per image and class makes the split-level micro Dice, per-image Dice and any
bootstrap resample of images exact re-sums, without keeping the masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cxrbench.errors import CxrbenchError

from .base import Metric
from .ragged import check_counts, json_floats, resolve_indices
from .targets import MASKS

STAT_KEYS = ("intersection", "pred_sum", "gt_sum")


def binarize_logits(logits: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Foreground where sigmoid(logit) >= 0.5, i.e. logit >= 0 (no sigmoid needed, no rounding at 0.5)."""
    return logits >= 0


def _as_mask(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor | np.ndarray:
    """Boolean B x C x H x W view of a mask (B x H x W gets C = 1); floats are refused, not thresholded."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise CxrbenchError(f"{name} must be B x C x H x W (or B x H x W), got shape {tuple(x.shape)}")
    if isinstance(x, torch.Tensor):
        is_bool, is_int = x.dtype == torch.bool, not (torch.is_floating_point(x) or torch.is_complex(x))
    else:
        is_bool, is_int = x.dtype == np.bool_, np.issubdtype(x.dtype, np.integer)
    if not (is_bool or is_int):
        raise CxrbenchError(
            f"{name} must be a boolean mask, got {x.dtype}; threshold logits with binarize_logits"
        )
    if not is_bool and bool(((x != 0) & (x != 1)).any()):
        raise CxrbenchError(f"{name} must hold only 0 and 1")
    return x != 0


def segmentation_stats(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray
) -> dict[str, np.ndarray]:
    """Per image and class: ``intersection`` = |P & G|, ``pred_sum`` = |P|, ``gt_sum`` = |G| (int64, B x C).

    ``pred`` and ``target`` are boolean (or 0/1 integer) masks of equal shape B x C x H x W; tensors are
    reduced on their own device, so only B x C numbers leave the GPU.
    """
    p, g = _as_mask(pred, "pred"), _as_mask(target, "target")
    if tuple(p.shape) != tuple(g.shape):
        raise CxrbenchError(f"pred shape {tuple(p.shape)} differs from target shape {tuple(g.shape)}")
    if isinstance(p, torch.Tensor) or isinstance(g, torch.Tensor):
        device = p.device if isinstance(p, torch.Tensor) else g.device
        p, g = torch.as_tensor(p, device=device), torch.as_tensor(g, device=device)
        sums = [(p & g).sum(dim=(2, 3)), p.sum(dim=(2, 3)), g.sum(dim=(2, 3))]
        values = [s.to(torch.int64).cpu().numpy() for s in sums]
    else:
        values = [(p & g).sum(axis=(2, 3)), p.sum(axis=(2, 3)), g.sum(axis=(2, 3))]
    return {k: np.asarray(v, dtype=np.int64) for k, v in zip(STAT_KEYS, values, strict=True)}


def _stat_arrays(stats: Mapping[str, Sequence | np.ndarray]) -> list[np.ndarray]:
    """The three statistics as int64 B x C arrays (accepts the JSON list form)."""
    arrays = []
    for key in STAT_KEYS:
        a = np.asarray(stats[key], dtype=np.int64)
        if a.ndim != 2:  # a flat list is one class; an empty list is no image
            a = a.reshape(len(a), -1) if a.size else np.zeros((0, 0), np.int64)
        arrays.append(a)
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise CxrbenchError(f"Dice statistics disagree in shape: {[a.shape for a in arrays]}")
    return arrays


def dice_from_sums(intersection: np.ndarray, pred_sum: np.ndarray, gt_sum: np.ndarray) -> np.ndarray:
    """Dice = 2 I / (P + G), elementwise; defined as 1.0 where P + G = 0 (nothing to find, nothing found)."""
    denom = pred_sum + gt_sum
    safe = np.where(denom > 0, denom, 1)
    return np.where(denom > 0, 2.0 * intersection / safe, 1.0)


def per_image_dice(stats: Mapping[str, Sequence | np.ndarray]) -> np.ndarray:
    """Per-image Dice (B,): the mean over the classes with a non-empty ground truth in that image of the
    class's Dice; NaN for an image without any ground truth (it is never a perfect score)."""
    inter, ps, gs = _stat_arrays(stats)
    positive = gs > 0
    dice = np.where(positive, 2.0 * inter / np.maximum(ps + gs, 1), 0.0)
    n = positive.sum(axis=1)
    return np.where(n > 0, dice.sum(axis=1) / np.maximum(n, 1), np.nan)


def positive_image_dice(inter: np.ndarray, ps: np.ndarray, gs: np.ndarray) -> float:
    """The reference's secondary per-image Dice: per class, the mean Dice over the images whose ground
    truth of that class is non-empty; then the mean over the classes that have such an image (NaN if none)."""
    positive = gs > 0
    dice = np.where(positive, 2.0 * inter / np.maximum(ps + gs, 1), 0.0)
    n = positive.sum(axis=0)
    per_class = dice.sum(axis=0)[n > 0] / n[n > 0]
    return float(per_class.mean()) if per_class.size else float("nan")


def aggregate_dice(
    stats: Mapping[str, Sequence | np.ndarray], indices: Sequence[int] | np.ndarray | None = None
) -> dict[str, float]:
    """Micro Dice of the chosen images (duplicates count twice).

    ``dice_<k>`` = 2 sum(I_k) / (sum(P_k) + sum(G_k)) over all pixels of the chosen images (1.0 when both
    sums are 0); ``dice`` = mean of ``dice_<k>`` over classes; ``dice_per_image`` = `positive_image_dice`
    (images with an empty ground truth of a class do not count for that class).
    """
    inter, ps, gs = _stat_arrays(stats)
    idx = resolve_indices(indices, len(inter))
    inter, ps, gs = inter[idx], ps[idx], gs[idx]
    if inter.size == 0:
        return {"dice": float("nan"), "dice_per_image": float("nan")}
    per_class = dice_from_sums(inter.sum(0), ps.sum(0), gs.sum(0))
    out = {"dice": float(per_class.mean()), "dice_per_image": positive_image_dice(inter, ps, gs)}
    out.update({f"dice_{k}": float(v) for k, v in enumerate(per_class)})
    return out


class DiceMetric(Metric):
    """Micro Dice over all pixels of the chosen images, averaged over classes (mean Dice for NIH)."""

    name = "dice"
    display_name = "Dice"
    target = MASKS
    counts_dtype = np.float64  # the bootstrap is one float matrix product with the counts

    def per_image_stats(self, predictions: object, targets: object) -> dict:
        """``intersection``, ``pred_sum``, ``gt_sum`` (B x C) and ``dice`` (per image) from boolean masks
        B x C x H x W (threshold logits with `binarize_logits` first)."""
        stats = segmentation_stats(predictions, targets)
        out: dict = {k: v.tolist() for k, v in stats.items()}
        out["dice"] = json_floats(per_image_dice(stats))
        return out

    def prepare(self, per_image: dict) -> dict[str, np.ndarray]:
        return {k: np.asarray(per_image[k], dtype=np.int64) for k in STAT_KEYS}

    def is_prepared(self, data: object) -> bool:
        return all(isinstance(data.get(k), np.ndarray) for k in STAT_KEYS)

    def aggregate(self, data: object, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
        return aggregate_dice(data, indices)

    def bootstrap(
        self,
        prepared: object,
        indices: np.ndarray,
        counts: np.ndarray | None = None,
        primary_only: bool = False,
    ) -> dict[str, np.ndarray]:
        """``dice`` per replicate: the counts-weighted sums of the integer statistics (exact below 2**53)."""
        data = self.prepared(prepared)
        stacked = np.concatenate([data[k] for k in STAT_KEYS], axis=1).astype(np.float64)
        counts = check_counts(counts, indices, len(stacked), np.float64)
        sums = np.split(counts @ stacked, len(STAT_KEYS), axis=1)  # one pass over the counts
        return {"dice": dice_from_sums(*sums).mean(axis=1)}
