"""Heads: output shapes, the YOLOv3 target assignment, loss, decoding and a tiny overfit, and the Head
contract and registry (a toy head from a test module runs through evaluate)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou
from toy_head import Conv4BceHead, register_toy_head

from cxrbench.encoders import INPUT, STAGES, STRIDES, FeatureInfo, ResNetEncoder
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.heads import (
    Head,
    LinearHead,
    UNetHead,
    YoloV3Head,
    build_head,
    get_head,
    head_names,
    register_head,
    unregister_head,
)
from cxrbench.protocol.heads.yolo import ANCHORS_224
from cxrbench.protocol.metrics import BOXES, MASKS
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.tasks import PROFILES, TASKS, TASKS_BY_ID
from cxrbench.protocol.training import head_and_metric

SMALL = FeatureInfo({"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "conv5": 32}, dict(STRIDES))
WIDTHS = (32, 16, 8)
TINY = dataclasses.replace(
    PROFILES["demo"], name="test", resolution=64, max_epochs=2, max_train_images=16, max_eval_images=12
)


@pytest.fixture(scope="module")
def r18_features() -> tuple[FeatureInfo, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18").eval()
    with torch.no_grad():
        return encoder.feature_info, encoder(torch.randn(2, 3, 96, 96))


def _random_features(size: int, batch: int = 2, info: FeatureInfo = SMALL) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        s: torch.randn(batch, c, size // info.strides[s], size // info.strides[s], generator=g)
        for s, c in info.channels.items()
    }


def test_linear_head_shapes(r18_features):
    info, feats = r18_features
    head = build_head("linear", info, n_classes=8, image_size=96)
    assert isinstance(head, LinearHead) and head.required_stages == ("conv5",)
    assert head(feats, (96, 96)).shape == (2, 8, 96, 96)
    assert head(feats).shape == (2, 8, 96, 96)  # default: 32 x the conv5 grid
    assert head({"conv5": feats["conv5"]}, (100, 90)).shape == (2, 8, 100, 90)


def test_unet_head_shapes(r18_features):
    """The full-width ResUNet on real ResNet-18 features (more in test_unet_head.py)."""
    info, feats = r18_features
    head = build_head("unet", info, n_classes=1, image_size=96)
    assert isinstance(head, UNetHead)
    assert set(head.required_stages) == {"conv1", "conv2", "conv3", "conv4", "conv5", INPUT}
    image = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    out = head({**{s: feats[s] for s in STAGES}, INPUT: image}, (96, 96))
    assert out.shape == (2, 1, 96, 96)
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_build_head_rejects_unknown_kind():
    with pytest.raises(CxrbenchError, match="linear"):
        build_head("fpn", SMALL, 1, 224)


def test_yolo_output_shapes_resnet18(r18_features):
    info, feats = r18_features
    head = build_head("yolo", info, n_classes=2, image_size=96)
    assert isinstance(head, YoloV3Head)
    outs = head({s: feats[s] for s in head.required_stages})
    assert [tuple(o.shape) for o in outs] == [(2, 3, 3, 3, 7), (2, 3, 6, 6, 7), (2, 3, 12, 12, 7)]


def test_yolo_anchors_scale_with_image_size():
    small = YoloV3Head(SMALL, image_size=224, embed_widths=WIDTHS)
    large = YoloV3Head(SMALL, image_size=448, embed_widths=WIDTHS)
    assert torch.allclose(small.anchors, torch.tensor(ANCHORS_224))
    assert torch.allclose(large.anchors, 2 * torch.tensor(ANCHORS_224))
    assert small.strides == (32, 16, 8)


def test_yolo_target_assignment():
    head = YoloV3Head(SMALL, n_classes=3, image_size=224, embed_widths=WIDTHS)
    grids = [(7, 7), (14, 14), (28, 28)]
    # 60x50 box centred at (100, 110): best shape match is conv5 anchor 0 (64.64 x 48.6); cell (3, 3).
    # 9x16 box centred at (20.5, 44): conv3 anchor 1 (8.64 x 16.2), cell x=2, y=5; in image 1.
    targets = [torch.tensor([[70.0, 85, 130, 135]]), torch.tensor([[16.0, 36, 25, 52]])]
    labels = [torch.tensor([2]), torch.tensor([1])]
    asg = head.assign(targets, labels, grids)
    assert [len(a.batch) for a in asg] == [1, 0, 1]
    a5, a3 = asg[0], asg[2]
    assert (a5.batch.item(), a5.anchor.item(), a5.gy.item(), a5.gx.item(), a5.label.item()) == (0, 0, 3, 3, 2)
    assert torch.allclose(a5.txy, torch.tensor([[100 / 32 - 3, 110 / 32 - 3]]))
    assert torch.allclose(a5.twh, torch.log(torch.tensor([[60 / 64.64, 50 / 48.6]])))
    assert (a3.batch.item(), a3.anchor.item(), a3.gy.item(), a3.gx.item(), a3.label.item()) == (1, 1, 5, 2, 1)
    # Same box at 448 px (everything doubled): same anchor and cell on the doubled grid.
    big = YoloV3Head(SMALL, n_classes=3, image_size=448, embed_widths=WIDTHS)
    asg = big.assign([2 * targets[0]], [labels[0]], [(14, 14), (28, 28), (56, 56)])
    assert (asg[0].anchor.item(), asg[0].gy.item(), asg[0].gx.item()) == (0, 6, 6)
    with pytest.raises(ValueError, match="labels"):
        head.assign(targets, [torch.tensor([3]), torch.tensor([0])], grids)


def test_yolo_loss_terms_and_empty_images():
    head = YoloV3Head(SMALL, n_classes=1, image_size=96, embed_widths=WIDTHS)
    outs = head(_random_features(96))
    loss = head.loss(outs, [torch.tensor([[10.0, 20, 50, 70]]), torch.zeros(0, 4)])
    assert set(loss) == {"total", "xy", "wh", "conf", "cls"}
    assert all(torch.isfinite(v) for v in loss.values())
    expected = 2.5 * loss["xy"] + 2.5 * loss["wh"] + loss["conf"] + loss["cls"]
    assert torch.allclose(loss["total"], expected)
    loss["total"].backward()
    empty = head.loss(head(_random_features(96)), [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert empty["xy"] == 0 and empty["cls"] == 0 and empty["conf"] > 0


def _blank_outputs(head: YoloV3Head, size: int, batch: int = 1) -> list[torch.Tensor]:
    """Raw maps predicting nothing: objectness logit -20, class logits +20."""
    outs = []
    for stride in head.strides:
        out = torch.zeros(batch, 3, size // stride, size // stride, 5 + head.n_classes)
        out[..., 4] = -20.0
        out[..., 5:] = 20.0
        outs.append(out)
    return outs


def test_yolo_ignore_threshold_spares_good_unassigned_predictions():
    head = YoloV3Head(SMALL, n_classes=1, image_size=224, embed_widths=WIDTHS)
    gt = [torch.tensor([[70.0, 85, 130, 135]])]  # assigned to conv5, anchor 0, cell (3, 3)
    base = head.loss(_blank_outputs(head, 224), gt)["conf"]
    # conv5 anchor 1 at the same cell, shaped to reproduce the GT box exactly: IoU 1 > 0.5, not a negative.
    outs = _blank_outputs(head, 224)
    a1 = head.anchors[0, 1]
    outs[0][0, 1, 3, 3, :4] = torch.tensor(
        [math.log(0.125 / 0.875), math.log(0.4375 / 0.5625), math.log(60 / a1[0]), math.log(50 / a1[1])]
    )
    outs[0][0, 1, 3, 3, 4] = 10.0
    assert torch.allclose(head.loss(outs, gt)["conf"], base, atol=1e-4)
    # The same confident prediction far from any GT is penalised (BCE of logit 10 vs 0 is about 10).
    outs[0][0, 1, 3, 3, 4] = -20.0
    outs[0][0, 1, 0, 6, 4] = 10.0
    assert head.loss(outs, gt)["conf"] - base == pytest.approx(10.0, abs=1e-3)


def test_yolo_decode_threshold_nms_and_clipping():
    head = YoloV3Head(SMALL, n_classes=1, image_size=96, embed_widths=WIDTHS)
    outs = _blank_outputs(head, 96)
    a = head.anchors[0]
    outs[0][0, 0, 1, 1, 4] = 5.0  # box centred at (48, 48) with anchor 0's size, score ~0.993
    # Anchor 1 at the same cell resized to nearly the same box, lower score: removed by NMS.
    outs[0][0, 1, 1, 1, 2:4] = torch.log(a[0] / a[1]) + 0.05
    outs[0][0, 1, 1, 1, 4] = 2.0
    outs[0][0, 2, 0, 0, 4] = 0.5  # large anchor-2 box at the corner, score ~0.62: kept and clipped
    outs[2][0, 0, 5, 5, 4] = -3.0  # score ~0.047 < 0.2: dropped
    ((boxes, scores, labels),) = head.decode(outs)
    assert len(boxes) == 2 and torch.all(scores[:-1] >= scores[1:]) and torch.all(labels == 0)
    assert scores[0] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item(), abs=1e-4)
    w, h = a[0]
    assert torch.allclose(boxes[0], torch.tensor([48 - w / 2, 48 - h / 2, 48 + w / 2, 48 + h / 2]), atol=1e-3)
    assert boxes[1].min() >= 0 and boxes[1][0] == 0 and boxes[1][1] == 0
    assert len(head.decode(outs, conf_threshold=0.7)[0][0]) == 1
    assert len(head.decode(outs, nms_iou=0.99)[0][0]) == 3
    assert len(head.decode(outs, max_detections=1)[0][0]) == 1


def test_yolo_overfits_fixed_features():
    torch.manual_seed(0)
    head = YoloV3Head(SMALL, n_classes=2, image_size=96, embed_widths=(64, 32, 16))
    feats = _random_features(96)
    gts = [torch.tensor([[20.0, 30, 60, 62]]), torch.tensor([[5.0, 5, 15, 20], [50, 50, 90, 90]])]
    labels = [torch.tensor([1]), torch.tensor([0, 1])]
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    losses = []
    for _ in range(50):
        loss = head.loss(head(feats), gts, labels)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    head.eval()
    with torch.no_grad():
        detections = head.decode(head(feats))
    for (boxes, _, pred_labels), gt, lab in zip(detections, gts, labels):
        assert len(boxes) >= len(gt)
        iou = box_iou(gt, boxes)
        best = iou.argmax(1)
        assert torch.all(iou.max(1).values > 0.5)
        assert torch.equal(pred_labels[best], lab)


# ---------------------------------------------------------------- the Head contract and registry


def test_builtin_heads_describe_themselves():
    assert {"linear", "unet", "yolo"} <= set(head_names())
    assert get_head("linear").target is MASKS and get_head("unet").target is MASKS
    assert get_head("yolo").target is BOXES
    assert get_head("yolo").prediction_keys() == BOXES.prediction_keys
    for name in ("linear", "unet", "yolo"):
        assert isinstance(build_head(name, SMALL, 1, 96), get_head(name))


def test_every_task_names_a_registered_head_and_a_metric_of_the_same_target():
    for task in TASKS:
        head, metric = head_and_metric(task)
        assert head.target is metric.target, task.task_id


def test_head_and_metric_disagreeing_on_targets_is_a_clear_error():
    task = dataclasses.replace(TASKS_BY_ID["rsna_yolo_frozen_10"], metric="dice")
    with pytest.raises(CxrbenchError, match="predicts boxes but metric 'dice' scores masks"):
        head_and_metric(task)


def test_register_head_validates_the_contract():
    class Incomplete(Head):  # no build / forward / loss / decoding
        name, target, required_stages = "incomplete", MASKS, ("conv5",)

    with pytest.raises(CxrbenchError, match="not a concrete Head"):
        register_head(Incomplete)
    with pytest.raises(CxrbenchError, match="not a concrete Head"):
        register_head(nn.Conv2d)

    class NoTarget(Conv4BceHead):
        name, target = "no_target", "masks"

    with pytest.raises(CxrbenchError, match="target"):
        register_head(NoTarget)

    class Clash(Conv4BceHead):
        name = "linear"

    with pytest.raises(CxrbenchError, match="already registered"):
        register_head(Clash)
    assert get_head("linear") is LinearHead


def test_toy_head_from_a_test_module_runs_end_to_end_through_evaluate(prepared_root, tmp_path):
    register_toy_head()
    try:
        task = dataclasses.replace(TASKS_BY_ID["covid_linear"], task_id="covid_toy", head=Conv4BceHead.name)
        options = EvaluateOptions(prepared_root, tmp_path, "random", TINY, seeds=1, arch="resnet18")
        outcome = evaluate_checkpoint("random", [task], options)[0]
    finally:
        unregister_head(Conv4BceHead.name)
    record = outcome.records[-1]
    assert record["status"] == "ok", record.get("error")
    assert record["task_settings"]["head"] == "toy_conv4_bce" and record["feature_cache"] is True
    assert 0.0 <= record["test"]["dice"] <= 1.0
    assert len(record["test_per_image"]["dice"]) == record["n_images"]["test"]
    assert record["history"] and all(np.isfinite(e["train_loss"]) for e in record["history"])
    (npz_path,) = (tmp_path / "random" / "covid_toy").glob("*.npz")
    with np.load(npz_path) as npz:
        assert set(MASKS.prediction_keys) <= set(npz.files)
        assert tuple(npz["mask_shape"]) == (record["n_images"]["test"], 1, TINY.resolution, TINY.resolution)
    with pytest.raises(CxrbenchError, match="unknown head kind 'toy_conv4_bce'"):
        get_head("toy_conv4_bce")
