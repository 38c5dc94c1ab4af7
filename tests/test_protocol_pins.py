"""Numbers pinned before heads, metrics and the task table were refactored: a refactor that changes
what a seed trains, predicts or scores, or what the protocol hash covers, fails here.

Values were computed on this repository's phantom fixture (tests/conftest.py) with a seeded random
ResNet-18 under the demo profile on CPU. A deliberate protocol or metric change updates them in the
same commit, with the reason in its message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.encoders import ResNetEncoder
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import PROFILES, TASKS_BY_ID, protocol_hash
from cxrbench.protocol.training import train_run

DEMO = PROFILES["demo"]


def test_protocol_hash_is_pinned():
    assert protocol_hash(PROFILES["full"]) == "7411a24cf6684322"
    assert protocol_hash(PROFILES["demo"]) == "faecd9e006510eed"


def _summary(predictions: dict[str, np.ndarray]) -> dict:
    if "pred_masks" in predictions:
        return {
            "pred_pixels": int(np.unpackbits(predictions["pred_masks"]).sum()),
            "gt_pixels": int(np.unpackbits(predictions["gt_masks"]).sum()),
        }
    return {
        "n_boxes": len(predictions["pred_scores"]),
        "score_sum": float(predictions["pred_scores"].astype(np.float64).sum()),
        "box_sum": float(predictions["pred_boxes"].astype(np.float64).sum()),
        "n_gt": len(predictions["gt_boxes"]),
    }


PINNED = {
    # a frozen linear probe at the task's default lr
    ("rsna_seg_linear_10", None): {
        "val": {"dice": 0.07704749301573298, "dice_per_image": 0.0529431377186565},
        "test": {"dice": 0.20122302988346602, "dice_per_image": 0.17432943407039456},
        "best_epoch": 1,
        "val_loss": [0.9101253747940063, 0.9998195767402649, 0.9998227953910828, 0.9998227953910828],
        "summary": {"pred_pixels": 14444, "gt_pixels": 11557},
    },
    # YOLO at a high lr, so that the test split gets boxes above the confidence threshold
    ("rsna_yolo_frozen_10", 1e-2): {
        "val": {"map": 0.0, "map50": 0.0, "kaggle_map": 0.0},
        "test": {"map": 6.952942485259762e-05, "map50": 0.0, "kaggle_map": 0.0},
        "best_epoch": 1,
        "val_loss": [74.9527587890625, 482201472.0, 458734368.0, 90742144.0],
        "summary": {
            "n_boxes": 108,
            "score_sum": 85.20112240314484,
            "box_sum": 22682.847210884094,
            "n_gt": 25,
        },
    },
    # fine-tuning with a head-only warm-up, U-Net head
    ("covid_unet_finetune", None): {
        "val": {"dice": 0.07876288659793815, "dice_per_image": 0.055897637906223215},
        "test": {"dice": 0.05289541918755402, "dice_per_image": 0.050450992262155055},
        "best_epoch": 4,
        "val_loss": [
            0.975555956363678,
            0.9743998646736145,
            0.9738126993179321,
            0.9737824201583862,
            0.9742936491966248,
            0.9748600721359253,
        ],
        "summary": {"pred_pixels": 3721, "gt_pixels": 2064},
    },
}


@pytest.mark.parametrize(("task_id", "lr"), list(PINNED))
def test_seeded_run_reproduces_pinned_numbers(prepared_root, task_id, lr):
    task = DEMO.apply(TASKS_BY_ID[task_id])
    dataset = open_task_dataset(prepared_root, task.dataset)
    data = {s: load_task_split(dataset, task, s, DEMO) for s in ("train", "val", "test")}
    torch.manual_seed(0)
    result = train_run(
        task,
        ResNetEncoder("resnet18"),
        len(dataset.classes),
        data,
        lr or task.default_lr,
        0,
        DEMO.resolution,
        torch.device("cpu"),
    )
    pinned = PINNED[(task_id, lr)]
    for split in ("val", "test"):
        got = getattr(result, split)
        for key, value in pinned[split].items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (split, key)
    assert result.best_epoch == pinned["best_epoch"]
    assert [e["val_loss"] for e in result.history] == pytest.approx(pinned["val_loss"], rel=1e-5)
    summary = _summary(result.predictions)
    assert summary == pytest.approx(pinned["summary"], rel=1e-5)
