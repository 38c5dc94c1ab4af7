"""Task heads on encoder features; heads never call the encoder, so frozen features can be cached.

Every head has `required_stages` and `forward(features, out_size=None)`; segmentation heads return
B x n_classes x H x W logits at `out_size`, the YOLO head raw per-scale maps (see yolo.py).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from cxrbench.encoders import FeatureInfo
from cxrbench.protocol.heads.linear import LinearHead
from cxrbench.protocol.heads.unet import UNetHead
from cxrbench.protocol.heads.yolo import YoloV3Head

HEAD_KINDS = ("linear", "unet", "yolo")

__all__ = ["HEAD_KINDS", "LinearHead", "UNetHead", "YoloV3Head", "build_head"]


def build_head(
    kind: Literal["linear", "unet", "yolo"], feature_info: FeatureInfo, n_classes: int, image_size: int = 224
) -> nn.Module:
    """Construct the head a task names; `image_size` only matters for YOLO anchors and box clipping."""
    if kind == "linear":
        return LinearHead(feature_info.channels["conv5"], n_classes)
    if kind == "unet":
        return UNetHead(feature_info, n_classes)
    if kind == "yolo":
        return YoloV3Head(feature_info, n_classes, image_size)
    raise ValueError(f"unknown head kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
