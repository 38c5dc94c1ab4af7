"""The YOLOv3 head as the reference trained it: targets, ignore mask, loss value and decoding on
hand-computed cases, and a short training on phantom RSNA that must beat the untrained head.

Reference facts (docs/protocol.md, "Heads"): per scale, a box goes to its centre's cell and to the
best of that scale's 3 anchors by shape IoU in grid units with the "+1" convention; anchors with
shape IoU > 0.5 at that cell leave the no-object mask; every term is a mean over all cells x anchors
of the scale and the batch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxrbench.encoders import STRIDES, FeatureInfo, ResNetEncoder
from cxrbench.protocol.heads import YoloV3Head, build_head
from cxrbench.protocol.heads.yolo import ANCHORS_224, nms
from cxrbench.protocol.metrics import get_metric
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import PROFILES, TASKS_BY_ID

SMALL = FeatureInfo({"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "conv5": 32}, dict(STRIDES))
WIDTHS = (32, 16, 8)
GRIDS_224 = [(7, 7), (14, 14), (28, 28)]
# Box A, xyxy pixels of a 224-px image: 60 x 50, centre (100, 110).
BOX_A = [70.0, 85, 130, 135]
# Box B: 9 x 16, centre (20.5, 44).
BOX_B = [16.0, 36, 25, 52]

# Hand-computed assignment of A and B, per scale (stride 32, 16, 8). Shape IoU in grid units with +1:
# inter = (min(w, aw) + 1)(min(h, ah) + 1), union = (w + 1)(h + 1) + (aw + 1)(ah + 1) - inter.
# A on conv5: w, h = 1.875, 1.5625; anchor 0 = (2.02, 1.51875): inter 2.875 * 2.51875 = 7.2414,
#   union 7.3672 + 7.6066 - 7.2414 = 7.7324, IoU 0.9365 (best, > 0.5); anchor 1 (2.6325, 3.34125)
#   contains the box: 7.3672 / 15.7697 = 0.4672; anchor 2: 0.1554. Cell x = 3, y = 3 (100 / 32 = 3.125,
#   110 / 32 = 3.4375).
# A on conv4: IoUs 0.3142, 0.3975, 0.5543 -> anchor 2 (ignored too); cell (6, 6), offsets (0.25, 0.875).
# A on conv3: IoUs 0.0510, 0.1021, 0.1337 -> anchor 2, below 0.5: the positive stays in the no-object
#   mask, as in the reference; cell x = 12, y = 13, offsets (0.5, 0.75).
# B on conv3: w, h = 1.125, 2; anchor 1 = (1.08, 2.025): inter 2.08 * 3 = 6.24, union 6.375 + 6.292
#   - 6.24 = 6.427, IoU 0.9709 (best); anchor 0 0.4933 (kept in no-object); anchor 2 0.5903 (ignored,
#   not a positive). Cell x = 2, y = 5, offsets (0.5625, 0.5).
# B on conv4: IoUs 0.5077, 0.4012, 0.2083 -> anchor 0 (ignored); cell (1, 2), offsets (0.28125, 0.75).
# B on conv5: IoUs 0.2527, 0.1219, 0.0405 -> anchor 0; cell (0, 1), offsets (0.640625, 0.375).
# Rows: (image, scale, anchor, gy, gx, tx, ty, box w, box h); the log-size target is log(w / anchor w).
POSITIVES = [
    (0, 0, 0, 3, 3, 0.125, 0.4375, 60, 50),
    (0, 1, 2, 6, 6, 0.25, 0.875, 60, 50),
    (0, 2, 2, 13, 12, 0.5, 0.75, 60, 50),
    (1, 0, 0, 1, 0, 0.640625, 0.375, 9, 16),
    (1, 1, 0, 2, 1, 0.28125, 0.75, 9, 16),
    (1, 2, 1, 5, 2, 0.5625, 0.5, 9, 16),
]
# (image, scale, anchor, gy, gx) removed from the no-object mask: shape IoU > 0.5 at the box's cell.
IGNORED = [(0, 0, 0, 3, 3), (0, 1, 2, 6, 6), (1, 1, 0, 2, 1), (1, 2, 1, 5, 2), (1, 2, 2, 5, 2)]


def _head(image_size: int = 224, n_classes: int = 1) -> YoloV3Head:
    return YoloV3Head(SMALL, n_classes=n_classes, image_size=image_size, embed_widths=WIDTHS)


def _targets_ab() -> list[torch.Tensor]:
    return [torch.tensor([BOX_A]), torch.tensor([BOX_B])]


def test_anchors_are_the_reference_pixels_scaled_with_the_image():
    assert torch.allclose(_head(224).anchors, torch.tensor(ANCHORS_224))
    assert torch.allclose(_head(448).anchors, 2 * torch.tensor(ANCHORS_224))


def test_output_shapes_and_every_parameter_gets_a_gradient():
    head = _head(96, n_classes=2)
    g = torch.Generator().manual_seed(0)
    feats = {
        s: torch.randn(2, c, 96 // SMALL.strides[s], 96 // SMALL.strides[s], generator=g)
        for s, c in SMALL.channels.items()
    }
    outs = head(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 3, 3, 7), (2, 3, 6, 6, 7), (2, 3, 12, 12, 7)]
    head.loss(
        outs, [torch.tensor([[10.0, 20, 50, 70]]), torch.zeros(0, 4)], [torch.tensor([1]), torch.zeros(0)]
    )["total"].backward()
    assert all(p.grad is not None for p in head.parameters())


def test_targets_one_positive_per_box_per_scale_with_offsets_and_log_sizes():
    head = _head()
    scales = head.targets(_targets_ab(), GRIDS_224)
    expected_obj = [torch.zeros(2, 3, h, w, dtype=torch.bool) for h, w in GRIDS_224]
    for image, scale, anchor, gy, gx, tx, ty, w, h in POSITIVES:
        expected_obj[scale][image, anchor, gy, gx] = True
        tgt = scales[scale]
        assert tgt.txy[image, anchor, gy, gx].tolist() == pytest.approx([tx, ty], abs=1e-6)
        aw, ah = ANCHORS_224[scale][anchor]
        assert tgt.twh[image, anchor, gy, gx].tolist() == pytest.approx(
            [math.log(w / aw), math.log(h / ah)], abs=1e-5
        )
    for scale in range(3):
        assert torch.equal(scales[scale].obj, expected_obj[scale]), scale
    assert sum(int(t.obj.sum()) for t in scales) == 6  # 2 boxes x 3 scales


def test_ignore_mask_removes_only_good_shapes_at_the_box_cell():
    scales = _head().targets(_targets_ab(), GRIDS_224)
    for scale, (h, w) in enumerate(GRIDS_224):
        expected = torch.ones(2, 3, h, w, dtype=torch.bool)
        for image, s, anchor, gy, gx in IGNORED:
            if s == scale:
                expected[image, anchor, gy, gx] = False
        assert torch.equal(scales[scale].noobj, expected), scale
    # The conv3 positive of box A (IoU 0.1337) stays a no-object cell too, as in the reference.
    assert scales[2].obj[0, 2, 13, 12] and scales[2].noobj[0, 2, 13, 12]


def test_later_box_at_the_same_cell_and_anchor_replaces_the_earlier_one():
    smaller = [72.0, 86, 128, 134]  # 56 x 48, same centre (100, 110): conv5 anchor 0 again
    (conv5, *_) = _head().targets([torch.tensor([BOX_A, smaller])], GRIDS_224)
    assert int(conv5.obj.sum()) == 1
    assert conv5.twh[0, 0, 3, 3].tolist() == pytest.approx(
        [math.log(56 / 64.64), math.log(48 / 48.6)], abs=1e-5
    )


def test_targets_scale_with_the_image_and_skip_empty_boxes():
    big = _head(448).targets([2 * torch.tensor([BOX_A])], [(14, 14), (28, 28), (56, 56)])
    assert torch.nonzero(big[0].obj).tolist() == [[0, 0, 6, 6]]
    assert big[0].txy[0, 0, 6, 6].tolist() == pytest.approx([0.25, 0.875], abs=1e-6)
    none = _head().targets([torch.tensor([[10.0, 10, 10, 40]]), torch.zeros(0, 4)], GRIDS_224)
    assert all(not t.obj.any() and t.noobj.all() for t in none)


def _bce(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """torch.nn.BCELoss element-wise, logs clamped at -100 as torch does."""
    with np.errstate(divide="ignore"):
        return -(t * np.maximum(np.log(p), -100) + (1 - t) * np.maximum(np.log(1 - p), -100))


def _reference_loss(outputs: list[np.ndarray]) -> float:
    """The reference's loss written as it is there: dense masks, x * mask against t * mask, means
    over every element of the scale, summed over scales. Masks come from the hand-computed tables."""
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    total = 0.0
    for scale, out in enumerate(outputs):
        shape = out.shape[:4]
        mask, noobj = np.zeros(shape), np.ones(shape)
        tx, ty, tw, th = (np.zeros(shape) for _ in range(4))
        for image, s, anchor, gy, gx, ox, oy, w, h in POSITIVES:
            if s == scale:
                aw, ah = ANCHORS_224[scale][anchor]
                mask[image, anchor, gy, gx] = 1
                tx[image, anchor, gy, gx], ty[image, anchor, gy, gx] = ox, oy
                tw[image, anchor, gy, gx], th[image, anchor, gy, gx] = np.log(w / aw), np.log(h / ah)
        for image, s, anchor, gy, gx in IGNORED:
            if s == scale:
                noobj[image, anchor, gy, gx] = 0
        x, y, conf = sigmoid(out[..., 0]), sigmoid(out[..., 1]), sigmoid(out[..., 4])
        loss_x = _bce(x * mask, tx * mask).mean()
        loss_y = _bce(y * mask, ty * mask).mean()
        loss_w = ((out[..., 2] * mask - tw * mask) ** 2).mean()
        loss_h = ((out[..., 3] * mask - th * mask) ** 2).mean()
        loss_conf = _bce(conf * mask, mask).mean() + 0.5 * _bce(conf * noobj, noobj * 0).mean()
        total += 2.5 * (loss_x + loss_y) + 2.5 * (loss_w + loss_h) + 1.0 * loss_conf
    return total


def test_loss_value_matches_the_reference_formula_computed_by_hand():
    g = torch.Generator().manual_seed(3)
    outputs = [torch.randn(2, 3, h, w, 6, generator=g, dtype=torch.float64) for h, w in GRIDS_224]
    got = _head().loss([o.float() for o in outputs], _targets_ab())
    expected = _reference_loss([o.numpy() for o in outputs])
    assert float(got["total"]) == pytest.approx(expected, rel=1e-5)
    assert float(got["cls"]) == 0.0  # one class: no class loss
    weighted = 2.5 * got["xy"] + 2.5 * got["wh"] + got["conf"]
    assert float(weighted) == pytest.approx(float(got["total"]), rel=1e-6)


def test_loss_terms_are_means_over_the_cells_of_each_scale():
    """One positive, all logits 0: per scale xy = 2 ln 2 / N, conf = (ln 2 + 0.5 (N - 1) ln 2) / N
    (A's conv5 anchor 0 is ignored, so N - 1 no-object cells there; conv4 the same; conv3 keeps all N)."""
    head = _head()
    outputs = [torch.zeros(1, 3, h, w, 6) for h, w in GRIDS_224]
    loss = head.loss(outputs, [torch.tensor([BOX_A])])
    ln2 = math.log(2)
    cells = [3 * h * w for h, w in GRIDS_224]  # 147, 588, 2352
    xy = sum(2 * ln2 / n for n in cells)
    conf = sum((ln2 + 0.5 * (n - 1) * ln2) / n for n in cells[:2]) + (ln2 + 0.5 * cells[2] * ln2) / cells[2]
    assert float(loss["xy"]) == pytest.approx(xy, rel=1e-6)
    assert float(loss["conf"]) == pytest.approx(conf, rel=1e-6)
    wh = sum(
        (math.log(60 / ANCHORS_224[s][a][0]) ** 2 + math.log(50 / ANCHORS_224[s][a][1]) ** 2) / n
        for s, a, n in zip(range(3), (0, 2, 2), cells)
    )
    assert float(loss["wh"]) == pytest.approx(wh, rel=1e-5)
    empty = head.loss(outputs, [torch.zeros(0, 4)])
    assert float(empty["xy"]) == 0 and float(empty["wh"]) == 0
    assert float(empty["conf"]) == pytest.approx(3 * 0.5 * ln2, rel=1e-6)


def _blank(batch: int = 1, n_classes: int = 1) -> list[torch.Tensor]:
    """Raw maps predicting nothing (objectness logit -20) on the 224-px grids."""
    outs = [torch.zeros(batch, 3, h, w, 5 + n_classes) for h, w in GRIDS_224]
    for out in outs:
        out[..., 4] = -20.0
    return outs


def test_decoded_box_from_a_constructed_prediction_and_score_is_objectness():
    head = _head()
    outs = _blank()
    # conv4 (stride 16), cell x = 6, y = 3, anchor 1 (33.48 x 24.3): sigmoid offsets 0.5 and 0.75,
    # width doubled, height kept -> centre (6.5 * 16, 3.75 * 16) = (104, 60), size 66.96 x 24.3.
    outs[1][0, 1, 3, 6, :5] = torch.tensor([0.0, math.log(3), math.log(2), 0.0, 1.0])
    outs[1][0, 1, 3, 6, 5] = -8.0  # class logit: ignored by the score with one class
    ((boxes, scores, labels),) = head.decode(outs)
    assert len(boxes) == 1
    assert boxes[0].tolist() == pytest.approx([104 - 33.48, 60 - 12.15, 104 + 33.48, 60 + 12.15], abs=1e-4)
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-1.0))], abs=1e-6)
    assert labels.tolist() == [0]
    # A box overhanging the image is not clipped (the reference does not clip).
    outs[0][0, 2, 0, 0, :5] = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0])  # 201.42 x 176.04 centred at (16, 16)
    ((boxes, scores, _),) = head.decode(outs)
    assert boxes[0].tolist() == pytest.approx([16 - 100.71, 16 - 88.02, 16 + 100.71, 16 + 88.02], abs=1e-4)


def test_score_is_objectness_with_several_classes_too():
    head = _head(n_classes=2)
    outs = _blank(n_classes=2)
    outs[0][0, 0, 3, 3, 4:] = torch.tensor([0.5, -6.0, -2.0])  # both classes unlikely, class 1 less so
    ((_, scores, labels),) = head.decode(outs)
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-0.5))], abs=1e-6) and labels.tolist() == [1]


def test_confidence_threshold_keeps_scores_of_at_least_0_2():
    head = _head()
    outs = _blank()
    logit_02 = math.log(0.2 / 0.8)
    outs[0][0, 0, 1, 1, 4] = logit_02 + 1e-4  # kept
    outs[0][0, 0, 5, 5, 4] = logit_02 - 1e-3  # dropped
    ((boxes, scores, _),) = head.decode(outs)
    assert len(boxes) == 1 and scores[0] >= 0.2


def test_nms_removes_overlaps_of_at_least_0_4_with_the_plus_one_convention():
    head = _head()
    outs = _blank()
    # conv3 (stride 8) cell (10, 10): anchors 0 and 1 both resized to 10 x 10 px, centres 4.5 px apart
    # (sigmoid offsets 0.25 and 0.8125 -> x = 82 and 86.5). Plain IoU 5.5 / 14.5 = 0.379 would keep
    # both; the reference's +1 IoU (6.5 * 11) / (2 * 121 - 6.5 * 11) = 0.419 removes the weaker box.
    for anchor, offset, score in ((0, 0.25, 3.0), (1, 0.8125, 2.0)):
        aw, ah = ANCHORS_224[2][anchor]
        outs[2][0, anchor, 10, 10, :5] = torch.tensor(
            [math.log(offset / (1 - offset)), 0.0, math.log(10 / aw), math.log(10 / ah), score]
        )
    ((boxes, scores, _),) = head.decode(outs)
    assert len(boxes) == 1 and scores[0] == pytest.approx(1 / (1 + math.exp(-3.0)), abs=1e-6)
    assert len(head.decode(outs, nms_iou=0.42)[0][0]) == 2
    # +1 IoU exactly 0.4: (2 * 2) / (2 * 2 + 5 * 2 - 2 * 2); removed (>=), unlike torchvision's (>).
    pair = torch.tensor([[0.0, 0, 1, 1], [0, 0, 4, 1]])
    assert nms(pair, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long), 0.4).tolist() == [0]
    assert nms(pair, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.4).tolist() == [0, 1]  # class-wise


def test_build_head_gives_the_reference_widths():
    head = build_head("yolo", SMALL, 1, 224)
    assert isinstance(head, YoloV3Head)
    assert [head.branch5.embed[0][0].out_channels, head.branch4.embed[0][0].out_channels] == [512, 256]
    assert head.branch3.embed[0][0].out_channels == 128
    assert head.branch5.predict[-1].out_channels == 3 * 6


# ---------------------------------------------------------------- learning at demo scale


def _map(head: YoloV3Head, features: dict[str, torch.Tensor], boxes: list[torch.Tensor]) -> float:
    metric = get_metric("map")
    head.eval()
    with torch.no_grad():
        predictions = head.to_predictions(head(features))
    return metric.aggregate(metric.per_image_stats(predictions, [b.numpy() for b in boxes]))["map"]


def test_yolo_head_learns_phantom_rsna_beyond_the_untrained_head(prepared_root):
    """Frozen seeded random ResNet-18 at the demo resolution, phantom RSNA, 150 Adam steps of batch 4
    (the demo's YOLO batch cap) at the task's lr: the trained head fits its training images and
    beats the same head scored untrained on the held-out images too, both scored the same way.
    Embedding widths a quarter of the reference's keep it to about 10 s of CPU (same loss, targets
    and decoding; the reference widths take about 15x longer)."""
    demo = PROFILES["demo"]
    task = demo.apply(TASKS_BY_ID["rsna_yolo_frozen_100"])
    assert task.batch_size == 4
    dataset = open_task_dataset(prepared_root, task.dataset)
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18").eval()
    features, boxes = {}, {}
    for split in ("train", "val", "test"):
        data = load_task_split(dataset, task, split, demo)
        index = torch.arange(len(data))
        with torch.no_grad():
            features[split] = encoder(data.normalise(data.images[index]))
        boxes[split] = data.targets(index)
    held_out = {s: torch.cat([features["val"][s], features["test"][s]]) for s in features["val"]}
    held_out_boxes = boxes["val"] + boxes["test"]
    head = YoloV3Head(encoder.feature_info, 1, demo.resolution, embed_widths=(128, 64, 32))
    untrained = (_map(head, features["train"], boxes["train"]), _map(head, held_out, held_out_boxes))

    optimizer = torch.optim.Adam(head.parameters(), lr=task.default_lr, weight_decay=1e-6)
    generator = torch.Generator().manual_seed(0)
    n = len(boxes["train"])
    for _ in range(150):
        index = torch.randperm(n, generator=generator)[: task.batch_size]
        head.train()
        output = head({s: f[index] for s, f in features["train"].items()})
        loss = head.training_loss(output, [boxes["train"][i] for i in index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = (_map(head, features["train"], boxes["train"]), _map(head, held_out, held_out_boxes))
    assert trained[0] > untrained[0] + 0.2, (trained, untrained)
    assert trained[1] > untrained[1], (trained, untrained)
