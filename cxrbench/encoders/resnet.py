"""The ResNet family (torchvision's, without classifier) behind the five-stage feature contract."""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from cxrbench.encoders.checkpointing import checkpointed
from cxrbench.encoders.families import Family, StateDict, count_blocks, register_family
from cxrbench.encoders.features import FeatureInfo
from cxrbench.encoders.registry import register_encoder
from cxrbench.errors import CxrbenchError

# Block type and blocks per layer of each depth: what identifies the depth from a state dict's keys.
RESNET_LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
ARCHS = tuple(RESNET_LAYOUTS)
DEFAULT_ARCH = "resnet50"


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without classifier, returning the five feature stages.

    Sub-module names equal torchvision's, so a torchvision state dict (minus fc.*) loads unchanged.
    """

    def __init__(self, arch: str = DEFAULT_ARCH):
        super().__init__()
        if arch not in RESNET_LAYOUTS:
            raise CxrbenchError(f"unknown ResNet architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = type(net.layer1[0]).expansion
        self.feature_info = FeatureInfo.from_channels([64, *(64 * 2**i * expansion for i in range(4))])

    in_chans = 3
    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in the backward pass (fine-tuning large encoders)."""
        self.grad_checkpointing = enable

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        c1 = self.relu(self.bn1(self.conv1(x)))
        run = checkpointed if self.grad_checkpointing and self.training else _call
        c2 = run(self.layer1, self.maxpool(c1))
        c3 = run(self.layer2, c2)
        c4 = run(self.layer3, c3)
        c5 = run(self.layer4, c4)
        return {"conv1": c1, "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c5}


def _call(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


def detect_arch(state: StateDict) -> str | None:
    """ResNet depth from block type and per-layer block counts of an (un-prefixed) state dict."""
    signature = resnet_signature(state)
    return next((arch for arch, layout in RESNET_LAYOUTS.items() if layout == signature), None)


def resnet_signature(state: StateDict) -> tuple[str, tuple[int, ...]]:
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    return kind, count_blocks(state, r"layer{g}\.(\d+)\.", 5)[1:]


# A ResNet stem is a '...conv1.weight' with 3 input channels; an unknown layout falls back to ResNet-50.
RESNET_FAMILY = register_family(
    Family(
        name="resnet",
        stem_keys=("conv1.weight",),
        stem_ok=lambda t: t.ndim == 4 and t.shape[1] == 3,
        signature=resnet_signature,
        variants=dict(RESNET_LAYOUTS),
        ignored=("fc.",),
        default_arch=DEFAULT_ARCH,
        default_preset="dataset",
    )
)


@register_encoder
def resnet18() -> ResNetEncoder:
    return ResNetEncoder("resnet18")


@register_encoder
def resnet34() -> ResNetEncoder:
    return ResNetEncoder("resnet34")


@register_encoder
def resnet50() -> ResNetEncoder:
    return ResNetEncoder("resnet50")


@register_encoder
def resnet101() -> ResNetEncoder:
    return ResNetEncoder("resnet101")


@register_encoder
def resnet152() -> ResNetEncoder:
    return ResNetEncoder("resnet152")
