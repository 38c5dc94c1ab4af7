"""The reference "ResUNet" decoder: a 2048-wide bridge on conv5, five transposed-convolution up-blocks
with skips conv4..conv1 and the input image itself, then a 1x1 classifier at input resolution.

Architecture as in the protocol (docs/protocol.md, Heads); the widths are fixed whatever the encoder
(only the skips' channels follow it), so a ResNet-18 gets the same decoder widths as a ResNet-50.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.encoders import INPUT, INPUT_CHANNELS, FeatureInfo
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.heads.segmentation import MaskHead

BRIDGE_WIDTH = 2048
UP_WIDTHS = (1024, 512, 256, 128, 64)
SKIPS = ("conv4", "conv3", "conv2", "conv1", INPUT)  # one per up-block, coarse to fine


class ConvBnRelu(nn.Sequential):
    """3x3 convolution (padding 1, with bias) -> batch norm -> ReLU: the decoder's building block."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed conv (k 2, s 2) to `width`, concatenated with the skip, then two ConvBnRelu."""

    def __init__(self, in_channels: int, skip_channels: int, width: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, width, kernel_size=2, stride=2)
        self.convs = nn.Sequential(ConvBnRelu(width + skip_channels, width), ConvBnRelu(width, width))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dh or dw:  # inputs not a multiple of 32: pad or crop the upsampled map to the skip's grid
            x = F.pad(x, (0, dw, 0, dh))
        return self.convs(torch.cat((x, skip.to(x.dtype)), dim=1))


class UNetHead(MaskHead):
    """Bridge (two ConvBnRelu, conv5 -> 2048) and up-blocks of widths 1024, 512, 256, 128, 64 on the
    skips conv4, conv3, conv2, conv1 and the input image, then a 1x1 convolution to the classes.

    The input image is the `INPUT` entry of the features (the training loop adds the normalised batch
    to cached or freshly computed encoder features alike), so the last up-block sees full resolution.
    """

    name = "unet"
    required_stages = ("conv1", "conv2", "conv3", "conv4", "conv5", INPUT)

    def __init__(
        self,
        feature_info: FeatureInfo,
        n_classes: int,
        bridge_width: int = BRIDGE_WIDTH,
        up_widths: Sequence[int] = UP_WIDTHS,
    ):
        super().__init__()
        if len(up_widths) != len(SKIPS):
            raise ValueError(f"need {len(SKIPS)} up-block widths (one per skip), got {len(up_widths)}")
        skip_channels = {**feature_info.channels, INPUT: INPUT_CHANNELS}
        self.bridge = nn.Sequential(
            ConvBnRelu(feature_info.channels["conv5"], bridge_width), ConvBnRelu(bridge_width, bridge_width)
        )
        widths = (bridge_width, *up_widths)
        self.up_blocks = nn.ModuleList(
            UpBlock(widths[i], skip_channels[skip], widths[i + 1]) for i, skip in enumerate(SKIPS)
        )
        self.classifier = nn.Conv2d(up_widths[-1], n_classes, kernel_size=1)

    @classmethod
    def build(cls, feature_info: FeatureInfo, n_classes: int, image_size: int) -> UNetHead:
        return cls(feature_info, n_classes)

    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int] | None = None) -> Tensor:
        """B x n_classes x H x W logits at the input image's size (resized to `out_size` if that differs)."""
        if INPUT not in features:
            raise CxrbenchError(
                f"the U-Net head needs features[{INPUT!r}], the normalised input image (B x 3 x H x W)"
            )
        x = self.bridge(features["conv5"])
        for block, skip in zip(self.up_blocks, SKIPS, strict=True):
            x = block(x, features[skip])
        logits = self.classifier(x)
        if out_size is not None and tuple(out_size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits
