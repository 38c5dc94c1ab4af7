"""The trainable neck between an encoder's own outputs and the stages heads read.

A ResNet already returns the contract's stages conv1..conv5, so its neck is the identity. A ViT
returns patch grids of a few tapped blocks; its neck (pyramid.py) resamples them to the contract's
strides with learned layers. The neck belongs to the head: it trains in frozen tasks (the encoder
does not), its parameters count as head parameters, and the frozen-feature cache stores the
encoder's outputs before it, so cached and uncached runs feed the same neck.

An encoder family with a neck gives the encoder two members: `neck_info` (the FeatureInfo heads are
built from) and `build_neck(stages)` (a module producing just those stages). Families without them
get the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cxrbench.encoders.features import FeatureInfo


class IdentityNeck(nn.Module):
    """Passes the requested encoder stages through unchanged (no parameters)."""

    def __init__(self, feature_info: FeatureInfo, stages: Sequence[str]):
        super().__init__()
        self.feature_info = feature_info
        self.inputs = tuple(stages)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {s: features[s] for s in self.inputs}


def neck_feature_info(encoder: nn.Module) -> FeatureInfo:
    """The stages heads may read for `encoder`: its neck's output, or its own features (identity)."""
    return getattr(encoder, "neck_info", None) or encoder.feature_info


def build_neck(encoder: nn.Module, stages: Sequence[str]) -> nn.Module:
    """A freshly initialised neck producing `stages` from `encoder`'s outputs.

    The module has `inputs` (the encoder stages it reads: what the feature cache must hold) and
    `feature_info`; its forward maps the encoder's output dict to a dict with `stages`.
    """
    make = getattr(encoder, "build_neck", None)
    if make is not None:
        return make(stages)
    return IdentityNeck(encoder.feature_info, stages)
