"""The segmentation heads' training loss is the reference's: segmentation_models_pytorch
``DiceLoss(mode="binary")`` (classes pooled, no smoothing, zero for a batch without foreground)."""

from __future__ import annotations

import pytest
import torch
from segmentation_models_pytorch.losses import DiceLoss

from cxrbench.protocol.heads.segmentation import MaskHead, soft_dice_loss


@pytest.mark.parametrize("classes", [1, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_loss_equals_smp_binary_dice_loss(classes, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, classes, 16, 16, generator=g) * 3
    target = (torch.rand(4, classes, 16, 16, generator=g) < 0.2).float()
    target[1] = 0  # an image without foreground still counts in the pooled sums
    reference = DiceLoss(mode="binary")
    assert soft_dice_loss(logits, target).item() == pytest.approx(reference(logits, target).item(), abs=1e-6)
    mine = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    soft_dice_loss(mine, target).backward()
    reference(theirs, target).backward()
    torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-7, rtol=1e-4)


def test_dice_loss_is_zero_without_foreground_and_pools_classes():
    logits = torch.randn(2, 3, 8, 8)
    empty = torch.zeros(2, 3, 8, 8)
    assert soft_dice_loss(logits, empty).item() == 0.0 == DiceLoss(mode="binary")(logits, empty).item()
    # pooled over classes: a perfect class and an absent one give one Dice over all pixels
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0] = 1
    perfect = torch.where(target > 0, 30.0, -30.0)
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert MaskHead.training_loss(None, perfect, target).item() == pytest.approx(0.0, abs=1e-6)
