"""The two forms ground truth and predictions take between a head and a metric: masks or boxes.

A head produces one form and a metric consumes one; a task is valid only when they agree. The form
also fixes which arrays a run's predictions file holds (docs/contracts.md, "Predictions file").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TargetKind:
    """One form of targets: its name, the predictions-file keys, and its metrics-API conversions."""

    name: str
    prediction_keys: tuple[str, ...]
    to_numpy: Callable[[object], object]  # a batch of targets as TaskSplit.targets gives them
    empty: Callable[[], tuple[object, object]]  # (predictions, targets) of zero images

    def __repr__(self) -> str:
        return f"TargetKind({self.name!r})"


def _masks_to_numpy(targets: torch.Tensor) -> np.ndarray:
    return targets.numpy()


def _boxes_to_numpy(targets: list[torch.Tensor]) -> list[np.ndarray]:
    return [t.numpy() for t in targets]


MASKS = TargetKind(
    "masks",
    ("pred_masks", "gt_masks", "mask_shape"),
    _masks_to_numpy,
    lambda: (np.zeros((0, 1, 1, 1), bool), np.zeros((0, 1, 1, 1), bool)),
)
"""Boolean B x C x H x W masks (C classes) at the input resolution."""

BOXES = TargetKind(
    "boxes",
    ("pred_boxes", "pred_scores", "pred_offsets", "gt_boxes", "gt_offsets"),
    _boxes_to_numpy,
    lambda: ([], []),
)
"""Per image: predicted (boxes N x 4 xyxy pixels, scores N); ground truth M x 4 boxes."""

TARGET_KINDS: dict[str, TargetKind] = {kind.name: kind for kind in (MASKS, BOXES)}
