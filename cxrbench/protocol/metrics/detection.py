"""RSNA box mAP as the reference computed it, the COCO mAP, and the Kaggle RSNA score, from per-image matches.

Primary (``map``, ``map50``, ``map75``): the rules of the `mean-average-precision` package (bes-dev,
``MeanAveragePrecision2d``, ``mpolicy="soft"``, 101 recall thresholds), which the reference evaluation
used: IoU with the "+1 pixel" convention (a box x1..x2 is x2 - x1 + 1 pixels wide), a prediction is a
TP when the unmatched GT box of highest IoU has IoU **>** the threshold, no cap on boxes per image, and
precision at a recall threshold is the maximum precision at any rank whose recall reaches it. Secondary
(``coco_map``, ``coco_map50``, ``coco_map75``): the COCO rules (IoU without +1, >= the threshold, the 100
highest-scoring boxes per image). Ties in score are broken stably: image order, then the head's output
order (the package's pandas sort is not stable beyond 16 predictions, so tied results may differ from it).

Matching (the expensive part) is done once per image; AP over any set of images, including a bootstrap
resample with repeated images, only re-sorts and re-accumulates the stored (score, TP-flag) pairs.
Single class (RSNA opacity). Boxes are x1 y1 x2 y2 in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrbench.errors import CxrbenchError

from .base import Metric
from .ragged import Ragged, check_counts, float_array, json_floats, resolve_indices, row_chunks
from .targets import BOXES

IOU_THRESHOLDS = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)


@dataclass(frozen=True)
class ApRule:
    """How boxes are matched and AP is read: the reference package's rules or COCO's."""

    name: str
    plus_one: bool  # IoU with the +1 pixel convention
    strict: bool  # a match needs IoU > threshold (else >=)
    max_dets: int | None  # only the highest-scoring boxes of an image count (None: all)
    recall_points: np.ndarray
    eps: float  # added to the precision denominator (COCO: np.spacing(1))


# The reference called the package with np.arange(0., 1.01, 0.01) (equal to linspace(0, 1, 101)).
PACKAGE = ApRule("mean-average-precision", True, True, None, np.arange(0.0, 1.01, 0.01), 0.0)
COCO = ApRule("coco", False, False, 100, np.linspace(0.0, 1.0, 101), float(np.spacing(1)))


def as_boxes(x: object, name: str = "boxes") -> np.ndarray:
    """K x 4 float64 array from a tensor/array/list (empty input gives 0 x 4)."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 4))
    if a.ndim != 2 or a.shape[1] != 4 or not np.isfinite(a).all():
        raise CxrbenchError(f"{name} must be a finite K x 4 array (x1 y1 x2 y2), got shape {a.shape}")
    return a


def as_scores(x: object, n: int) -> np.ndarray:
    """Length-n float64 score vector matching n predicted boxes."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1)
    if a.size != n or not np.isfinite(a).all():
        raise CxrbenchError(f"need {n} finite scores (one per predicted box), got {a.size}")
    return a


def box_iou(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU matrix (len(a) x len(b)) of xyxy boxes; 0 if the union is 0.

    ``plus_one=False``: no +1 pixel convention (as pycocotools). ``plus_one=True``: widths and heights
    are x2 - x1 + 1 (as the `mean-average-precision` package), so touching boxes overlap by one pixel.
    """
    one = 1.0 if plus_one else 0.0
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt + one, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_match(iou: np.ndarray, thresholds: Sequence[float], strict: bool = False) -> np.ndarray:
    """TP flags (T x N) of predictions already sorted by descending score, one row per IoU threshold.

    Each prediction in turn takes the still-unmatched GT with the highest IoU if that IoU is >= the
    threshold (``strict``: > the threshold); ties go to the later GT, as in pycocotools; each GT is
    matched at most once. COCO rule with ``strict=False``, the package's "soft" policy with True.
    """
    n, m = iou.shape
    thr = np.asarray(thresholds, dtype=np.float64)
    if not strict:
        thr = np.minimum(thr, 1 - 1e-10)
    tp = np.zeros((len(thr), n), dtype=bool)
    if m == 0:
        return tp
    matched = np.zeros((len(thr), m), dtype=bool)
    rows = np.arange(len(thr))
    for d in range(n):
        cand = np.where(matched, -1.0, iou[d][None, :])
        best = m - 1 - np.argmax(cand[:, ::-1], axis=1)
        value = cand[rows, best]
        hit = value > thr if strict else value >= thr
        tp[hit, d] = True
        matched[rows[hit], best[hit]] = True
    return tp


@dataclass(frozen=True)
class ImageMatches:
    """One image's kept predictions: ``scores`` (N, descending), ``tp`` (T x N bool), ``n_gt`` GT boxes."""

    scores: np.ndarray
    tp: np.ndarray
    n_gt: int


def match_detections(
    pred_boxes: object,
    pred_scores: object,
    gt_boxes: object,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    rule: ApRule = PACKAGE,
) -> ImageMatches:
    """Sort predictions by score (stable), keep the rule's top ``max_dets``, and match them to GT per
    threshold with the rule's IoU convention and comparison."""
    boxes = as_boxes(pred_boxes, "pred_boxes")
    scores = as_scores(pred_scores, len(boxes))
    gt = as_boxes(gt_boxes, "gt_boxes")
    order = np.argsort(-scores, kind="mergesort")[: rule.max_dets]
    tp = greedy_match(box_iou(boxes[order], gt, rule.plus_one), iou_thresholds, rule.strict)
    return ImageMatches(scores[order], tp, len(gt))


@dataclass(frozen=True)
class MatchTable:
    """All images' matches stored flat; ``tp_mask`` bit t is set when the prediction is a TP at threshold t."""

    scores: Ragged
    tp_mask: Ragged
    n_gt: np.ndarray
    n_thresholds: int

    @classmethod
    def from_matches(
        cls, matches: Sequence[ImageMatches], n_thresholds: int = len(IOU_THRESHOLDS)
    ) -> MatchTable:
        """Flatten per-image matches (all must use the same thresholds)."""
        if any(m.tp.shape[0] != n_thresholds for m in matches):
            raise CxrbenchError(f"every image's matches must have {n_thresholds} IoU thresholds")
        bits = np.arange(n_thresholds, dtype=np.int64)[:, None]
        masks = [(m.tp.astype(np.int64) << bits).sum(axis=0) for m in matches]
        n_gt = np.array([m.n_gt for m in matches], dtype=np.int64)
        return cls(
            Ragged.from_list([m.scores for m in matches], np.float64),
            Ragged.from_list(masks, np.int64),
            n_gt,
            n_thresholds,
        )

    def __len__(self) -> int:
        return len(self.n_gt)


def _ap_from_flags(scores: np.ndarray, tp: np.ndarray, n_gt: int, rule: ApRule = PACKAGE) -> np.ndarray:
    """AP per threshold from pooled predictions (the package's, or pycocotools ``accumulate`` for COCO).

    Predictions of all images are sorted by score (stable); recall = cumTP / n_gt, precision =
    cumTP / (cumTP + cumFP + eps); the precision read at each of the 101 recall points is the maximum
    precision at any rank whose recall reaches it (0 if never reached), i.e. the envelope at the first
    such rank; AP is the mean of those 101 values. NaN when there is no GT box (the package would give
    0), 0 with GT but no TP. Only TP ranks are evaluated: each recall point is first reached at a TP
    rank (recall 0 at rank 0, whose envelope equals the first TP's), and precision only rises at TPs,
    so the envelope's maxima lie there too; the values are identical float for float.
    """
    if n_gt == 0:
        return np.full(tp.shape[0], np.nan)
    tp = tp[:, np.argsort(-scores, kind="mergesort")]
    ap = np.zeros(tp.shape[0])
    for i, row in enumerate(tp):
        ranks = np.flatnonzero(row)
        if ranks.size == 0:
            continue
        n_tp = np.arange(1, ranks.size + 1, dtype=np.float64)
        envelope = np.maximum.accumulate((n_tp / (ranks + 1 + rule.eps))[::-1])[::-1]
        first = np.searchsorted(n_tp / n_gt, rule.recall_points, side="left")
        ap[i] = np.where(first < ranks.size, envelope[np.minimum(first, ranks.size - 1)], 0.0).mean()
    return ap


def average_precision(
    matches: Sequence[ImageMatches] | MatchTable,
    indices: Sequence[int] | np.ndarray | None = None,
    rule: ApRule = PACKAGE,
) -> np.ndarray:
    """AP (101 recall points) per IoU threshold (T,) over the chosen images; NaN if no GT at all.
    ``rule`` must be the rule the matches were made with."""
    table = matches if isinstance(matches, MatchTable) else MatchTable.from_matches(matches, _n_thr(matches))
    idx = resolve_indices(indices, len(table))
    bits = np.arange(table.n_thresholds, dtype=np.int64)[:, None]
    tp = ((table.tp_mask.take(idx)[None, :] >> bits) & 1).astype(bool)
    return _ap_from_flags(table.scores.take(idx), tp, int(table.n_gt[idx].sum()), rule)


def _n_thr(matches: Sequence[ImageMatches]) -> int:
    return matches[0].tp.shape[0] if len(matches) else len(IOU_THRESHOLDS)


def _summarise_ap(ap: np.ndarray, prefix: str = "", iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict:
    """``<prefix>map`` = mean AP over the IoU thresholds, ``<prefix>map50`` / ``<prefix>map75`` at 0.5 / 0.75
    (``ap`` is T or R x T)."""
    thr = np.asarray(iou_thresholds)
    if ap.shape[-1] != thr.size:
        raise CxrbenchError(f"matches have {ap.shape[-1]} IoU thresholds, expected {thr.size}")
    out = {f"{prefix}map": ap.mean(axis=-1)}
    for key, v in (("map50", 0.5), ("map75", 0.75)):
        at = np.flatnonzero(np.isclose(thr, v))
        out[f"{prefix}{key}"] = ap[..., at[0]] if at.size else np.full(ap.shape[:-1], np.nan)
    return out


def detection_metrics(
    matches: Sequence[ImageMatches] | MatchTable,
    indices: Sequence[int] | np.ndarray | None = None,
    rule: ApRule = PACKAGE,
    prefix: str = "",
) -> dict[str, float]:
    """``map`` = mean AP over the IoU thresholds (0.40:0.05:0.75), ``map50`` / ``map75`` = AP at 0.5 / 0.75
    (keys prefixed with ``prefix``)."""
    return {k: float(v) for k, v in _summarise_ap(average_precision(matches, indices, rule), prefix).items()}


def kaggle_rsna_score(
    pred_boxes: object,
    pred_scores: object,
    gt_boxes: object,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> float:
    """Kaggle RSNA Pneumonia score of one image: mean over IoU thresholds of TP / (TP + FP + FN).

    Every box the head outputs counts (the head already kept only boxes scoring >= its own 0.2
    threshold; there is no other cut). Boxes are matched in descending confidence with the COCO greedy
    rule (IoU >= threshold). An image with no GT and no box is not scored (NaN, left out of the mean);
    no GT but some box scores 0; GT but no box scores 0.
    """
    boxes = as_boxes(pred_boxes, "pred_boxes")
    scores = as_scores(pred_scores, len(boxes))
    gt = as_boxes(gt_boxes, "gt_boxes")
    if len(gt) == 0 and len(boxes) == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    tp = greedy_match(box_iou(boxes[order], gt), iou_thresholds).sum(axis=1)
    return float(np.mean(tp / (len(boxes) + len(gt) - tp)))


def kaggle_map(
    per_image: Sequence[float | None] | np.ndarray, indices: Sequence[int] | np.ndarray | None = None
) -> float:
    """Dataset Kaggle score: mean of the chosen images' scores, skipping unscored (NaN/None) images."""
    values = float_array(per_image) if not isinstance(per_image, np.ndarray) else per_image
    chosen = values[resolve_indices(indices, len(values))]
    chosen = chosen[np.isfinite(chosen)]
    return float(chosen.mean()) if chosen.size else float("nan")


@dataclass(frozen=True)
class DetectionTable:
    """Prepared detection statistics: flat matches under the package's and COCO's rules, and per-image
    Kaggle scores (NaN = not scored)."""

    matches: MatchTable
    coco: MatchTable
    kaggle: np.ndarray


def _bitmasks(tp: np.ndarray) -> list[int]:
    bits = np.arange(tp.shape[0], dtype=np.int64)[:, None]
    return (tp.astype(np.int64) << bits).sum(axis=0).tolist()


def per_image_stats(
    predictions: Sequence[tuple[object, object]], targets: Sequence[object]
) -> dict[str, list]:
    """JSON-ready per-image statistics: ``scores`` of all predictions (descending, stable), ``tp_mask``
    bitmasks under the package's rules, ``coco_tp_mask`` under COCO's (for the first 100 of ``scores``),
    ``n_gt``, and ``map`` (the per-image Kaggle score, None when not scored)."""
    if len(predictions) != len(targets):
        raise CxrbenchError(f"{len(predictions)} predictions for {len(targets)} targets")
    out: dict[str, list] = {"scores": [], "tp_mask": [], "coco_tp_mask": [], "n_gt": [], "map": []}
    for (b, s), g in zip(predictions, targets, strict=True):
        ref = match_detections(b, s, g, rule=PACKAGE)
        coco = match_detections(b, s, g, rule=COCO)
        out["scores"].append(ref.scores.tolist())
        out["tp_mask"].append(_bitmasks(ref.tp))
        out["coco_tp_mask"].append(_bitmasks(coco.tp))
        out["n_gt"].append(ref.n_gt)
        out["map"].append(kaggle_rsna_score(b, s, g))
    out["map"] = json_floats(np.array(out["map"], dtype=np.float64))
    return out


def prepare(per_image: dict) -> DetectionTable:
    """Arrays from the JSON form, once, so that many bootstrap aggregations stay cheap."""
    scores = Ragged.from_list(per_image["scores"], np.float64)
    masks = Ragged.from_list(per_image["tp_mask"], np.int64)
    coco_masks = Ragged.from_list(per_image["coco_tp_mask"], np.int64)
    n_gt = np.asarray(per_image["n_gt"], dtype=np.int64).reshape(-1)
    kaggle = float_array(per_image["map"])
    kept = np.diff(coco_masks.offsets)
    if (
        not np.array_equal(scores.offsets, masks.offsets)
        or len(n_gt) != len(scores)
        or len(coco_masks) != len(scores)
        or len(kaggle) != len(scores)
        or (kept > np.diff(scores.offsets)).any()
    ):
        raise CxrbenchError("detection per-image statistics disagree in length")
    coco_scores = Ragged(scores.take_prefix(kept), coco_masks.offsets)
    n_thr = len(IOU_THRESHOLDS)
    return DetectionTable(
        MatchTable(scores, masks, n_gt, n_thr), MatchTable(coco_scores, coco_masks, n_gt, n_thr), kaggle
    )


def aggregate(
    data: dict | DetectionTable, indices: Sequence[int] | np.ndarray | None = None
) -> dict[str, float]:
    """``map``, ``map50``, ``map75`` (package rules), ``coco_map``, ``coco_map50``, ``coco_map75`` and
    ``kaggle_map`` over the chosen images."""
    table = data if isinstance(data, DetectionTable) else prepare(data)
    out = detection_metrics(table.matches, indices, PACKAGE)
    out.update(detection_metrics(table.coco, indices, COCO, prefix="coco_"))
    out["kaggle_map"] = kaggle_map(table.kaggle, indices)
    return out


def _recall_steps(n_gt: int, rule: ApRule) -> np.ndarray:
    """For each of the 101 recall points, the fewest TPs j with ``j / n_gt`` >= the point (float for float
    as in `_ap_from_flags`, which compares ``n_tp / n_gt``)."""
    return np.searchsorted(np.arange(n_gt + 1, dtype=np.float64) / n_gt, rule.recall_points, side="left")


def _mixed_tie_rows(scores: np.ndarray, tp: np.ndarray, images: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Replicates (bool, R) whose AP depends on the order of tied predictions, so the weighted sum is not
    enough: a group of equal scores holding a TP and an FP at some threshold, both drawn, with more than
    one drawn copy of an image in the group (the stable sort then interleaves copies by draw position)."""
    flagged = np.zeros(counts.shape[0], dtype=bool)
    if scores.size < 2:
        return flagged
    starts = np.flatnonzero(np.concatenate([[True], scores[1:] != scores[:-1]]))
    ends = np.append(starts[1:], scores.size)
    tied = ends - starts > 1
    for a, b in zip(starts[tied], ends[tied], strict=True):
        group = tp[:, a:b]
        mixed = group.any(axis=1) & ~group.all(axis=1)
        if not mixed.any():
            continue
        c = counts[:, images[a:b]]
        copies = counts[:, np.unique(images[a:b])].sum(axis=1)
        drawn_tp = (c @ group[mixed].T.astype(np.int64)) > 0
        drawn_fp = (c @ (~group[mixed]).T.astype(np.int64)) > 0
        flagged |= (copies > 1) & (drawn_tp & drawn_fp).any(axis=1)
    return flagged


def bootstrap_average_precision(
    table: MatchTable, indices: np.ndarray, counts: np.ndarray | None = None, rule: ApRule = PACKAGE
) -> np.ndarray:
    """AP per IoU threshold (R x T) of every bootstrap replicate (rows of ``indices``, R x m), equal float
    for float to ``average_precision(table, indices[r], rule)`` for each row r.

    A replicate is a multiset of images, i.e. draw counts c (``counts``, R x n; built from ``indices`` when
    None). Pooling c copies of each image and sorting by score equals sorting every prediction once and
    giving it the weight c[image]: cumTP and cumFP become weighted cumulative sums and n_gt = sum(c * n_gt).
    The copies of a prediction are tied, hence adjacent, so a run of w copies of a TP (or of several tied
    TPs) only adds intermediate ranks inside a run of consecutive TPs; precision rises along such a run, so
    every rank in it has the envelope of the run's last rank, and a recall point first reached inside it
    reads that value. Evaluating at the weighted TP ranks (weight-0 predictions drop out) therefore gives
    the same 101 values. The one exception is a tie group holding TPs and FPs with several drawn copies,
    whose order then follows the draw positions: those replicates are recomputed with
    `average_precision` (rare; never with continuous scores).
    """
    idx = np.asarray(indices)
    n = len(table)
    counts = check_counts(counts, idx, n)
    order = np.argsort(-table.scores.values, kind="mergesort")  # the stable pooled order of _ap_from_flags
    lengths = np.diff(table.scores.offsets)
    images = np.repeat(np.arange(n, dtype=np.int64), lengths)[order]
    bits = np.arange(table.n_thresholds, dtype=np.int64)[:, None]
    tp = ((table.tp_mask.values[order][None, :] >> bits) & 1).astype(bool)  # T x D
    n_gt = counts @ table.n_gt
    cols = np.flatnonzero(tp.any(axis=0))  # ranks that are a TP at some threshold
    ap = np.zeros((counts.shape[0], table.n_thresholds))
    steps = {int(g): _recall_steps(int(g), rule) for g in np.unique(n_gt) if g > 0}
    # replicates along the last axis (contiguous), so gathers, cumulative sums and the envelope run over
    # whole rows; int32 halves the memory traffic (counts of drawn predictions stay far below 2**31)
    for rows in row_chunks(counts.shape[0], images.size):
        c = np.ascontiguousarray(counts[rows].T, dtype=np.int32)  # n x r
        if cols.size:  # predictions drawn up to each TP rank
            drawn_before = np.cumsum(c[images[: cols[-1] + 1]], axis=0, dtype=np.int32)[cols]
        else:  # no TP at any threshold: every AP is 0 (or NaN without GT)
            drawn_before = np.zeros((0, c.shape[1]), dtype=np.int32)
        weights = c[images[cols]]  # K x r
        need = np.stack([steps.get(int(g), np.zeros(rule.recall_points.size, np.int64)) for g in n_gt[rows]])
        for t in range(table.n_thresholds):
            at = tp[t, cols]
            n_tp = np.cumsum(weights[at], axis=0, dtype=np.int32)
            ranks = drawn_before[at]  # == rank + 1 of _ap_from_flags at the run's last TP
            # a weight-0 TP repeats the previous TP count at a rank as late or later: its precision
            # (0 before any TP) is never above the envelope there, nor ever read (no recall step)
            precision = n_tp / (np.maximum(ranks, 1) + rule.eps)  # ranks 0: weight-0 TPs, n_tp 0
            envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
            ap[rows, t] = _read_recall_points(n_tp, envelope, need)
    ap[n_gt == 0] = np.nan
    redo = np.flatnonzero(_mixed_tie_rows(table.scores.values[order], tp, images, counts) & (n_gt > 0))
    for r in redo:
        ap[r] = average_precision(table, idx[r], rule)
    return ap


def _read_recall_points(n_tp: np.ndarray, envelope: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Mean over the recall points of the envelope at the first rank whose cumulative TP count reaches
    ``need`` (r x 101; 0 where never reached); ``n_tp`` and ``envelope`` are K x r, one column per
    replicate. A plain search per replicate beats one flattened search over offset rows."""
    k, rows = n_tp.shape
    if k == 0:
        return np.zeros(rows)
    first = np.empty(need.shape, dtype=np.int64)
    by_row = np.ascontiguousarray(n_tp.T)
    for r in range(rows):
        first[r] = np.searchsorted(by_row[r], need[r], side="left")
    picked = envelope[np.minimum(first, k - 1), np.arange(rows)[:, None]]
    return np.where(first < k, picked, 0.0).mean(axis=1)


def bootstrap_metrics(
    data: dict | DetectionTable,
    indices: np.ndarray,
    counts: np.ndarray | None = None,
    primary_only: bool = False,
) -> dict[str, np.ndarray]:
    """``map``, ``map50``, ``map75`` and the ``coco_`` values (equal float for float to `aggregate` on each
    row of ``indices``) and ``kaggle_map`` (the weighted mean of the per-image scores: equal up to
    summation order) per replicate; only ``map`` when ``primary_only``."""
    table = data if isinstance(data, DetectionTable) else prepare(data)
    counts = check_counts(counts, indices, len(table.kaggle))
    out = _summarise_ap(bootstrap_average_precision(table.matches, indices, counts, PACKAGE))
    if primary_only:
        return {"map": out["map"]}
    out.update(_summarise_ap(bootstrap_average_precision(table.coco, indices, counts, COCO), prefix="coco_"))
    scored = np.isfinite(table.kaggle)
    n_scored = counts @ scored.astype(np.int64)
    total = counts @ np.where(scored, table.kaggle, 0.0)
    out["kaggle_map"] = np.where(n_scored > 0, total / np.maximum(n_scored, 1), np.nan)
    return out


class MapMetric(Metric):
    """RSNA box mAP as the reference computed it (the `mean-average-precision` package's rules), averaged
    over IoU 0.40:0.05:0.75, plus AP@0.5, AP@0.75, the COCO values and the Kaggle score."""

    name = "map"
    display_name = "mAP"
    target = BOXES

    def per_image_stats(self, predictions: object, targets: object) -> dict:
        return per_image_stats(predictions, targets)

    def prepare(self, per_image: dict) -> DetectionTable:
        return prepare(per_image)

    def is_prepared(self, data: object) -> bool:
        return isinstance(data, DetectionTable)

    def aggregate(self, data: object, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
        return aggregate(data, indices)

    def bootstrap(
        self,
        prepared: object,
        indices: np.ndarray,
        counts: np.ndarray | None = None,
        primary_only: bool = False,
    ) -> dict[str, np.ndarray]:
        return bootstrap_metrics(self.prepared(prepared), indices, counts, primary_only)
