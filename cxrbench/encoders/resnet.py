"""The ResNet family (torchvision's, without classifier) behind the five-stage feature contract."""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

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

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        c1 = self.relu(self.bn1(self.conv1(x)))
        c2 = self.layer1(self.maxpool(c1))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"conv1": c1, "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c5}


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
