"""Linear probe for segmentation: how linearly decodable the frozen conv5 features are, per pixel."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.encoders import FeatureInfo
from cxrbench.protocol.heads.segmentation import MaskHead


class LinearHead(MaskHead):
    """A 1x1 conv on conv5 whose logits are bilinearly upsampled to the input size."""

    name = "linear"
    required_stages = ("conv5",)

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, n_classes, kernel_size=1)

    @classmethod
    def build(cls, feature_info: FeatureInfo, n_classes: int, image_size: int) -> LinearHead:
        return cls(feature_info.channels["conv5"], n_classes)

    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int] | None = None) -> Tensor:
        """B x n_classes x H x W logits; `out_size` defaults to 32 x the conv5 grid (exact for 224 px)."""
        x = features["conv5"]
        size = tuple(out_size) if out_size is not None else (32 * x.shape[-2], 32 * x.shape[-1])
        return F.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)
