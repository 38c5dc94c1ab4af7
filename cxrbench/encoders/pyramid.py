"""The simple feature pyramid that turns a ViT's tapped blocks into the five contract stages.

As MMSeg's Feature2Pyramid (rescales 4, 2, 1, 0.5): the four tapped blocks' patch grids, all at the
nominal stride 16, become conv2 (stride 4: two 2x2 transposed convolutions with batch norm and GELU
between), conv3 (stride 8: one transposed convolution), conv4 (stride 16: identity) and conv5
(stride 32: 2x2 max-pool), first tap to last. The U-Net's conv1 skip (stride 2) continues from conv2
with batch norm, GELU and one more transposed convolution to a quarter of the width (ResNet-50's
conv1/conv2 ratio). The stage `last` is the last block's grid itself, which the linear probe reads.

Only the modules the head's stages need are built, so unused layers neither train nor count.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cxrbench.encoders.features import STRIDES, FeatureInfo
from cxrbench.errors import CxrbenchError

PROBE_STAGE = "last"
GRID_STRIDE = 16
# Which tap (0..3, first block to last) each output stage is computed from.
SOURCE_TAP = {"conv1": 0, "conv2": 0, "conv3": 1, "conv4": 2, "conv5": 3, PROBE_STAGE: 3}


def pyramid_info(width: int) -> FeatureInfo:
    """What the pyramid offers heads for a ViT of embedding width `width`."""
    channels = {"conv1": max(1, width // 4), "conv2": width, "conv3": width, "conv4": width, "conv5": width}
    strides = dict(STRIDES)
    channels[PROBE_STAGE], strides[PROBE_STAGE] = width, GRID_STRIDE
    return FeatureInfo(channels=channels, strides=strides, probe=PROBE_STAGE)


def _up(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)


def _bn_gelu(width: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(width), nn.GELU())


class SimplePyramid(nn.Module):
    """Four tapped stride-16 grids (named `taps`, first to last) -> the requested `stages`."""

    def __init__(self, width: int, taps: Sequence[str], stages: Sequence[str]):
        super().__init__()
        if len(taps) != 4:
            raise CxrbenchError(f"the simple pyramid needs 4 tapped blocks, got {len(taps)}")
        self.feature_info = pyramid_info(width)
        unknown = [s for s in stages if s not in SOURCE_TAP]
        if unknown:
            raise CxrbenchError(f"a ViT provides no stage {unknown[0]!r}; it has {', '.join(SOURCE_TAP)}")
        self.stages = tuple(stages)
        self.taps = tuple(taps)
        wanted = set(stages)
        if wanted & {"conv1", "conv2"}:
            self.to_stride4 = nn.Sequential(_up(width, width), _bn_gelu(width), _up(width, width))
        if "conv1" in wanted:
            self.to_stride2 = nn.Sequential(_bn_gelu(width), _up(width, self.feature_info.channels["conv1"]))
        if "conv3" in wanted:
            self.to_stride8 = _up(width, width)
        if "conv5" in wanted:
            self.to_stride32 = nn.MaxPool2d(kernel_size=2, stride=2)
        used = sorted({SOURCE_TAP[s] for s in stages})
        self.inputs = tuple(dict.fromkeys(self.taps[i] for i in used))

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        tap = lambda s: features[self.taps[SOURCE_TAP[s]]]  # noqa: E731
        out: dict[str, Tensor] = {}
        wanted = set(self.stages)
        if wanted & {"conv1", "conv2"}:
            c2 = self.to_stride4(tap("conv2"))
            if "conv2" in wanted:
                out["conv2"] = c2
            if "conv1" in wanted:
                out["conv1"] = self.to_stride2(c2)
        if "conv3" in wanted:
            out["conv3"] = self.to_stride8(tap("conv3"))
        if "conv4" in wanted:
            out["conv4"] = tap("conv4")
        if "conv5" in wanted:
            out["conv5"] = self.to_stride32(tap("conv5"))
        if PROBE_STAGE in wanted:
            out[PROBE_STAGE] = tap(PROBE_STAGE)
        return {s: out[s] for s in self.stages}
