"""Object-CXR FROC: the reference's sequential rule (primary) and the interpolated curve (secondary).

A prediction hits a GT box when its box centre lies inside it (borders included); a centre inside
several overlapping GT boxes hits all of them; a GT box counts once however many predictions hit it;
a prediction that hits no GT box is a false positive (FP); one inside only already-hit boxes is neither.

Primary ``froc`` (as the reference computed it, after the object-CXR challenge's froc.py): sort all
predictions of the chosen images by score, descending (stable: image order, then the head's output
order); walk them one at a time, updating hits and FPs; after each prediction, if FP / n_images >= the
next target rate (0.125, 0.25, 0.5, 1, 2, 4, 8), record hits / n_GT and move to the following rate (at
most one rate per prediction). Rates never reached repeat the last recorded value; if no rate is
reached at all, every value is the final hits / n_GT, or 1.0 when the images have no GT box. FROC is
the mean of the 7 values (``sens@<rate>`` each). With no GT box and a rate reached the reference
divides by zero: NaN here.

Secondary ``froc_interpolated``: one operating point per distinct score, plus (0, 0); sensitivity at a
target FP rate read as ``np.interp(target, fps, sens)`` (clamped to the last point beyond its end).

Per image we keep every prediction's score (descending, stable) and its code: -1 for an FP, else the
number of GT boxes it is the first prediction of its image to hit. Both FROCs of any selection of
images, a bootstrap resample included, follow from these and the GT counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrbench.errors import CxrbenchError

from .base import Metric
from .detection import as_boxes, as_scores
from .ragged import Ragged, check_counts, json_floats, resolve_indices, row_chunks
from .targets import BOXES

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
FALSE_POSITIVE = -1  # the code of a prediction whose centre lies in no GT box
DISPLAY_SCORE_THRESHOLD = 0.5  # per-image hit rate shown in displays (not part of the FROC)


def centre_hits(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """N x M bool: the centre of prediction n lies inside (or on the border of) GT box m."""
    cx = (pred_boxes[:, 0] + pred_boxes[:, 2])[:, None] / 2
    cy = (pred_boxes[:, 1] + pred_boxes[:, 3])[:, None] / 2
    g = gt_boxes[None, :, :]
    return (g[..., 0] <= cx) & (cx <= g[..., 2]) & (g[..., 1] <= cy) & (cy <= g[..., 3])


@dataclass(frozen=True)
class ImageFroc:
    """One image: ``scores`` (N, descending, stable), ``codes`` (N: -1 FP, else GT boxes newly hit), ``n_gt``."""

    scores: np.ndarray
    codes: np.ndarray
    n_gt: int


def froc_image(pred_boxes: object, pred_scores: object, gt_boxes: object) -> ImageFroc:
    """Per-image FROC statistics (all predictions count; there is no per-image cap)."""
    boxes = as_boxes(pred_boxes, "pred_boxes")
    scores = as_scores(pred_scores, len(boxes))
    gt = as_boxes(gt_boxes, "gt_boxes")
    order = np.argsort(-scores, kind="mergesort")
    hits = centre_hits(boxes[order], gt)
    first = hits & (np.cumsum(hits, axis=0) == 1)  # the first prediction (in score order) hitting each box
    codes = np.where(hits.any(axis=1), first.sum(axis=1), FALSE_POSITIVE).astype(np.int64)
    return ImageFroc(scores[order], codes, len(gt))


@dataclass(frozen=True)
class FrocTable:
    """All images' FROC statistics stored flat (see :class:`ImageFroc`)."""

    scores: Ragged
    codes: Ragged
    n_gt: np.ndarray

    @classmethod
    def from_images(cls, images: Sequence[ImageFroc]) -> FrocTable:
        return cls(
            Ragged.from_list([i.scores for i in images], np.float64),
            Ragged.from_list([i.codes for i in images], np.int64),
            np.array([i.n_gt for i in images], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.n_gt)


def _finish(recorded: list[float], final_hits: float, n_gt: float) -> np.ndarray:
    """The 7 values from those recorded in the walk (the reference's repeat/fallback rules)."""
    if not recorded:
        return np.full(len(FP_RATES), 1.0 if n_gt == 0 else final_hits / n_gt)
    if n_gt == 0:
        return np.full(len(FP_RATES), np.nan)
    return np.array(recorded + [recorded[-1]] * (len(FP_RATES) - len(recorded)))


def sequential_sensitivities(codes: np.ndarray, n_images: int, n_gt: int) -> np.ndarray:
    """The 7 sensitivities of the sequential rule for predictions already in walk order (``codes``)."""
    if n_images == 0:
        return np.full(len(FP_RATES), np.nan)
    fp = np.cumsum(codes == FALSE_POSITIVE)
    hits = np.cumsum(np.maximum(codes, 0))
    fp_rate = fp / n_images  # the reference's false_positives / num_images, float for float
    recorded: list[float] = []
    step = 0  # 1-based index of the prediction after which the last value was recorded
    for rate in FP_RATES:
        # the first prediction after the last recording at which FP / n_images >= rate
        step = max(step + 1, int(np.searchsorted(fp_rate, rate, side="left")) + 1)
        if step > codes.size:
            break
        recorded.append(hits[step - 1] / n_gt if n_gt else np.nan)
    return _finish(recorded, float(hits[-1]) if hits.size else 0.0, n_gt)


def froc_curve(
    fp_scores: np.ndarray, gt_hit_scores: np.ndarray, n_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """Operating points (FP per image, sensitivity), from threshold +inf down to the lowest score.

    FP rate = #FP with score >= t / n_images; sensitivity = #GT with hit score >= t / #GT (-inf: missed).
    """
    hit = gt_hit_scores[np.isfinite(gt_hit_scores)]
    thresholds = np.unique(np.concatenate([fp_scores, hit]))[::-1]
    fps = np.concatenate([[0.0], _count_at_least(fp_scores, thresholds) / n_images])
    sens = np.concatenate([[0.0], _count_at_least(hit, thresholds) / gt_hit_scores.size])
    return fps, sens


def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many ``values`` are >= each threshold."""
    return values.size - np.searchsorted(np.sort(values), thresholds, side="left")


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, targets: Sequence[float] = FP_RATES) -> np.ndarray:
    """``np.interp(targets, fps, sens)`` for a non-decreasing ``fps`` with ties, made explicit: between the
    last point with FP rate <= target and the next point; the last point's sensitivity beyond the end."""
    x = np.asarray(targets, dtype=np.float64)
    left = np.searchsorted(fps, x, side="right") - 1
    right = np.minimum(left + 1, fps.size - 1)
    span = fps[right] - fps[left]
    w = np.where(span > 0, (x - fps[left]) / np.where(span > 0, span, 1.0), 0.0)
    return sens[left] + w * (sens[right] - sens[left])


def _hit_scores(scores: np.ndarray, codes: np.ndarray, n_gt: int) -> np.ndarray:
    """Per GT box the best score of a prediction hitting it (-inf: missed), from scores and codes."""
    found = np.repeat(scores, np.maximum(codes, 0))
    return np.concatenate([found, np.full(n_gt - found.size, -np.inf)])


def froc_metrics(table: FrocTable, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
    """``froc`` (sequential rule) and ``sens@<rate>`` each, and ``froc_interpolated`` (NaN without GT)."""
    idx = resolve_indices(indices, len(table))
    scores, codes = table.scores.take(idx), table.codes.take(idx)
    n_gt = int(table.n_gt[idx].sum())
    order = np.argsort(-scores, kind="stable")  # ties: earlier image of the selection first
    sens = sequential_sensitivities(codes[order], idx.size, n_gt)
    out = {"froc": float(sens.mean())}
    out.update({f"sens@{r:g}": float(s) for r, s in zip(FP_RATES, sens, strict=True)})
    if n_gt == 0 or idx.size == 0:
        out["froc_interpolated"] = float("nan")
    else:
        fp = scores[codes == FALSE_POSITIVE]
        curve = froc_curve(fp, _hit_scores(scores, codes, n_gt), idx.size)
        out["froc_interpolated"] = float(sensitivity_at(*curve).mean())
    return out


def per_image_stats(
    predictions: Sequence[tuple[object, object]], targets: Sequence[object]
) -> dict[str, list]:
    """JSON-ready ``scores`` (descending, stable), ``codes`` (-1 FP, else GT boxes newly hit), ``n_gt``, and
    ``froc``: the per-image hit rate, the fraction of GT boxes hit by a prediction scoring >= 0.5 (None
    for images without GT boxes)."""
    if len(predictions) != len(targets):
        raise CxrbenchError(f"{len(predictions)} predictions for {len(targets)} targets")
    images = [froc_image(b, s, g) for (b, s), g in zip(predictions, targets, strict=True)]
    rate = [
        np.maximum(i.codes, 0)[i.scores >= DISPLAY_SCORE_THRESHOLD].sum() / i.n_gt if i.n_gt else np.nan
        for i in images
    ]
    return {
        "scores": [i.scores.tolist() for i in images],
        "codes": [i.codes.tolist() for i in images],
        "n_gt": [i.n_gt for i in images],
        "froc": json_floats(np.array(rate, dtype=np.float64)),
    }


def prepare(per_image: dict) -> FrocTable:
    """Arrays from the JSON form."""
    scores = Ragged.from_list(per_image["scores"], np.float64)
    codes = Ragged.from_list(per_image["codes"], np.int64)
    n_gt = np.asarray(per_image["n_gt"], dtype=np.int64).reshape(-1)
    if not np.array_equal(scores.offsets, codes.offsets) or len(n_gt) != len(scores):
        raise CxrbenchError("FROC per-image statistics disagree in length")
    if codes.values.size and codes.values.min() < FALSE_POSITIVE:
        raise CxrbenchError("FROC prediction codes must be -1 (false positive) or a hit count >= 0")
    return FrocTable(scores, codes, n_gt)


def aggregate(data: dict | FrocTable, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
    """FROC metrics over the chosen images (duplicates count twice, in FPs, GT boxes and images)."""
    return froc_metrics(data if isinstance(data, FrocTable) else prepare(data), indices)


def _mixed_tie_rows(
    scores: np.ndarray, codes: np.ndarray, images: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Replicates (bool, R) whose walk depends on how tied predictions are ordered, which the weighted walk
    does not know: a group of equal scores with different codes drawn, and more than one drawn copy of
    its images (the walk then orders the copies by draw position)."""
    flagged = np.zeros(counts.shape[0], dtype=bool)
    if scores.size < 2:
        return flagged
    starts = np.flatnonzero(np.concatenate([[True], scores[1:] != scores[:-1]]))
    ends = np.append(starts[1:], scores.size)
    tied = ends - starts > 1
    for a, b in zip(starts[tied], ends[tied], strict=True):
        group = codes[a:b]
        if (group == group[0]).all():
            continue
        copies = counts[:, np.unique(images[a:b])].sum(axis=1)
        kinds = [counts[:, np.unique(images[a:b][group == v])].sum(axis=1) > 0 for v in np.unique(group)]
        flagged |= (copies > 1) & (np.sum(kinds, axis=0) > 1)
    return flagged


def _fewest_false_positives(rate: float, n: int) -> int:
    """The fewest FPs f with ``f / n >= rate`` as the walk compares them (float division)."""
    need = max(int(np.ceil(rate * n)), 0)
    while need > 0 and (need - 1) / n >= rate:
        need -= 1
    while need / n < rate:
        need += 1
    return need


def _weighted_walk(
    steps: np.ndarray, fps: np.ndarray, hits: np.ndarray, new: np.ndarray, n: int, g: int
) -> np.ndarray:
    """`sequential_sensitivities` of one replicate in which prediction p (walk order) stands for w_p
    consecutive copies: ``steps``, ``fps``, ``hits`` are the cumulative copies, FPs and hits after each
    prediction's last copy."""
    if n == 0:
        return np.full(len(FP_RATES), np.nan)
    total = int(steps[-1]) if steps.size else 0
    recorded: list[float] = []
    step = 0
    for rate in FP_RATES:
        need = _fewest_false_positives(rate, n)
        q = int(np.searchsorted(fps, need, side="left"))  # prediction holding the need-th FP copy
        if q < fps.size:
            before_steps, before_fp = (steps[q - 1], fps[q - 1]) if q else (0, 0)
            reach = int(before_steps + (need - before_fp))  # step of that copy
            step = max(step + 1, reach)
        else:
            step = total + 1
        if step > total:
            break
        p = int(np.searchsorted(steps, step, side="left"))  # prediction holding the step
        before_steps, before_hits = (steps[p - 1], hits[p - 1]) if p else (0, 0)
        recorded.append(float(before_hits + (step - before_steps) * new[p]) / g if g else np.nan)
    return _finish(recorded, float(hits[-1]) if hits.size else 0.0, g)


def _bootstrap_interpolated(
    table: FrocTable, scores: np.ndarray, codes: np.ndarray, owners: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """``froc_interpolated`` of every replicate: the interpolated curve's counts as count-weighted sums."""
    fp = codes == FALSE_POSITIVE
    fp_values, fp_owner = scores[fp], owners[fp]
    reps = np.maximum(codes, 0)
    hit_values, hit_owner = np.repeat(scores, reps), np.repeat(owners, reps)
    thresholds = np.unique(np.concatenate([fp_values, hit_values]))[::-1]
    n_images = counts.sum(axis=1)
    n_gt = counts @ table.n_gt
    targets = np.asarray(FP_RATES, dtype=np.float64)
    sens = np.full((len(counts), targets.size), np.nan)
    for rows in row_chunks(len(counts), (thresholds.size + 1) * targets.size):
        c = counts[rows]
        zero = np.zeros((len(c), 1))
        rate = _weighted_at_least(fp_values, fp_owner, thresholds, c) / np.maximum(n_images[rows, None], 1)
        tpr = _weighted_at_least(hit_values, hit_owner, thresholds, c) / np.maximum(n_gt[rows, None], 1)
        sens[rows] = _sensitivity_rows(np.hstack([zero, rate]), np.hstack([zero, tpr]), targets)
    sens[(n_gt == 0) | (n_images == 0)] = np.nan
    return sens.mean(axis=1)


def _weighted_at_least(
    values: np.ndarray, owners: np.ndarray, thresholds: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """R x len(thresholds): summed draw counts of the ``values`` (of images ``owners``) >= each threshold,
    i.e. `_count_at_least` on every replicate's pooled values (an image drawn c times counts c times)."""
    order = np.argsort(-values, kind="stable")
    cum = np.zeros((len(counts), values.size + 1), dtype=np.int64)
    np.cumsum(counts[:, owners[order]], axis=1, out=cum[:, 1:])
    return cum[:, np.searchsorted(-values[order], -thresholds, side="right")]


def _sensitivity_rows(fps: np.ndarray, sens: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`sensitivity_at` on every row of ``fps`` / ``sens`` (R x P, each ``fps`` row non-decreasing)."""
    left = (fps[:, :, None] <= x).sum(axis=1) - 1
    right = np.minimum(left + 1, fps.shape[1] - 1)
    f_left, f_right = np.take_along_axis(fps, left, 1), np.take_along_axis(fps, right, 1)
    s_left, s_right = np.take_along_axis(sens, left, 1), np.take_along_axis(sens, right, 1)
    span = f_right - f_left
    w = np.where(span > 0, (x - f_left) / np.where(span > 0, span, 1.0), 0.0)
    return s_left + w * (s_right - s_left)


def bootstrap_froc(
    data: dict | FrocTable, indices: np.ndarray, counts: np.ndarray | None = None, primary_only: bool = False
) -> dict[str, np.ndarray]:
    """``froc``, ``sens@<rate>`` and ``froc_interpolated`` of every bootstrap replicate (rows of
    ``indices``, R x m), equal float for float to ``froc_metrics(table, indices[r])`` (the interpolated
    value up to summation order).

    With draw counts c (``counts``, R x n; built from ``indices`` when None) every prediction, sorted once,
    stands for c[image] consecutive copies in the walk: the step at which FP / n_images first reaches a
    rate, and the hits at any step, follow from cumulative weighted counts (`_weighted_walk`). Only a tie
    group of different codes with several drawn copies is ordered by draw position in the walk: those
    replicates are recomputed with `froc_metrics` (never with continuous scores).
    """
    table = data if isinstance(data, FrocTable) else prepare(data)
    idx = np.asarray(indices)
    n = len(table)
    counts = check_counts(counts, idx, n)
    owners = np.repeat(np.arange(n, dtype=np.int64), np.diff(table.scores.offsets))
    order = np.argsort(-table.scores.values, kind="stable")  # image order, then the image's own order
    scores, codes, images = table.scores.values[order], table.codes.values[order], owners[order]
    is_fp = (codes == FALSE_POSITIVE).astype(np.int64)
    new = np.maximum(codes, 0)
    n_images = counts.sum(axis=1)
    n_gt = counts @ table.n_gt
    sens = np.empty((len(counts), len(FP_RATES)))
    for rows in row_chunks(len(counts), 3 * max(codes.size, 1)):
        w = counts[rows][:, images]
        steps, fps, hits = np.cumsum(w, axis=1), np.cumsum(w * is_fp, axis=1), np.cumsum(w * new, axis=1)
        for j, r in enumerate(range(rows.start, rows.stop)):
            sens[r] = _weighted_walk(steps[j], fps[j], hits[j], new, int(n_images[r]), int(n_gt[r]))
    for r in np.flatnonzero(_mixed_tie_rows(scores, codes, images, counts)):
        row = froc_metrics(table, idx[r])
        sens[r] = [row[f"sens@{rate:g}"] for rate in FP_RATES]
    out = {"froc": sens.mean(axis=1)}
    if primary_only:
        return out
    out.update({f"sens@{r:g}": sens[:, k] for k, r in enumerate(FP_RATES)})
    out["froc_interpolated"] = _bootstrap_interpolated(table, scores, codes, images, counts)
    return out


class FrocMetric(Metric):
    """Object-CXR FROC: the reference's sequential rule at 0.125 ... 8 false positives per image."""

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
        return bootstrap_froc(self.prepared(prepared), indices, counts, primary_only)
