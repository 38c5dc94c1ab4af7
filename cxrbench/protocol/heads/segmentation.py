"""What every segmentation head shares: the reference's soft Dice training loss and logits thresholded at 0.5."""

from __future__ import annotations

import numpy as np
from torch import Tensor
from torch.nn import functional as F

from cxrbench.protocol.heads.base import Head
from cxrbench.protocol.metrics.targets import MASKS


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """The reference's training loss, segmentation_models_pytorch ``DiceLoss(mode="binary")``: one soft
    Dice over every pixel of every class and image of the batch (classes pooled, as "binary" mode
    flattens them), 1 - 2 sum(p g) / max(sum(p) + sum(g), eps) with p = sigmoid probabilities, no
    smoothing; 0 for a batch without any foreground pixel."""
    probs = F.logsigmoid(logits.float()).exp()
    target = target.float()
    intersection = (probs * target).sum()
    cardinality = probs.sum() + target.sum()
    loss = 1.0 - 2.0 * intersection / cardinality.clamp_min(eps)
    return loss * (target.sum() > 0).to(loss.dtype)


class MaskHead(Head):
    """A head whose output is B x n_classes x H x W logits at the input size."""

    target = MASKS

    def training_loss(self, output: Tensor, targets: Tensor) -> Tensor:
        return soft_dice_loss(output, targets)

    def to_predictions(self, output: Tensor) -> np.ndarray:
        """Foreground where sigmoid(logit) >= 0.5, i.e. logit >= 0."""
        return (output.float() >= 0).cpu().numpy()
