"""The DenseNet family (torchvision's, and torchxrayvision's 1-channel variant) behind the feature contract.

Sub-module names equal torchvision's (`features.conv0`, `features.denseblock1.denselayer1.norm1`,
...), which torchxrayvision's DenseNet also uses, so both state dicts load unchanged; the oldest
torchvision layout (`norm.1`) is renamed on load. Stages: conv1 = relu(norm0(conv0)) at stride 2,
conv2..conv4 = the outputs of dense blocks 1..3 (strides 4, 8, 16), conv5 = relu(norm5(block 4)) at
stride 32; the transitions between blocks do the downsampling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from cxrbench.encoders.checkpointing import checkpointed
from cxrbench.encoders.families import Family, StateDict, count_blocks, register_family
from cxrbench.encoders.features import FeatureInfo
from cxrbench.encoders.registry import register_encoder


@dataclass(frozen=True)
class DenseNetConfig:
    """What identifies a DenseNet: input channels, stem width, growth rate, layers per dense block."""

    in_chans: int
    num_init_features: int
    growth_rate: int
    block_config: tuple[int, ...]


DENSENET_VARIANTS: dict[str, DenseNetConfig] = {
    "densenet121": DenseNetConfig(3, 64, 32, (6, 12, 24, 16)),
    "densenet161": DenseNetConfig(3, 96, 48, (6, 12, 36, 24)),
    "densenet169": DenseNetConfig(3, 64, 32, (6, 12, 32, 32)),
    "densenet201": DenseNetConfig(3, 64, 32, (6, 12, 48, 32)),
    # torchxrayvision's DenseNet-121: 1 input channel, images scaled to [-1024, 1024] (preset "xrv")
    "xrv_densenet121": DenseNetConfig(1, 64, 32, (6, 12, 24, 16)),
}


class DenseNetEncoder(nn.Module):
    """A torchvision DenseNet without classifier (optionally with a 1-channel stem), five stages."""

    grad_checkpointing = False

    def __init__(self, config: DenseNetConfig):
        super().__init__()
        net = torchvision.models.DenseNet(
            growth_rate=config.growth_rate,
            block_config=tuple(config.block_config),
            num_init_features=config.num_init_features,
        )
        if config.in_chans != 3:
            net.features.conv0 = nn.Conv2d(config.in_chans, config.num_init_features, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(net.features.conv0.weight)
        self.config = config
        self.in_chans = config.in_chans
        self.features = net.features
        self.feature_info = FeatureInfo.from_channels(stage_channels(config))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each dense block's activations in the backward pass."""
        self.grad_checkpointing = enable

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.features
        run = checkpointed if self.grad_checkpointing and self.training else _call
        c1 = f.relu0(f.norm0(f.conv0(x)))
        c2 = run(f.denseblock1, f.pool0(c1))
        c3 = run(f.denseblock2, f.transition1(c2))
        c4 = run(f.denseblock3, f.transition2(c3))
        c5 = F.relu(f.norm5(run(f.denseblock4, f.transition3(c4))))
        return {"conv1": c1, "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c5}


def _call(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


def stage_channels(config: DenseNetConfig) -> list[int]:
    """Channels of conv1..conv5: each block adds growth_rate per layer, each transition halves."""
    widths = [config.num_init_features]
    width = config.num_init_features
    for i, layers in enumerate(config.block_config):
        width += layers * config.growth_rate
        widths.append(width)
        if i < len(config.block_config) - 1:
            width //= 2
    return widths


def densenet_signature(state: StateDict) -> DenseNetConfig | None:
    stem = state.get("features.conv0.weight")
    growth = state.get("features.denseblock1.denselayer1.conv2.weight")
    if stem is None or growth is None or stem.ndim != 4:
        return None
    blocks = count_blocks(state, r"features\.denseblock{g}\.denselayer(\d+)\.", 5)[1:]
    return DenseNetConfig(int(stem.shape[1]), int(stem.shape[0]), int(growth.shape[0]), blocks)


_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def rename_old_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Pre-0.3 torchvision names ('denselayer1.norm.1.weight') -> current ones ('norm1.weight')."""
    out = {}
    for key, value in state.items():
        match = _OLD_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def register_densenet_variant(name: str, config: DenseNetConfig) -> None:
    """Add a DenseNet size (registry builder `name` + checkpoint detection), e.g. a tiny one for tests."""
    DENSENET_VARIANTS[name] = config
    if config.in_chans == 1:  # a 1-channel stem is torchxrayvision's layout: its preprocessing too
        DENSENET_FAMILY.presets[name] = "xrv"

    def builder() -> DenseNetEncoder:
        return DenseNetEncoder(config)

    builder.__name__ = name
    register_encoder(builder)


DENSENET_FAMILY = register_family(
    Family(
        name="densenet",
        stem_keys=("features.conv0.weight",),
        stem_ok=lambda t: t.ndim == 4 and t.shape[1] in (1, 3),
        signature=densenet_signature,
        variants=DENSENET_VARIANTS,
        convert=rename_old_keys,
        ignored=("classifier.", "op_threshs", "upsample."),
    )
)
for _name, _config in list(DENSENET_VARIANTS.items()):
    register_densenet_variant(_name, _config)
