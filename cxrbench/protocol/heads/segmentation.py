"""What every segmentation head shares: soft Dice training loss and logits thresholded at 0.5."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from cxrbench.protocol.heads.base import Head
from cxrbench.protocol.metrics.targets import MASKS


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 - soft Dice per class over the batch (sigmoid probabilities), averaged over classes."""
    probs = logits.float().sigmoid()
    target = target.float()
    dims = (0, 2, 3)
    intersection = (probs * target).sum(dims)
    denominator = probs.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * intersection + eps) / (denominator + eps)).mean()


class MaskHead(Head):
    """A head whose output is B x n_classes x H x W logits at the input size."""

    target = MASKS

    def training_loss(self, output: Tensor, targets: Tensor) -> Tensor:
        return soft_dice_loss(output, targets)

    def to_predictions(self, output: Tensor) -> np.ndarray:
        """Foreground where sigmoid(logit) >= 0.5, i.e. logit >= 0."""
        return (output.float() >= 0).cpu().numpy()
