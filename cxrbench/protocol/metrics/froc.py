"""Object-CXR FROC: mean sensitivity at 0.125, 0.25, 0.5, 1, 2, 4, 8 false positives per image.

Challenge rule (object-CXR froc.py, derived from the CAMELYON16 evaluation): a prediction hits a GT
object when its location, here the box centre, lies inside the GT box (borders included). At a score
threshold t, a GT box is detected when any prediction with score >= t hits it (counted once however many
hit it); a prediction that hits no GT box is a false positive; a prediction inside an already detected
box is neither. A centre inside several overlapping GT boxes hits all of them. The curve has one
operating point per distinct score, plus (0, 0); sensitivity at a target FP rate is read as
``np.interp(target, fps, sens)`` as in the challenge script (clamped to the last point beyond the largest
FP rate). With distinct scores this is exactly the sensitivity at the largest FP rate not exceeding the
target; it interpolates only across a tie that adds FPs and hits at once. Unlike the CAMELYON16 code we
do not drop the lowest score's operating point.

Per image we keep the scores of its false positives and, per GT box, the best score of a prediction
hitting it (-inf / None when missed): every threshold's counts, for any resample of images, follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrbench.errors import CxrbenchError

from .base import Metric
from .detection import as_boxes, as_scores
from .ragged import Ragged, check_counts, float_array, json_floats, resolve_indices, row_chunks
from .targets import BOXES

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DISPLAY_SCORE_THRESHOLD = 0.5  # per-image hit rate shown in displays (not part of the FROC)


def centre_hits(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """N x M bool: the centre of prediction n lies inside (or on the border of) GT box m."""
    cx = (pred_boxes[:, 0] + pred_boxes[:, 2])[:, None] / 2
    cy = (pred_boxes[:, 1] + pred_boxes[:, 3])[:, None] / 2
    g = gt_boxes[None, :, :]
    return (g[..., 0] <= cx) & (cx <= g[..., 2]) & (g[..., 1] <= cy) & (cy <= g[..., 3])


@dataclass(frozen=True)
class ImageFroc:
    """One image: ``fp_scores`` of predictions hitting no GT; ``gt_hit_scores`` (M,), -inf when missed."""

    fp_scores: np.ndarray
    gt_hit_scores: np.ndarray


def froc_image(pred_boxes: object, pred_scores: object, gt_boxes: object) -> ImageFroc:
    """Per-image FROC statistics (all predictions count; there is no per-image cap)."""
    boxes = as_boxes(pred_boxes, "pred_boxes")
    scores = as_scores(pred_scores, len(boxes))
    hits = centre_hits(boxes, as_boxes(gt_boxes, "gt_boxes"))
    best = np.where(hits, scores[:, None], -np.inf).max(axis=0, initial=-np.inf)
    return ImageFroc(scores[~hits.any(axis=1)], best)


@dataclass(frozen=True)
class FrocTable:
    """All images' FROC statistics stored flat (see :class:`ImageFroc`)."""

    fp_scores: Ragged
    gt_hit_scores: Ragged

    @classmethod
    def from_images(cls, images: Sequence[ImageFroc]) -> FrocTable:
        fp = Ragged.from_list([i.fp_scores for i in images], np.float64)
        return cls(fp, Ragged.from_list([i.gt_hit_scores for i in images], np.float64))

    def __len__(self) -> int:
        return len(self.fp_scores)


def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many ``values`` are >= each threshold."""
    return values.size - np.searchsorted(np.sort(values), thresholds, side="left")


def froc_curve(
    fp_scores: np.ndarray, gt_hit_scores: np.ndarray, n_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """Operating points (FP per image, sensitivity), from threshold +inf down to the lowest score.

    FP rate = #FP with score >= t / n_images; sensitivity = #GT with hit score >= t / #GT.
    """
    hit = gt_hit_scores[np.isfinite(gt_hit_scores)]
    thresholds = np.unique(np.concatenate([fp_scores, hit]))[::-1]
    fps = np.concatenate([[0.0], _count_at_least(fp_scores, thresholds) / n_images])
    sens = np.concatenate([[0.0], _count_at_least(hit, thresholds) / gt_hit_scores.size])
    return fps, sens


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, targets: Sequence[float] = FP_RATES) -> np.ndarray:
    """``np.interp(targets, fps, sens)`` for a non-decreasing ``fps`` with ties, made explicit: between the
    last point with FP rate <= target and the next point; the last point's sensitivity beyond the end."""
    x = np.asarray(targets, dtype=np.float64)
    left = np.searchsorted(fps, x, side="right") - 1
    right = np.minimum(left + 1, fps.size - 1)
    span = fps[right] - fps[left]
    w = np.where(span > 0, (x - fps[left]) / np.where(span > 0, span, 1.0), 0.0)
    return sens[left] + w * (sens[right] - sens[left])


def froc_metrics(table: FrocTable, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
    """``froc`` = mean sensitivity at the 7 FP rates, and ``sens@<rate>`` each; NaN without GT boxes."""
    idx = resolve_indices(indices, len(table))
    hit = table.gt_hit_scores.take(idx)
    if hit.size == 0 or idx.size == 0:
        sens = np.full(len(FP_RATES), np.nan)
    else:
        sens = sensitivity_at(*froc_curve(table.fp_scores.take(idx), hit, idx.size))
    out = {"froc": float(sens.mean())}
    out.update({f"sens@{r:g}": float(s) for r, s in zip(FP_RATES, sens, strict=True)})
    return out


def per_image_stats(
    predictions: Sequence[tuple[object, object]], targets: Sequence[object]
) -> dict[str, list]:
    """JSON-ready ``fp_scores``, ``gt_hit_scores`` (None = missed) and ``froc``: the per-image hit rate,
    the fraction of GT boxes hit by a prediction scoring >= 0.5 (None for images without GT boxes)."""
    if len(predictions) != len(targets):
        raise CxrbenchError(f"{len(predictions)} predictions for {len(targets)} targets")
    images = [froc_image(b, s, g) for (b, s), g in zip(predictions, targets, strict=True)]
    rate = [
        np.mean(i.gt_hit_scores >= DISPLAY_SCORE_THRESHOLD) if i.gt_hit_scores.size else np.nan
        for i in images
    ]
    return {
        "fp_scores": [i.fp_scores.tolist() for i in images],
        "gt_hit_scores": [json_floats(i.gt_hit_scores) for i in images],
        "froc": json_floats(np.array(rate)),
    }


def prepare(per_image: dict) -> FrocTable:
    """Arrays from the JSON form (None hit scores become -inf, i.e. never detected)."""
    hits = [np.where(np.isnan(a), -np.inf, a) for a in map(float_array, per_image["gt_hit_scores"])]
    fp = per_image["fp_scores"]
    if len(fp) != len(hits):
        raise CxrbenchError("FROC per-image statistics disagree in length")
    return FrocTable(Ragged.from_list(fp, np.float64), Ragged.from_list(hits, np.float64))


def aggregate(data: dict | FrocTable, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
    """FROC metrics over the chosen images (duplicates count twice, in FPs, GT boxes and images)."""
    return froc_metrics(data if isinstance(data, FrocTable) else prepare(data), indices)


def _weighted_at_least(
    values: np.ndarray, owners: np.ndarray, thresholds: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """R x len(thresholds): summed draw counts of the ``values`` (of images ``owners``) >= each threshold,
    i.e. `_count_at_least` on every replicate's pooled values (an image drawn c times counts c times)."""
    order = np.argsort(-values, kind="stable")
    cum = np.zeros((len(counts), values.size + 1), dtype=np.int64)
    np.cumsum(counts[:, owners[order]], axis=1, out=cum[:, 1:])
    return cum[:, np.searchsorted(-values[order], -thresholds, side="right")]


def bootstrap_froc(
    data: dict | FrocTable, indices: np.ndarray, counts: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """``froc`` and ``sens@<rate>`` of every bootstrap replicate (rows of ``indices``, R x m), equal float
    for float to ``froc_metrics(table, indices[r])``.

    With draw counts c (``counts``, R x n; built from ``indices`` when None) the pooled counts are
    weighted: #FP >= t = sum of c[image] over FP scores >= t, likewise for hits; n_images = sum(c),
    #GT = sum(c * M_image). The curve is read at every score of the run rather than only at the drawn
    ones: an undrawn score repeats the operating point of the next higher drawn score (or (0, 0)), and
    `sensitivity_at` reads a repeated point exactly as the single one.
    """
    table = data if isinstance(data, FrocTable) else prepare(data)
    n = len(table)
    counts = check_counts(counts, indices, n)
    fp, hit = table.fp_scores, table.gt_hit_scores
    fp_owner = np.repeat(np.arange(n), np.diff(fp.offsets))
    found = np.isfinite(hit.values)
    hit_owner = np.repeat(np.arange(n), np.diff(hit.offsets))[found]
    thresholds = np.unique(np.concatenate([fp.values, hit.values[found]]))[::-1]
    n_images = counts.sum(axis=1)
    n_gt = counts @ np.diff(hit.offsets)
    targets = np.asarray(FP_RATES, dtype=np.float64)
    sens = np.full((len(counts), targets.size), np.nan)
    for rows in row_chunks(len(counts), (thresholds.size + 1) * targets.size):
        c = counts[rows]
        zero = np.zeros((len(c), 1))
        fps = np.hstack(
            [
                zero,
                _weighted_at_least(fp.values, fp_owner, thresholds, c) / np.maximum(n_images[rows, None], 1),
            ]
        )
        tpr = _weighted_at_least(hit.values[found], hit_owner, thresholds, c) / np.maximum(
            n_gt[rows, None], 1
        )
        sens[rows] = _sensitivity_rows(fps, np.hstack([zero, tpr]), targets)
    sens[(n_gt == 0) | (n_images == 0)] = np.nan
    out = {"froc": sens.mean(axis=1)}
    out.update({f"sens@{r:g}": sens[:, k] for k, r in enumerate(FP_RATES)})
    return out


def _sensitivity_rows(fps: np.ndarray, sens: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`sensitivity_at` on every row of ``fps`` / ``sens`` (R x P, each ``fps`` row non-decreasing)."""
    left = (fps[:, :, None] <= x).sum(axis=1) - 1
    right = np.minimum(left + 1, fps.shape[1] - 1)
    f_left, f_right = np.take_along_axis(fps, left, 1), np.take_along_axis(fps, right, 1)
    s_left, s_right = np.take_along_axis(sens, left, 1), np.take_along_axis(sens, right, 1)
    span = f_right - f_left
    w = np.where(span > 0, (x - f_left) / np.where(span > 0, span, 1.0), 0.0)
    return s_left + w * (s_right - s_left)


class FrocMetric(Metric):
    """Object-CXR FROC: mean sensitivity at 0.125 ... 8 false positives per image (interpolated curve)."""

    name = "froc"
    display_name = "FROC"
    target = BOXES

    def per_image_stats(self, predictions: object, targets: object) -> dict:
        return per_image_stats(predictions, targets)

    def prepare(self, per_image: dict) -> FrocTable:
        return prepare(per_image)

    def is_prepared(self, data: object) -> bool:
        return isinstance(data, FrocTable)

    def aggregate(self, data: object, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
        return aggregate(data, indices)

    def bootstrap(
        self,
        prepared: object,
        indices: np.ndarray,
        counts: np.ndarray | None = None,
        primary_only: bool = False,
    ) -> dict[str, np.ndarray]:
        out = bootstrap_froc(self.prepared(prepared), indices, counts)
        return {self.name: out[self.name]} if primary_only else out
