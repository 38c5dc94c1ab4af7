"""Heads: output shapes (the YOLOv3 loss and decoding are in test_yolo.py), and the Head
contract and registry (a toy head from a test module runs through evaluate)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
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
from cxrbench.protocol.metrics import BOXES, MASKS
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.tasks import PROFILES, TASKS, TASKS_BY_ID
from cxrbench.protocol.training import head_and_metric

SMALL = FeatureInfo({"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "conv5": 32}, dict(STRIDES))
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
    (npz_path,) = (
        p for p in (tmp_path / "random" / "covid_toy").glob("*.npz") if not p.name.endswith(".stats.npz")
    )
    with np.load(npz_path) as npz:
        assert set(MASKS.prediction_keys) <= set(npz.files)
        assert tuple(npz["mask_shape"]) == (record["n_images"]["test"], 1, TINY.resolution, TINY.resolution)
    with pytest.raises(CxrbenchError, match="unknown head kind 'toy_conv4_bce'"):
        get_head("toy_conv4_bce")
