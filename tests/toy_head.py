"""A toy task head registered from outside the package (a test of the head registry).

It differs from every built-in head in what the contract lets a head choose: its feature stage
(conv4 only), its loss (pixel-wise BCE, not soft Dice) and its upsampling (nearest).
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.encoders import FeatureInfo
from cxrbench.protocol.heads import Head, register_head
from cxrbench.protocol.metrics import MASKS


class Conv4BceHead(Head):
    """A 1x1 conv on conv4, nearest-upsampled to the input size, trained with BCE."""

    name = "toy_conv4_bce"
    target = MASKS
    required_stages = ("conv4",)

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, n_classes, kernel_size=1)

    @classmethod
    def build(cls, feature_info: FeatureInfo, n_classes: int, image_size: int) -> Conv4BceHead:
        return cls(feature_info.channels["conv4"], n_classes)

    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int] | None = None) -> Tensor:
        x = features["conv4"]
        size = tuple(out_size) if out_size is not None else (16 * x.shape[-2], 16 * x.shape[-1])
        return F.interpolate(self.classifier(x), size=size, mode="nearest")

    def training_loss(self, output: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(output.float(), targets.float())

    def to_predictions(self, output: Tensor) -> np.ndarray:
        return (output.float() >= 0).cpu().numpy()


def register_toy_head() -> type[Head]:
    return register_head(Conv4BceHead, replace=True)
