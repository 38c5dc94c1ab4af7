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
    assert protocol_hash(PROFILES["full"]) == "92673b64ffe31a54"
    assert protocol_hash(PROFILES["demo"]) == "49109839a950f2cc"


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
    # the reference YOLOv3 at the task's default lr (default init: the untrained head already puts
    # boxes above the 0.2 objectness threshold, so the predictions are pinned too)
    ("rsna_yolo_frozen_10", None): {
        "val": {"map": 0.0, "map50": 0.0, "map75": 0.0, "kaggle_map": 0.0004336533973340448},
        "test": {"map": 0.0, "map50": 0.0, "map75": 0.0, "kaggle_map": 0.00030176248918882515},
        "best_epoch": 1,
        "val_loss": [1.201414704322815, 1.2108392715454102, 1.132938027381897, 1.0768470764160156],
        "summary": {
            "n_boxes": 7754,
            "score_sum": 3944.3307541310787,
            "box_sum": 1990266.5932121277,
            "n_gt": 17,
        },
    },
    # fine-tuning with a head-only warm-up, U-Net head
    ("covid_unet_finetune", None): {
        "val": {"dice": 0.07498856881572931, "dice_per_image": 0.04646282299397309},
        "test": {"dice": 0.12040557667934093, "dice_per_image": 0.2413801661338122},
        "best_epoch": 6,
        "val_loss": [
            0.9665940999984741,
            0.9655635952949524,
            0.964617133140564,
            0.9640445709228516,
            0.9640016555786133,
            0.9640958309173584,
        ],
        "summary": {"pred_pixels": 189, "gt_pixels": 1389},
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
