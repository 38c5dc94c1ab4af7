"""Linear probe for segmentation: how linearly decodable the frozen features are, per pixel.

It reads the encoder's probe stage (FeatureInfo.probe): conv5 for a ResNet, the last block's patch
grid for a ViT (not the pyramid's pooled conv5)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.encoders import FeatureInfo
from cxrbench.protocol.heads.segmentation import MaskHead


class LinearHead(MaskHead):
    """A 1x1 conv on the probe stage whose logits are bilinearly upsampled to the input size."""

    name = "linear"
    required_stages = ("conv5",)  # the default; an instance reads its encoder's probe stage

    def __init__(self, in_channels: int, n_classes: int, stage: str = "conv5", stride: int = 32):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, n_classes, kernel_size=1)
        self.required_stages = (stage,)
        self.stride = stride

    @classmethod
    def build(cls, feature_info: FeatureInfo, n_classes: int, image_size: int) -> LinearHead:
        probe = feature_info.probe
        return cls(feature_info.channels[probe], n_classes, probe, feature_info.strides[probe])

    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int] | None = None) -> Tensor:
        """B x n_classes x H x W logits; `out_size` defaults to stride x the grid (exact for 224 px)."""
        (stage,) = self.required_stages
        x = features[stage]
        size = (
            tuple(out_size)
            if out_size is not None
            else (self.stride * x.shape[-2], self.stride * x.shape[-1])
        )
        return F.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)
