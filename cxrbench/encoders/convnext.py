"""The ConvNeXt family (timm's `ConvNeXt`, as `features_only` reads it) behind the feature contract.

Sub-module names equal timm's (`stem`, `stages.N`), so a timm ConvNeXt state dict loads unchanged
(its classifier `head.*` is ignored). ConvNeXt's stem is a stride-4 patchify convolution, so the net
has no stride-2 map: conv2..conv5 are the outputs of stages 0..3 (strides 4, 8, 16, 32, as timm's
`features_only` gives them) and conv1 is conv2 upsampled 2x (bilinear, no parameters). conv1 thus
carries no detail finer than stride 4; a U-Net's conv1 skip sees the same information as conv2.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.models.convnext import ConvNeXt
from torch import Tensor, nn

from cxrbench.encoders.families import Family, StateDict, count_blocks, register_family
from cxrbench.encoders.features import FeatureInfo
from cxrbench.encoders.registry import register_encoder
from cxrbench.encoders.upsampled import stride2_from_stride4


@dataclass(frozen=True)
class ConvNeXtConfig:
    """What identifies a timm ConvNeXt: blocks and width per stage, MLP as 1x1 convs, input channels."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    conv_mlp: bool = False
    in_chans: int = 3


CONVNEXT_VARIANTS: dict[str, ConvNeXtConfig] = {
    "convnext_atto": ConvNeXtConfig((2, 2, 6, 2), (40, 80, 160, 320), conv_mlp=True),
    "convnext_femto": ConvNeXtConfig((2, 2, 6, 2), (48, 96, 192, 384), conv_mlp=True),
    "convnext_pico": ConvNeXtConfig((2, 2, 6, 2), (64, 128, 256, 512), conv_mlp=True),
    "convnext_nano": ConvNeXtConfig((2, 2, 8, 2), (80, 160, 320, 640), conv_mlp=True),
    "convnext_tiny": ConvNeXtConfig((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ConvNeXtConfig((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ConvNeXtConfig((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ConvNeXtConfig((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": ConvNeXtConfig((3, 3, 27, 3), (256, 512, 1024, 2048)),
}


class ConvNeXtEncoder(nn.Module):
    """timm ConvNeXt stem and stages (no classifier), five stages (conv1 upsampled from conv2)."""

    def __init__(self, config: ConvNeXtConfig):
        super().__init__()
        net = ConvNeXt(
            in_chans=config.in_chans,
            num_classes=0,
            depths=config.depths,
            dims=config.dims,
            conv_mlp=config.conv_mlp,
            drop_path_rate=0.0,
        )
        self.config = config
        self.in_chans = config.in_chans
        self.stem, self.stages = net.stem, net.stages
        dims = list(config.dims)
        self.feature_info = FeatureInfo.from_channels([dims[0], *dims])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's own checkpointing of each stage's blocks."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        c2, c3, c4, c5 = maps
        return {"conv1": stride2_from_stride4(c2), "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c5}


def convnext_signature(state: StateDict) -> ConvNeXtConfig | None:
    fc1 = state.get("stages.0.blocks.0.mlp.fc1.weight")
    stem = state.get("stem.0.weight")
    if fc1 is None or stem is None or stem.ndim != 4:
        return None
    depths = count_blocks(state, r"stages\.{g}\.blocks\.(\d+)\.", 4)
    dims = tuple(int(state[f"stages.{i}.blocks.0.conv_dw.weight"].shape[0]) for i in range(4) if depths[i])
    if len(dims) != 4:
        return None
    return ConvNeXtConfig(depths, dims, conv_mlp=fc1.ndim == 4, in_chans=int(stem.shape[1]))


def register_convnext_variant(name: str, config: ConvNeXtConfig) -> None:
    """Add a ConvNeXt size (registry builder `name` + checkpoint detection), e.g. a tiny one for tests."""
    CONVNEXT_VARIANTS[name] = config

    def builder() -> ConvNeXtEncoder:
        return ConvNeXtEncoder(config)

    builder.__name__ = name
    register_encoder(builder)


register_family(
    Family(
        name="convnext",
        stem_keys=("stem.0.weight",),
        signature=convnext_signature,
        variants=CONVNEXT_VARIANTS,
        ignored=("head.", "norm_pre."),
    )
)
for _name, _config in list(CONVNEXT_VARIANTS.items()):
    register_convnext_variant(_name, _config)
