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
    assert protocol_hash(PROFILES["full"]) == "5f5b93981f180866"
    assert protocol_hash(PROFILES["demo"]) == "2a9cdf3d221b560b"


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
        "val": {"dice": 0.07704749301573298, "dice_per_image": 0.105886275437313},
        "test": {"dice": 0.20122302988346602, "dice_per_image": 0.20919532088447346},
        "best_epoch": 1,
        "val_loss": [0.9101564288139343, 0.9999967217445374, 1.0, 1.0],
        "summary": {"pred_pixels": 14444, "gt_pixels": 11557},
    },
    # the reference YOLOv3 head, frozen, at the task's default lr
    ("rsna_yolo_frozen_10", None): {
        "val": {
            "map": 0.0003093446586291331,
            "map50": 0.0004414113391884987,
            "map75": 0.0,
            "coco_map": 0.0,
            "kaggle_map": 0.0004080245694431076,
        },
        "test": {
            "map": 0.0005094351113568458,
            "map50": 0.0006636411779295736,
            "map75": 7.301615117263939e-06,
            "coco_map": 0.0,
            "kaggle_map": 0.0007995674074752261,
        },
        "best_epoch": 2,
        "val_loss": [
            1.16054105758667,
            1.1950581073760986,
            1.1561392545700073,
            1.0889248847961426,
            1.044835090637207,
        ],
        "summary": {
            "n_boxes": 7655,
            "score_sum": 3873.6142949163914,
            "box_sum": 1963921.7499804497,
            "n_gt": 25,
        },
    },
    # fine-tuning with a head-only warm-up, the reference ResUNet head (demo caps: 1 epoch)
    ("covid_unet_finetune", None): {
        "val": {"dice": 0.0399625171195848, "dice_per_image": 0.05209773452798302},
        "test": {"dice": 0.060749867358368216, "dice_per_image": 0.06673943970678513},
        "best_epoch": 1,
        "val_loss": [0.9758089184761047],
        "summary": {"pred_pixels": 65788, "gt_pixels": 2064},
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
