"""Metrics: hand-computed cases, agreement with the reference package and torchmetrics, brute-force
references, resampling."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from cxrbench.errors import CxrbenchError
from cxrbench.protocol import metrics as M
from cxrbench.protocol.metrics import detection as D
from cxrbench.protocol.metrics import dice as S
from cxrbench.protocol.metrics import froc as F

THR = list(D.IOU_THRESHOLDS)


def box(x1, y1, x2, y2):
    return np.array([[x1, y1, x2, y2]], dtype=np.float32)


def boxes(*rows):
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


def random_detection_case(seed: int, n_images: int = 30):
    """GT boxes, jittered copies of them as good predictions, plus random false positives."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n_images):
        xy = rng.uniform(0, 200, (rng.integers(0, 4), 2))
        wh = rng.uniform(10, 80, xy.shape)
        gt = np.concatenate([xy, xy + wh], axis=1)
        xy2 = rng.uniform(0, 200, (rng.integers(0, 6), 2))
        extra = np.concatenate([xy2, xy2 + rng.uniform(10, 80, xy2.shape)], axis=1)
        b = np.concatenate([gt + rng.normal(0, 6, gt.shape), extra])
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        preds.append((b.astype(np.float32), rng.uniform(0, 1, len(b)).astype(np.float32)))
        gts.append(gt.astype(np.float32))
    return preds, gts


# ---------------------------------------------------------------- Dice


def test_binarize_logits_is_sigmoid_half():
    logits = torch.tensor([-1.0, -1e-3, 0.0, 2.0])
    assert S.binarize_logits(logits).tolist() == (torch.sigmoid(logits) >= 0.5).tolist()
    # exact at the boundary, where a float32 sigmoid already rounds to 0.5
    tiny = np.array([-1e-7, 1e-7], dtype=np.float32)
    assert S.binarize_logits(tiny).tolist() == [False, True]


def test_dice_known_overlap_and_empty_convention():
    pred = np.zeros((3, 1, 4, 4), bool)
    gt = np.zeros((3, 1, 4, 4), bool)
    pred[0, 0, 0, :4] = True  # 4 px
    gt[0, 0, 0, 1:4] = True
    gt[0, 0, 1, :3] = True  # 6 px, intersection 3 -> 0.6
    pred[2, 0, 3, :] = True  # image 2: empty GT, 4 predicted px -> 0
    stats = S.segmentation_stats(pred, gt)
    assert stats["intersection"].tolist() == [[3], [0], [0]]
    assert stats["pred_sum"].tolist() == [[4], [0], [4]]
    assert stats["gt_sum"].tolist() == [[6], [0], [0]]
    # images 1 and 2 have no GT: no per-image Dice (an empty prediction of an empty image is not perfect)
    np.testing.assert_array_equal(S.per_image_dice(stats), [0.6, np.nan, np.nan])
    out = S.aggregate_dice(stats)
    assert out["dice"] == pytest.approx(6 / 14) and out["dice_0"] == out["dice"]
    assert out["dice_per_image"] == pytest.approx(0.6)  # over the positive image only
    assert S.aggregate_dice(stats, [1, 1])["dice"] == 1.0  # both sums 0 -> 1
    assert np.isnan(S.aggregate_dice(stats, [1, 2])["dice_per_image"])  # no positive image
    assert S.aggregate_dice(stats, [0, 1, 0])["dice_per_image"] == pytest.approx(0.6)


def test_dice_multiclass_mean_and_torch_matches_numpy():
    gt = np.zeros((2, 2, 4, 4), bool)
    gt[:, 0, :2] = True
    gt[:, 1, :, :2] = True
    pred = gt.copy()
    pred[:, 1, :, 1] = False  # class 1: I = 4, P = 4, G = 8 -> 2/3 per image and micro
    out = S.aggregate_dice(S.segmentation_stats(pred, gt))
    assert out["dice_0"] == 1.0 and out["dice_1"] == pytest.approx(2 / 3)
    assert out["dice"] == pytest.approx(5 / 6) and out["dice_per_image"] == pytest.approx(5 / 6)
    # a class counts only over the images where it is present: class 1 absent from image 1
    gt[1, 1], pred[1, 1] = False, False
    stats = S.segmentation_stats(pred, gt)
    np.testing.assert_allclose(S.per_image_dice(stats), [5 / 6, 1.0])
    assert S.aggregate_dice(stats)["dice_per_image"] == pytest.approx((1.0 + 2 / 3) / 2)
    t = S.segmentation_stats(torch.from_numpy(pred), torch.from_numpy(gt).to(torch.uint8))
    n = S.segmentation_stats(pred, gt)
    assert all(np.array_equal(t[k], n[k]) and t[k].dtype == np.int64 for k in S.STAT_KEYS)


def test_dice_rejects_float_and_mismatched_masks():
    with pytest.raises(CxrbenchError, match="binarize_logits"):
        S.segmentation_stats(torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(CxrbenchError, match="differs"):
        S.segmentation_stats(np.zeros((1, 1, 4, 4), bool), np.zeros((1, 1, 4, 5), bool))
    with pytest.raises(CxrbenchError, match="0 and 1"):
        S.segmentation_stats(np.full((1, 4, 4), 2), np.zeros((1, 4, 4), bool))


# ---------------------------------------------------------------- mAP (package rules) and COCO AP


def test_ap_perfect_and_no_gt():
    gts = [box(0, 0, 10, 10), boxes(), box(5, 5, 50, 60)]
    preds = [(g, np.ones(len(g))) for g in gts]
    out = M.aggregate("map", M.per_image_stats("map", preds, gts))
    assert out == {
        k: 1.0 for k in ("map", "map50", "map75", "coco_map", "coco_map50", "coco_map75", "kaggle_map")
    }
    # no GT box at all: undefined (the package returns 0 there; the only place we differ from it)
    no_gt = D.average_precision([D.match_detections(box(0, 0, 1, 1), [0.9], boxes())])
    assert np.isnan(no_gt).all()
    assert package_map([(box(0, 0, 1, 1), np.array([0.9]))], [boxes()])[0] == 0.0


def test_ap_hand_computed_ranks():
    gt = box(0, 0, 10, 10)
    tp, fp = box(0, 0, 10, 10), box(50, 50, 60, 60)
    # FP ranked above the only TP: precision 1/2 at recall 1 for all 101 recall points
    m = D.match_detections(np.concatenate([fp, tp]), [0.9, 0.8], gt)
    assert D.average_precision([m]) == pytest.approx(np.full(8, 0.5))
    # TP ranked first: the later FP does not lower the envelope
    assert D.average_precision(
        [D.match_detections(np.concatenate([fp, tp]), [0.1, 0.8], gt)]
    ) == pytest.approx(1.0)
    # two GT: TP 0.9, FP 0.8, TP 0.7 -> precision envelope 1 up to recall .5 (51 points), 2/3 after (50)
    gts = np.concatenate([gt, box(100, 100, 120, 120)])
    preds = np.concatenate([tp, fp, box(100, 100, 120, 120)])
    ap = D.average_precision([D.match_detections(preds, [0.9, 0.8, 0.7], gts)])
    assert ap == pytest.approx(np.full(8, (51 + 50 * 2 / 3) / 101))


def test_ap_iou_thresholds_and_kaggle_partial_overlap():
    gt, pred = box(0, 0, 10, 10), box(0, 0, 10, 6)  # IoU 0.6: TP at 0.40..0.60, FP above
    m = D.match_detections(pred, [0.9], gt, rule=D.COCO)
    assert m.tp[:, 0].tolist() == [True] * 5 + [False] * 3
    out = D.detection_metrics([m])
    assert out == pytest.approx({"map": 5 / 8, "map50": 1.0, "map75": 0.0})
    assert D.kaggle_rsna_score(pred, [0.9], gt) == pytest.approx(5 / 8)


def test_package_rule_counts_pixels_inclusively_and_needs_iou_above_the_threshold():
    gt, pred = box(0, 0, 9, 9), box(0, 0, 4, 9)  # +1 convention: 5 x 10 of 10 x 10 px, IoU exactly 0.5
    assert D.box_iou(pred, gt, plus_one=True)[0, 0] == 0.5
    assert D.box_iou(pred, gt)[0, 0] == pytest.approx(4 / 9)  # COCO: 4 x 9 of 9 x 9
    package = D.match_detections(pred, [0.9], gt, rule=D.PACKAGE).tp[:, 0]
    coco = D.match_detections(pred, [0.9], gt, rule=D.COCO).tp[:, 0]
    assert package.tolist() == [True, True] + [False] * 6  # 0.5 > 0.45, not > 0.5
    assert coco.tolist() == [True] + [False] * 7
    assert D.box_iou(box(0, 0, 4, 4), box(5, 0, 9, 4), plus_one=True)[0, 0] == 0.0  # adjacent, no overlap
    assert D.box_iou(box(0, 0, 4, 4), box(4, 0, 8, 4), plus_one=True)[0, 0] == pytest.approx(5 / 45)


def test_ap_keeps_100_highest_scores_per_image():
    gt = box(0, 0, 10, 10)
    preds = np.concatenate([np.tile(box(50, 50, 60, 60), (100, 1)), gt])
    scores = np.concatenate([np.linspace(1.0, 0.5, 100), [0.1]])
    coco = D.average_precision([D.match_detections(preds, scores, gt, rule=D.COCO)], rule=D.COCO)
    assert coco == pytest.approx(0.0)  # COCO counts only 100 boxes per image
    assert D.average_precision([D.match_detections(preds, scores, gt)])[0] > 0  # the package counts all


def test_each_gt_matched_once_best_iou_then_later_gt_on_ties():
    gts = boxes([0, 0, 10, 10], [0, 0, 10, 8])
    preds = boxes([0, 0, 10, 9], [0, 0, 10, 9])  # IoU .9 with GT 0, .89 with GT 1
    m = D.match_detections(preds, [0.9, 0.8], gts, rule=D.COCO)
    assert m.tp.all()  # the first takes GT 0, the second GT 1, at every threshold
    single = D.match_detections(preds, [0.9, 0.8], gts[:1], rule=D.COCO)
    assert single.tp[:, 0].all() and not single.tp[:, 1].any()
    # equal IoU 90/110 with both GT: pycocotools gives the later GT, leaving GT 0 (IoU .54) to the second
    gts = boxes([0, 0, 10, 10], [2, 0, 12, 10])
    m = D.match_detections(boxes([1, 0, 11, 10], [3, 0, 13, 10]), [0.9, 0.8], gts, rule=D.COCO)
    assert m.tp[:, 0].all() and m.tp[:, 1].tolist() == [True] * 3 + [False] * 5
    preds = [(boxes([1, 0, 11, 10], [3, 0, 13, 10]), np.array([0.9, 0.8], np.float32))]
    coco = D.detection_metrics([m], rule=D.COCO)["map"]
    assert coco == pytest.approx(torchmetrics_map(preds, [gts])["map"], abs=1e-6)
    # with +1 pixels both IoUs are 110/132 again, and the second box's IoU 88/154 passes 0.40..0.55
    m = D.match_detections(preds[0][0], preds[0][1], gts)
    assert m.tp[:, 0].all() and m.tp[:, 1].tolist() == [True] * 4 + [False] * 4
    assert D.detection_metrics([m])["map"] == pytest.approx(package_map(preds, [gts])[0], abs=1e-6)


def torchmetrics_map(preds, gts) -> dict[str, float]:
    from torchmetrics.detection import MeanAveragePrecision

    # torchmetrics' default recall points are float32 (torch.linspace); pycocotools' are float64
    tm = MeanAveragePrecision(
        iou_thresholds=THR, box_format="xyxy", rec_thresholds=np.linspace(0, 1, 101).tolist()
    )
    tm.update(
        [
            {
                "boxes": torch.from_numpy(b),
                "scores": torch.from_numpy(s),
                "labels": torch.zeros(len(b), dtype=torch.long),
            }
            for b, s in preds
        ],
        [{"boxes": torch.from_numpy(g), "labels": torch.zeros(len(g), dtype=torch.long)} for g in gts],
    )
    return {k: float(v) for k, v in tm.compute().items() if v.numel() == 1}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_coco_map_matches_torchmetrics(seed):
    preds, gts = random_detection_case(seed)
    ref = torchmetrics_map(preds, gts)
    ours = M.aggregate("map", M.per_image_stats("map", preds, gts))
    assert ours["coco_map"] == pytest.approx(ref["map"], abs=1e-6)
    assert ours["coco_map50"] == pytest.approx(ref["map_50"], abs=1e-6)
    assert ours["coco_map75"] == pytest.approx(ref["map_75"], abs=1e-6)
    assert 0.05 < ours["coco_map"] < 0.95  # the case is not degenerate


def package_map(preds, gts) -> tuple[float, list[float]]:
    """mAP and AP per IoU threshold from the `mean-average-precision` package, called as the reference
    evaluation called it (``MeanAveragePrecision2d``, soft matching, recall thresholds 0:0.01:1)."""
    mean_average_precision = pytest.importorskip("mean_average_precision")
    metric = mean_average_precision.MeanAveragePrecision2d(num_classes=1)
    for (b, s), g in zip(preds, gts, strict=True):
        pred = np.zeros((len(b), 6))  # x1 y1 x2 y2 class confidence
        pred[:, :4], pred[:, 5] = b, s
        gt = np.zeros((len(g), 7))  # x1 y1 x2 y2 class difficult crowd
        gt[:, :4] = g
        metric.add(pred, gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' warnings about the package's empty frames
        out = metric.value(iou_thresholds=THR, recall_thresholds=np.arange(0.0, 1.01, 0.01), mpolicy="soft")
    return float(out["mAP"]), [float(out[t][0]["ap"]) for t in THR]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_map_equals_the_reference_package_at_every_threshold(seed):
    preds, gts = random_detection_case(seed, n_images=30 + 5 * seed)
    ref_map, ref_ap = package_map(preds, gts)
    table = D.MatchTable.from_matches([D.match_detections(b, s, g) for (b, s), g in zip(preds, gts)])
    ours = D.average_precision(table)
    np.testing.assert_allclose(ours, ref_ap, rtol=0, atol=1e-6)  # the package keeps float32
    out = M.aggregate("map", M.per_image_stats("map", preds, gts))
    assert out["map"] == pytest.approx(ref_map, abs=1e-6)
    assert (out["map50"], out["map75"]) == pytest.approx((ref_ap[2], ref_ap[7]), abs=1e-6)
    assert 0.05 < out["map"] < 0.95 and len(set(np.round(ref_ap, 6))) > 4  # not degenerate


@pytest.mark.parametrize("seed", range(8))
def test_map_equals_the_reference_package_on_tied_scores(seed):
    """Scores on 3 levels, ties within and across images. At most 16 predictions in all: the package's
    pandas sort is stable there (beyond, its order of tied boxes is not defined); ours is stable."""
    rng = np.random.default_rng(100 + seed)
    preds, gts = random_detection_case(seed, n_images=6)
    while sum(len(b) for b, _ in preds) > 16:
        preds, gts = preds[:-1], gts[:-1]
    preds = [(b, (rng.integers(1, 4, len(b)) / 4).astype(np.float32)) for b, _ in preds]
    assert len({float(x) for _, s in preds for x in s}) < sum(len(s) for _, s in preds)  # ties
    ref_map, ref_ap = package_map(preds, gts)
    out = M.aggregate("map", M.per_image_stats("map", preds, gts))
    table = D.MatchTable.from_matches([D.match_detections(b, s, g) for (b, s), g in zip(preds, gts)])
    if sum(len(g) for g in gts):
        np.testing.assert_allclose(D.average_precision(table), ref_ap, rtol=0, atol=1e-6)
        assert out["map"] == pytest.approx(ref_map, abs=1e-6)


# ---------------------------------------------------------------- Kaggle RSNA


def brute_kaggle(pred_boxes, scores, gt_boxes, min_score=0.0):
    """Literal reading of the Kaggle rule with Python loops (every box the head outputs counts)."""

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union

    kept = sorted(
        [(float(s), list(map(float, b))) for b, s in zip(pred_boxes, scores) if s >= min_score],
        key=lambda x: -x[0],
    )
    gts = [list(map(float, g)) for g in gt_boxes]
    if not kept and not gts:
        return None
    values = []
    for t in THR:
        used, tp = set(), 0
        for _, p in kept:
            cands = [(iou(p, g), j) for j, g in enumerate(gts) if j not in used and iou(p, g) >= t]
            if cands:
                used.add(max(cands)[1])
                tp += 1
        values.append(tp / (tp + (len(kept) - tp) + (len(gts) - tp)))
    return sum(values) / len(values)


def test_kaggle_conventions():
    gt, far = box(0, 0, 10, 10), box(50, 50, 60, 60)
    assert np.isnan(D.kaggle_rsna_score(boxes(), [], boxes()))
    assert D.kaggle_rsna_score(far, [0.2], boxes()) == 0.0  # a low score still counts: no extra cut
    assert D.kaggle_rsna_score(np.concatenate([gt, far]), [0.3, 0.25], gt) == pytest.approx(0.5)
    assert D.kaggle_rsna_score(far, [0.9], boxes()) == 0.0
    assert D.kaggle_rsna_score(boxes(), [], gt) == 0.0
    assert D.kaggle_rsna_score(np.concatenate([gt, far]), [0.9, 0.8], gt) == pytest.approx(0.5)
    assert D.kaggle_map([0.5, None, 1.0]) == pytest.approx(0.75)
    assert np.isnan(D.kaggle_map([None]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kaggle_matches_brute_force(seed):
    preds, gts = random_detection_case(seed, n_images=40)
    pi = M.per_image_stats("map", preds, gts)
    ref = [brute_kaggle(b, s, g) for (b, s), g in zip(preds, gts)]
    assert pi["map"] == pytest.approx(ref, abs=1e-12)
    counted = [r for r in ref if r is not None]
    assert M.aggregate("map", pi)["kaggle_map"] == pytest.approx(sum(counted) / len(counted), abs=1e-12)


# ---------------------------------------------------------------- FROC


def _froc_example(extra_hit: bool) -> tuple[list, list]:
    g1, g2 = [0, 0, 10, 10], [20, 20, 40, 40]
    a_preds = boxes([2, 2, 6, 6], [50, 50, 60, 60], [-20, -20, 30, 30], [25, 25, 70, 70])
    # centres: (4,4) in g1; (55,55) FP; (5,5) in g1 again (neither); (47.5,47.5) FP - overlaps g2 but centre outside
    a_scores = [0.9, 0.8, 0.7, 0.6]
    if extra_hit:  # (30,30): hits g2
        a_preds, a_scores = np.concatenate([a_preds, boxes([21, 21, 39, 39])]), [*a_scores, 0.65]
    # image B has no GT, so its box at (21..39) is an FP although it would cover g2 of image A
    b_preds = boxes([21, 21, 39, 39], [100, 100, 110, 110])
    return [(a_preds, a_scores), (b_preds, [0.4, 0.95])], [boxes(g1, g2), boxes()]


def test_froc_hand_computed():
    out = M.aggregate("froc", M.per_image_stats("froc", *_froc_example(False)))
    # walk (2 images, 2 GT), FP / 2 after each prediction, one rate recorded per prediction at most:
    # .95 FP (0.5 >= .125: 0) | .9 hit g1 (0.5 >= .25: 1/2) | .8 FP (1 >= .5: 1/2) | .7 neither (1 >= 1: 1/2)
    # | .6 FP (1.5) | .4 FP (2 >= 2: 1/2); 4 and 8 never reached: repeat 1/2
    assert [out[f"sens@{r:g}"] for r in F.FP_RATES] == [0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert out["froc"] == pytest.approx(3 / 7)
    # the interpolated curve: thresholds .95:(FP .5, 0) .9:(.5,.5) .8:(1,.5) .7:(1,.5) .6:(1.5,.5) .4:(2,.5)
    assert out["froc_interpolated"] == pytest.approx(2.5 / 7)
    out = M.aggregate("froc", M.per_image_stats("froc", *_froc_example(True)))
    # now .65 hits g2 before the FP at .6: recorded at .4 (FP 4 / 2 >= 2): 1
    assert [out[f"sens@{r:g}"] for r in F.FP_RATES] == [0, 0.5, 0.5, 0.5, 1, 1, 1]
    assert out["froc"] == pytest.approx(4.5 / 7)
    # interpolated: points (.5,0) (.5,.5) (1,.5) (1,.5) (1,1) (1.5,1) (2,1) read 0, 0, .5, 1, 1, 1, 1
    assert out["froc_interpolated"] == pytest.approx(4.5 / 7)


def test_froc_records_one_rate_per_prediction():
    """One image, four GT boxes; an FP first, then four hits. FP / 1 = 1 passes 0.125 ... 1 at once, but
    the reference records one rate per prediction: 0 after the FP, then 1/4, 2/4, 3/4 after the hits;
    2, 4, 8 are never reached and repeat 3/4. The interpolated curve reads 0 up to 1 FP, then 1."""
    gts = boxes([0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10])
    preds = np.concatenate([box(100, 100, 110, 110), gts])
    out = M.aggregate("froc", M.per_image_stats("froc", [(preds, [0.9, 0.8, 0.7, 0.6, 0.5])], [gts]))
    assert [out[f"sens@{r:g}"] for r in F.FP_RATES] == [0, 0.25, 0.5, 0.75, 0.75, 0.75, 0.75]
    assert out["froc"] == pytest.approx(3.75 / 7) and out["froc_interpolated"] == pytest.approx(4 / 7)


def test_froc_without_a_reached_rate_or_without_gt():
    gt, far = box(0, 0, 10, 10), box(50, 50, 60, 60)
    empty = (boxes(), [])
    # 9 images, one FP: 1/9 < 0.125 is never reached, so every value is the final share of hits
    preds = [(np.concatenate([far, gt]), [0.9, 0.1])] + [empty] * 8
    out = M.aggregate("froc", M.per_image_stats("froc", preds, [gt] + [boxes()] * 8))
    assert out["froc"] == 1.0 and out["sens@8"] == 1.0
    missed = M.aggregate(
        "froc", M.per_image_stats("froc", [(far, [0.9])] + [empty] * 8, [gt] + [boxes()] * 8)
    )
    assert missed["froc"] == 0.0
    nothing = M.aggregate("froc", M.per_image_stats("froc", [empty], [gt]))
    assert nothing["froc"] == 0.0 and nothing["froc_interpolated"] == 0.0
    # no GT box in the split: 1.0 when no rate is reached (as the reference), undefined otherwise
    assert M.aggregate("froc", M.per_image_stats("froc", [empty], [boxes()]))["froc"] == 1.0
    clean = M.aggregate("froc", M.per_image_stats("froc", [(far, [0.3])] + [empty] * 8, [boxes()] * 9))
    assert clean["froc"] == 1.0 and np.isnan(clean["froc_interpolated"])
    assert np.isnan(M.aggregate("froc", M.per_image_stats("froc", [(far, [0.3])], [boxes()]))["froc"])
    assert np.isnan(M.aggregate("froc", M.get_metric("froc").empty_per_image_stats())["froc"])


def literal_froc(preds, gts, fps=(0.125, 0.25, 0.5, 1, 2, 4, 8)):
    """The sequential rule written out as the reference's loop: every prediction as one tuple, Python's
    stable sort, one GT set per image."""
    flat = [
        (image, float(score), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
        for image, (bs, scores) in enumerate(preds)
        for b, score in zip(bs, scores)
    ]
    flat = sorted(flat, key=lambda p: p[1], reverse=True)
    n_gt, n_images = sum(len(g) for g in gts), len(gts)
    hits = false_positives = k = 0
    hit, values = set(), []
    for image, _, (x, y) in flat:
        inside = False
        for j, g in enumerate(gts[image]):
            if g[0] <= x <= g[2] and g[1] <= y <= g[3]:
                inside = True
                if (image, j) not in hit:
                    hits += 1
                    hit.add((image, j))
        if not inside:
            false_positives += 1
        if false_positives / n_images >= fps[k]:
            values.append(hits / n_gt)
            k += 1
            if k == len(fps):
                break
    if not values:
        return [1.0 if n_gt == 0 else hits / n_gt] * len(fps)
    return values + [values[-1]] * (len(fps) - len(values))


@pytest.mark.parametrize("levels", [None, 4])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_froc_equals_a_literal_walk(seed, levels):
    preds, gts = random_detection_case(seed, n_images=25)
    if levels:  # tied scores within and across images: the walk's order is the stable one
        preds = [(b, np.round(s * levels) / levels) for b, s in preds]
    ref = literal_froc(preds, gts)
    out = M.aggregate("froc", M.per_image_stats("froc", preds, gts))
    assert [out[f"sens@{r:g}"] for r in F.FP_RATES] == ref  # float for float
    assert out["froc"] == np.mean(ref) and 0 < out["froc"] < 1
    idx = np.random.default_rng(seed).integers(0, 25, 25)  # a resample: duplicates are separate images
    sub = M.aggregate("froc", M.per_image_stats("froc", *_subset("froc", preds, gts, idx)))
    assert sub["froc"] == np.mean(literal_froc(*_subset("froc", preds, gts, idx)))


def brute_froc(preds, gts):
    """Challenge-style FROC with loops: one operating point per distinct score, read with np.interp."""

    def inside(p, g):
        cx, cy = (p[0] + p[2]) / 2, (p[1] + p[3]) / 2
        return g[0] <= cx <= g[2] and g[1] <= cy <= g[3]

    n_gt = sum(len(g) for g in gts)
    thresholds = sorted({float(s) for _, sc in preds for s in sc}, reverse=True)
    fps, sens = [0.0], [0.0]
    for t in thresholds:
        fp = hit = 0
        for (pb, sc), gb in zip(preds, gts):
            kept = [p for p, s in zip(pb, sc) if s >= t]
            fp += sum(not any(inside(p, g) for g in gb) for p in kept)
            hit += sum(any(inside(p, g) for p in kept) for g in gb)
        fps.append(fp / len(preds))
        sens.append(hit / n_gt)
    return np.interp(F.FP_RATES, fps, sens)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpolated_froc_matches_brute_force(seed):
    preds, gts = random_detection_case(seed, n_images=25)
    out = M.aggregate("froc", M.per_image_stats("froc", preds, gts))
    assert out["froc_interpolated"] == pytest.approx(brute_froc(preds, gts).mean(), abs=1e-12)
    assert out["froc_interpolated"] != out["froc"]  # the two rules differ on this case


# ---------------------------------------------------------------- uniform interface, resampling


def dice_case(seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((12, 2, 8, 8)) < 0.2
    gt[3] = False
    pred = (rng.random((12, 2, 8, 8)) < 0.2) | gt & (rng.random((12, 2, 8, 8)) < 0.7)
    pred[3] = False
    return pred, gt


def _subset(kind, preds, gts, idx):
    if kind == "dice":
        return preds[idx], gts[idx]
    return [preds[i] for i in idx], [gts[i] for i in idx]


@pytest.mark.parametrize("kind", ["dice", "map", "froc"])
def test_resampled_aggregate_equals_direct(kind):
    preds, gts = dice_case(0) if kind == "dice" else random_detection_case(7, n_images=20)
    n = len(gts)
    pi = M.per_image_stats(kind, preds, gts, image_ids=[f"im{i}" for i in range(n)])
    loaded = json.loads(json.dumps(pi, allow_nan=False))
    prepared = M.prepare(kind, loaded)
    rng = np.random.default_rng(1)
    for _ in range(3):
        idx = rng.integers(0, n, n)
        assert len(set(idx.tolist())) < n  # duplicates present
        direct = M.aggregate(kind, M.per_image_stats(kind, *_subset(kind, preds, gts, idx)))
        assert M.aggregate(kind, loaded, idx) == pytest.approx(direct, abs=1e-12, nan_ok=True)
        assert M.aggregate(kind, prepared, idx) == pytest.approx(direct, abs=1e-12, nan_ok=True)
    assert M.aggregate(kind, prepared) == pytest.approx(M.aggregate(kind, pi), nan_ok=True)


def test_uniform_interface_keys_ids_and_merge():
    pred, gt = dice_case(1)
    pi = M.per_image_stats("dice", pred, gt, image_ids=list(range(12)))
    assert pi["image_ids"] == list(range(12))
    assert set(M.aggregate("dice", pi)) == {"dice", "dice_per_image", "dice_0", "dice_1"}
    assert M.primary_per_image_scores("dice", pi) == pytest.approx(
        S.per_image_dice(S.segmentation_stats(pred, gt)), nan_ok=True
    )
    assert np.isnan(M.primary_per_image_scores("dice", pi)[3])  # image 3: no GT, no prediction
    parts = [M.per_image_stats("dice", pred[:5], gt[:5]), M.per_image_stats("dice", pred[5:], gt[5:])]
    assert M.aggregate("dice", M.merge_per_image(parts)) == M.aggregate(
        "dice", M.per_image_stats("dice", pred, gt)
    )
    preds, gts = random_detection_case(2, n_images=10)
    assert set(M.aggregate("froc", M.per_image_stats("froc", preds, gts))) == {
        "froc",
        "froc_interpolated",
    } | {f"sens@{r}" for r in ("0.125", "0.25", "0.5", "1", "2", "4", "8")}
    froc_scores = M.primary_per_image_scores("froc", M.per_image_stats("froc", preds, gts))
    assert np.isnan(froc_scores).sum() == sum(len(g) == 0 for g in gts)
    kaggle = M.primary_per_image_scores("map", M.per_image_stats("map", preds, gts))
    assert kaggle.shape == (10,)


def test_interface_errors():
    with pytest.raises(CxrbenchError, match="unknown metric kind"):
        M.aggregate("auc", {})
    pi = M.per_image_stats("map", [(box(0, 0, 1, 1), [0.5])], [box(0, 0, 1, 1)])
    with pytest.raises(CxrbenchError, match="indices"):
        M.aggregate("map", pi, [1])
    with pytest.raises(CxrbenchError, match="image ids"):
        M.per_image_stats("map", [(box(0, 0, 1, 1), [0.5])], [box(0, 0, 1, 1)], image_ids=["a", "b"])
    with pytest.raises(CxrbenchError, match="scores"):
        D.match_detections(box(0, 0, 1, 1), [0.5, 0.4], boxes())


# ---------------------------------------------------------------- batched bootstrap


def tied_detection_stats(seed: int, n_images: int, levels: int | None) -> tuple[dict, dict]:
    """Per-image map and froc statistics in JSON form with scores rounded to ``levels`` values (ties
    across and within images; None keeps them continuous), images without GT and without predictions."""
    rng = np.random.default_rng(seed)

    def score(size):
        s = rng.uniform(0, 1, size)
        return np.round(s * levels) / levels if levels else s

    n_gt = np.where(rng.random(n_images) < 0.5, rng.integers(1, 4, n_images), 0)
    scores, masks, coco, froc_scores, codes = [], [], [], [], []
    for g in n_gt:
        s = np.sort(score(rng.poisson(2)))[::-1]
        scores.append(s.tolist())
        masks.append(
            [int(rng.integers(0, 256)) if j < g and rng.random() < 0.7 else 0 for j in range(s.size)]
        )
        coco.append([m & int(rng.integers(0, 256)) for m in masks[-1][: int(rng.integers(0, s.size + 1))]])
        f = np.sort(score(rng.poisson(3)))[::-1]
        left, image_codes = int(g), []
        for _ in f:  # an FP, or a prediction finding some of the boxes not yet found (0: already found)
            found = -1 if rng.random() < 0.4 else int(rng.integers(0, left + 1))
            left -= max(found, 0)
            image_codes.append(found)
        froc_scores.append(f.tolist())
        codes.append(image_codes)
    kaggle = [float(rng.random()) if g or s else None for g, s in zip(n_gt, scores, strict=True)]
    detection = {
        "scores": scores,
        "tp_mask": masks,
        "coco_tp_mask": coco,
        "n_gt": n_gt.tolist(),
        "map": kaggle,
    }
    froc = {"scores": froc_scores, "codes": codes, "n_gt": n_gt.tolist(), "froc": [None] * n_images}
    return detection, froc


@pytest.mark.parametrize("levels", [2, 5, 20, None])
@pytest.mark.parametrize("seed", range(6))
def test_bootstrap_aggregate_equals_per_replicate_aggregate(seed, levels):
    n = 4 + 5 * seed
    detection, froc = tied_detection_stats(seed, n, levels)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, (25, n))
    indices[0] = 0  # one image drawn n times
    for kind, stats in (("map", detection), ("froc", froc)):
        prepared = M.prepare(kind, stats)
        batched = M.bootstrap_aggregate(kind, prepared, indices)
        assert batched.keys() == M.aggregate(kind, prepared).keys()
        for key, values in batched.items():
            expected = [M.aggregate(kind, prepared, row)[key] for row in indices]
            if key in ("kaggle_map", "froc_interpolated"):  # weighted sums: equal up to summation order
                np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
            else:
                np.testing.assert_array_equal(values, expected)  # float for float, NaN where undefined


def test_bootstrap_froc_walks_weighted_copies_without_the_slow_path(monkeypatch):
    """With continuous scores every replicate comes from the weighted walk (no per-replicate recompute)."""
    _, froc = tied_detection_stats(4, 40, None)
    prepared = M.prepare("froc", froc)
    indices = np.random.default_rng(4).integers(0, 40, (30, 40))
    expected = [M.aggregate("froc", prepared, row)["froc"] for row in indices]
    monkeypatch.setattr(F, "froc_metrics", lambda *a, **k: pytest.fail("slow path used"))
    np.testing.assert_array_equal(
        M.bootstrap_aggregate("froc", prepared, indices, primary_only=True)["froc"], expected
    )
    assert 0.1 < np.mean(expected) < 0.9


@pytest.mark.parametrize("kind", ["map", "froc", "dice"])
def test_bootstrap_aggregate_primary_only_equals_full(kind):
    detection, froc = tied_detection_stats(3, 19, 5)
    stats = {"map": detection, "froc": froc}.get(kind)
    if stats is None:
        stats = {"intersection": [[3], [0], [5]], "pred_sum": [[4], [1], [5]], "gt_sum": [[3], [0], [7]]}
    prepared = M.prepare(kind, stats)
    n = len(stats["intersection"]) if kind == "dice" else 19
    indices = np.random.default_rng(0).integers(0, n, (30, n))
    full = M.bootstrap_aggregate(kind, prepared, indices)
    primary = M.bootstrap_aggregate(kind, prepared, indices, primary_only=True)
    assert list(primary) == [kind]
    np.testing.assert_array_equal(primary[kind], full[kind])


def test_bootstrap_map_handles_interleaved_tied_copies():
    # one image with a TP and an FP at the same score, drawn twice: pooled order is TP FP TP FP, which
    # count weights alone (TP TP FP FP) would get wrong; also a replicate with no GT at all (NaN)
    stats = {
        "scores": [[0.5, 0.5], [0.9]],
        "tp_mask": [[255, 0], [0]],
        "coco_tp_mask": [[255, 0], [0]],
        "n_gt": [2, 0],
        "map": [0.5, 0.0],
    }
    prepared = M.prepare("map", stats)
    indices = np.array([[0, 0], [1, 1], [0, 1]])
    batched = M.bootstrap_aggregate("map", prepared, indices)["map"]
    expected = [M.aggregate("map", prepared, row)["map"] for row in indices]
    np.testing.assert_array_equal(batched, expected)
    assert np.isnan(batched[1])


def test_bootstrap_aggregate_dice_and_counts():
    pred, gt = dice_case(2)
    prepared = M.prepare("dice", M.per_image_stats("dice", pred, gt))
    indices = np.random.default_rng(0).integers(0, 12, (30, 12))
    batched = M.bootstrap_aggregate("dice", prepared, indices)["dice"]
    expected = [M.aggregate("dice", prepared, row)["dice"] for row in indices]
    np.testing.assert_allclose(batched, expected, rtol=0, atol=1e-12)
    with pytest.raises(CxrbenchError):
        M.bootstrap_aggregate("dice", prepared, indices, counts=np.ones((30, 11)))


@pytest.mark.parametrize("kind", ["map", "froc"])
@pytest.mark.parametrize("case", ["no_predictions", "no_true_positives"])
def test_bootstrap_without_any_true_positive(kind, case):
    """An untrained detector (no boxes above threshold, or only misses) must bootstrap to 0, not crash."""
    gts = [
        np.array([[10, 10, 30, 30]], np.float32),
        np.zeros((0, 4), np.float32),
        np.array([[5, 5, 9, 9]], np.float32),
    ]
    if case == "no_predictions":
        preds = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in gts]
    else:
        preds = [(np.array([[60, 60, 70, 70]], np.float32), np.array([0.9], np.float32)) for _ in gts]
    per_image = M.per_image_stats(kind, preds, gts)
    prepared = M.prepare(kind, per_image)
    indices = np.random.default_rng(0).integers(0, 3, size=(20, 3))
    fast = M.bootstrap_aggregate(kind, prepared, indices, primary_only=True)[kind]
    slow = np.array([M.aggregate(kind, prepared, row)[kind] for row in indices])
    np.testing.assert_array_equal(fast, slow)


# ---------------------------------------------------------------- the Metric contract and registry


def test_builtin_metrics_describe_themselves():
    assert {"dice", "map", "froc"} <= set(M.metric_names())
    described = {n: (M.get_metric(n).display_name, M.get_metric(n).target) for n in ("dice", "map", "froc")}
    assert described == {"dice": ("Dice", M.MASKS), "map": ("mAP", M.BOXES), "froc": ("FROC", M.BOXES)}
    assert M.get_metric("dice").prediction_keys == ("pred_masks", "gt_masks", "mask_shape")
    assert "pred_scores" in M.get_metric("froc").prediction_keys
    for name in ("dice", "map", "froc"):
        metric = M.get_metric(name)
        empty = metric.empty_per_image_stats()
        assert all(v == [] for v in empty.values())
        assert np.isnan(metric.aggregate(empty)[name])


class PixelRecall(M.Metric):
    """Toy metric: share of foreground pixels found, pooled over images."""

    name = "toy_pixel_recall"
    display_name = "recall"
    target = M.MASKS

    def per_image_stats(self, predictions, targets):
        stats = S.segmentation_stats(predictions, targets)
        found, total = stats["intersection"].sum(1), stats["gt_sum"].sum(1)
        rate = np.where(total > 0, found / np.maximum(total, 1), np.nan)
        return {
            "found": found.tolist(),
            "total": total.tolist(),
            self.name: [None if np.isnan(r) else r for r in rate],
        }

    def prepare(self, per_image):
        return {k: np.asarray(per_image[k], dtype=np.int64) for k in ("found", "total")}

    def is_prepared(self, data):
        return isinstance(data.get("found"), np.ndarray)

    def aggregate(self, data, indices=None):
        d = self.prepared(data)
        idx = np.arange(len(d["found"])) if indices is None else np.asarray(indices)
        total = d["total"][idx].sum()
        return {self.name: float(d["found"][idx].sum() / total) if total else float("nan")}

    def bootstrap(self, prepared, indices, counts=None, primary_only=False):
        d = self.prepared(prepared)
        counts = np.stack([np.bincount(row, minlength=len(d["found"])) for row in indices])
        return {self.name: (counts @ d["found"]) / (counts @ d["total"])}


def test_a_metric_registered_from_outside_is_used_by_name():
    from cxrbench.leaderboard.aggregate import BootstrapSettings

    M.register_metric(PixelRecall())
    try:
        pred, gt = dice_case(3)
        pi = M.per_image_stats("toy_pixel_recall", pred, gt, image_ids=list(range(len(gt))))
        expected = (pred & gt).sum() / gt.sum()
        assert M.aggregate("toy_pixel_recall", pi)["toy_pixel_recall"] == pytest.approx(expected)
        idx = np.random.default_rng(0).integers(0, len(gt), (5, len(gt)))
        boot = M.bootstrap_aggregate("toy_pixel_recall", M.prepare("toy_pixel_recall", pi), idx)
        direct = [M.aggregate("toy_pixel_recall", pi, row)["toy_pixel_recall"] for row in idx]
        assert boot["toy_pixel_recall"] == pytest.approx(direct)
        assert M.primary_per_image_scores("toy_pixel_recall", pi).shape == (len(gt),)
        assert BootstrapSettings(n_boot=7, n_boot_detection=3).replicates("toy_pixel_recall") == 7
        with pytest.raises(CxrbenchError, match="already registered"):
            M.register_metric(PixelRecall())
    finally:
        M.unregister_metric("toy_pixel_recall")
    with pytest.raises(CxrbenchError, match="unknown metric kind 'toy_pixel_recall'"):
        M.get_metric("toy_pixel_recall")


def test_register_metric_validates_the_contract():
    class NoBootstrap(M.Metric):
        name, display_name, target = "no_bootstrap", "x", M.MASKS

    with pytest.raises(CxrbenchError, match="not a complete Metric"):
        M.register_metric(NoBootstrap)

    class WrongTarget(PixelRecall):
        target = "masks"

    with pytest.raises(CxrbenchError, match="target"):
        M.register_metric(WrongTarget())
