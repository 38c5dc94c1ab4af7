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
    assert protocol_hash(PROFILES["full"]) == "ce769d85d3bd15ed"
    assert protocol_hash(PROFILES["demo"]) == "c030cc2537cc1387"


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
        "val": {"dice": 0.08118734841524083, "dice_per_image": 0.07757379791822488},
        "test": {"dice": 0.08997955010224949, "dice_per_image": 0.08576121867700896},
        "best_epoch": 1,
        "val_loss": [0.9208853840827942, 0.9801630973815918, 0.9414514899253845, 0.921237587928772],
        "summary": {"pred_pixels": 114738, "gt_pixels": 8490},
    },
    # YOLO at a high lr, so that the test split gets boxes above the confidence threshold
    ("rsna_yolo_frozen_10", 1e-2): {
        "val": {
            "map": 0.0008521343937672456,
            "map50": 0.0011361791916896609,
            "kaggle_map": 0.008928571428571428,
        },
        "test": {"map": 0.00024752475247524753, "map50": 0.0, "kaggle_map": 0.002976190476190476},
        "best_epoch": 1,
        "val_loss": [103.99022674560547, 4554799.0, 34558084.0, 28614000.0],
        "summary": {"n_boxes": 99, "score_sum": 71.44299890100956, "box_sum": 18930.359664440155, "n_gt": 17},
    },
    # fine-tuning with a head-only warm-up, U-Net head (the reference ResUNet, with the demo's U-Net caps)
    ("covid_unet_finetune", None): {
        "val": {"dice": 0.054717672596058975, "dice_per_image": 0.05326231051104018},
        "test": {"dice": 0.04618099487247786, "dice_per_image": 0.04607510762181446},
        "best_epoch": 1,
        "val_loss": [0.9664426445960999],
        "summary": {"pred_pixels": 58679, "gt_pixels": 1389},
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
