"""Task metrics: a registry of `Metric` objects keyed by name, and functions that look them up.

``per_image_stats`` turns a split's predictions into JSON-ready per-image sufficient statistics (the
run record's ``test_per_image``); ``aggregate`` reduces any list of image indices, duplicates included,
to the metric values; ``bootstrap_aggregate`` does so for every bootstrap replicate at once. The
per-image scalar shown in displays sits under the metric's own key.

Built-in metrics: "dice" (segmentation masks), "map" (RSNA boxes), "froc" (Object-CXR boxes). A new
metric is a `Metric` subclass plus one `register_metric` call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrbench.errors import CxrbenchError

from .base import Metric, get_metric, metric_names, register_metric, unregister_metric
from .detection import MapMetric
from .dice import DiceMetric
from .froc import FrocMetric
from .targets import BOXES, MASKS, TARGET_KINDS, TargetKind

register_metric(DiceMetric())
register_metric(MapMetric())
register_metric(FrocMetric())


def per_image_stats(
    kind: str, predictions: object, targets: object, image_ids: Sequence | None = None
) -> dict:
    """JSON-serialisable per-image statistics of one split (lists, one entry per image).

    dice: ``predictions`` / ``targets`` are boolean masks B x C x H x W (threshold logits with
    ``dice.binarize_logits`` first); keys intersection, pred_sum, gt_sum (B x C) and dice (per image,
    over its classes with a non-empty ground truth). map / froc: ``predictions`` is a list of (boxes
    N x 4 xyxy, scores N) per image and ``targets`` a list of GT boxes M x 4; map keys scores, tp_mask,
    coco_tp_mask, n_gt, map; froc keys scores, codes, n_gt, froc. ``image_ids``, when given, is stored
    under "image_ids".
    """
    out = get_metric(kind).per_image_stats(predictions, targets)
    if image_ids is not None:
        ids = list(image_ids)
        if len(ids) != len(out[kind]):
            raise CxrbenchError(f"{len(ids)} image ids for {len(out[kind])} images")
        out["image_ids"] = ids
    return out


def merge_per_image(parts: Sequence[dict]) -> dict:
    """Concatenate per-image statistics computed batch by batch (same kind, same keys)."""
    if not parts:
        raise CxrbenchError("nothing to merge")
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise CxrbenchError("per-image statistics to merge have different keys")
    return {k: [v for p in parts for v in p[k]] for k in parts[0]}


def prepare(kind: str, per_image: dict) -> object:
    """Arrays built once from the JSON form; ``aggregate`` accepts them in place of the dict (bootstrap)."""
    return get_metric(kind).prepare(per_image)


def aggregate(
    kind: str, per_image: object, indices: Sequence[int] | np.ndarray | None = None
) -> dict[str, float]:
    """Metric values over the images ``indices`` (None = all; repeats count as separate images).

    The primary metric is under ``kind``; secondary keys: dice_per_image, dice_<k> (dice); map50,
    map75, coco_map, coco_map50, coco_map75, kaggle_map (map); sens@0.125 ... sens@8 (the sequential
    FROC's values), froc_interpolated (froc). Values are floats in [0, 1] or NaN.
    """
    return get_metric(kind).aggregate(per_image, indices)


def bootstrap_aggregate(
    kind: str,
    prepared: object,
    indices: np.ndarray,
    counts: np.ndarray | None = None,
    primary_only: bool = False,
) -> dict[str, np.ndarray]:
    """Metric values of every bootstrap replicate at once: row r equals ``aggregate(kind, prepared,
    indices[r])`` (R x m indices; ``counts``, R x n draw counts of the n images, is built when None).

    A replicate only matters through how often it draws each image, so each metric becomes a
    count-weighted reduction over statistics sorted once (see `detection.bootstrap_average_precision`
    and `froc.bootstrap_froc`). Keys: dice; map, map50, map75, coco_map, coco_map50, coco_map75,
    kaggle_map; froc, sens@<rate>, froc_interpolated. mAP and FROC values equal ``aggregate`` float for
    float except kaggle_map and froc_interpolated (equal up to summation order); Dice sums integer pixel
    counts, exact below 2**53. ``primary_only`` returns just the primary key (skipping the secondary
    values' work; the values are the same).
    """
    return get_metric(kind).bootstrap(prepared, indices, counts, primary_only)


def primary_per_image_scores(kind: str, per_image: dict) -> np.ndarray:
    """Per-image scalar for displays (NaN where undefined): Dice of the image (mean over its classes with
    a non-empty ground truth; NaN: none) for dice; Kaggle RSNA score for map (NaN: no GT and no box); hit
    rate of GT boxes at score 0.5 for froc (NaN: no GT box)."""
    return get_metric(kind).per_image_scores(per_image)


__all__ = [
    "BOXES",
    "MASKS",
    "TARGET_KINDS",
    "Metric",
    "TargetKind",
    "aggregate",
    "bootstrap_aggregate",
    "get_metric",
    "merge_per_image",
    "metric_names",
    "per_image_stats",
    "prepare",
    "primary_per_image_scores",
    "register_metric",
    "unregister_metric",
]
