"""The stride-2 level of encoders whose first feature map is at stride 4 (ConvNeXt, Swin).

The contract asks for conv1 at stride 2 (the U-Net's finest skip). A patchify stem computes nothing
at that resolution, so conv1 is the stride-4 map upsampled 2x: bilinear, parameter-free, documented
in docs/protocol.md. It adds no information; it keeps every head's wiring the same for all families.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def stride2_from_stride4(x: Tensor) -> Tensor:
    """B x C x H x W -> B x C x 2H x 2W (bilinear, align_corners=False)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
