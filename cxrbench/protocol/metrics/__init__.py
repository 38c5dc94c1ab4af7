"""Task metrics behind one interface for training, run records, bootstrap intervals and re-scoring.

``per_image_stats`` turns a split's predictions into JSON-ready per-image sufficient statistics (the
run record's ``test_per_image``); ``aggregate`` reduces any list of image indices, duplicates included,
to the metric values. The per-image scalar shown in displays sits under the metric's own key.

kinds: "dice" (segmentation masks), "map" (RSNA boxes), "froc" (Object-CXR boxes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrbench.errors import CxrbenchError

from . import detection, dice, froc
from .ragged import check_counts, float_array, json_floats

KINDS = ("dice", "map", "froc")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise CxrbenchError(f"unknown metric kind {kind!r}; expected one of {', '.join(KINDS)}")


def per_image_stats(
    kind: str, predictions: object, targets: object, image_ids: Sequence | None = None
) -> dict:
    """JSON-serialisable per-image statistics of one split (lists, one entry per image).

    dice: ``predictions`` / ``targets`` are boolean masks B x C x H x W (threshold logits with
    ``dice.binarize_logits`` first); keys intersection, pred_sum, gt_sum (B x C) and dice (per image).
    map / froc: ``predictions`` is a list of (boxes N x 4 xyxy, scores N) per image and ``targets`` a
    list of GT boxes M x 4. ``image_ids``, when given, is stored under "image_ids".
    """
    _check_kind(kind)
    if kind == "dice":
        stats = dice.segmentation_stats(predictions, targets)
        out: dict = {k: v.tolist() for k, v in stats.items()}
        out["dice"] = json_floats(dice.per_image_dice(stats))
    else:
        out = (detection if kind == "map" else froc).per_image_stats(predictions, targets)
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
    _check_kind(kind)
    if kind == "dice":
        return {k: np.asarray(per_image[k], dtype=np.int64) for k in dice.STAT_KEYS}
    return (detection if kind == "map" else froc).prepare(per_image)


def aggregate(
    kind: str, per_image: object, indices: Sequence[int] | np.ndarray | None = None
) -> dict[str, float]:
    """Metric values over the images ``indices`` (None = all; repeats count as separate images).

    The primary metric is under ``kind``; secondary keys: dice_per_image, dice_<k> (dice); map50,
    map75, kaggle_map (map); sens@0.125 ... sens@8 (froc). Values are floats in [0, 1] or NaN.
    """
    _check_kind(kind)
    if kind == "dice":
        return dice.aggregate_dice(per_image, indices)
    return (detection if kind == "map" else froc).aggregate(per_image, indices)


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
    and `froc.bootstrap_froc`). Keys: dice; map, map50, map75, kaggle_map; froc, sens@<rate>. mAP and
    FROC values equal ``aggregate`` float for float except kaggle_map (a weighted mean: equal up to
    summation order); Dice sums integer pixel counts, exact below 2**53. ``primary_only`` returns just
    the primary key (for mAP it skips the Kaggle score's work; the values are the same).
    """
    _check_kind(kind)
    data = _prepared(kind, prepared)
    if kind == "dice":
        stacked = np.concatenate([data[k] for k in dice.STAT_KEYS], axis=1).astype(np.float64)
        counts = check_counts(counts, indices, len(stacked), np.float64)
        sums = np.split(counts @ stacked, len(dice.STAT_KEYS), axis=1)  # one pass over the counts
        return {"dice": dice.dice_from_sums(*sums).mean(axis=1)}
    if kind == "map":
        return detection.bootstrap_metrics(data, indices, counts, primary_only)
    out = froc.bootstrap_froc(data, indices, counts)
    return {kind: out[kind]} if primary_only else out


def _prepared(kind: str, per_image: object) -> object:
    """``per_image`` as `prepare` returns it (the JSON form is prepared, prepared data passes through)."""
    if kind == "dice":
        ready = all(isinstance(per_image.get(k), np.ndarray) for k in dice.STAT_KEYS)
    else:
        ready = isinstance(per_image, detection.DetectionTable if kind == "map" else froc.FrocTable)
    return per_image if ready else prepare(kind, per_image)


def primary_per_image_scores(kind: str, per_image: dict) -> np.ndarray:
    """Per-image scalar for displays (NaN where undefined): Dice of the image (mean over classes) for
    dice; Kaggle RSNA score for map (NaN: no GT and no box); hit rate of GT boxes at score 0.5 for froc
    (NaN: no GT box)."""
    _check_kind(kind)
    return float_array(per_image[kind])


__all__ = [
    "KINDS",
    "aggregate",
    "bootstrap_aggregate",
    "merge_per_image",
    "per_image_stats",
    "prepare",
    "primary_per_image_scores",
]
