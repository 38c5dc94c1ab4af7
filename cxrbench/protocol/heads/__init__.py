"""Task heads on encoder features, registered by name (see base.py for the `Head` contract).

Built-in heads: "linear" (1x1 conv on conv5), "unet" (ResUNet over conv1..conv5 and the image), "yolo"
(three-scale YOLOv3). Segmentation heads return B x n_classes x H x W logits at `out_size`, the YOLO
head raw per-scale maps (see yolo.py). A new head: a `Head` subclass in its own module and one
`register_head` line below (or a call from outside the package).
"""

from __future__ import annotations

from cxrbench.protocol.heads.base import (
    Head,
    build_head,
    get_head,
    head_names,
    register_head,
    unregister_head,
)
from cxrbench.protocol.heads.linear import LinearHead
from cxrbench.protocol.heads.segmentation import MaskHead, soft_dice_loss
from cxrbench.protocol.heads.unet import UNetHead
from cxrbench.protocol.heads.yolo import YoloV3Head

register_head(LinearHead)
register_head(UNetHead)
register_head(YoloV3Head)

__all__ = [
    "Head",
    "LinearHead",
    "MaskHead",
    "UNetHead",
    "YoloV3Head",
    "build_head",
    "get_head",
    "head_names",
    "register_head",
    "soft_dice_loss",
    "unregister_head",
]
