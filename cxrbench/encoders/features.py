"""The feature contract between encoders and heads: five stages conv1..conv5 at strides 2..32.

Every encoder returns a dict {stage: B x C x H/stride x W/stride} and describes it with a FeatureInfo,
so heads (and the feature cache) can be built from the description alone, whatever the family. An
encoder whose own outputs are not these stages (a ViT's tapped blocks) also provides a trainable
neck that makes them (see neck.py); heads always read the neck's output.

`INPUT` is not an encoder stage: a head that lists it in its `required_stages` also gets the
normalised input image (B x 3 x H x W, stride 1) under that name, from the training loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")
STRIDES = {"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32}
INPUT = "input"  # the normalised input image a head may read beside the stages (never cached)
INPUT_CHANNELS = 3  # the grey image repeated to 3 channels, as every encoder receives it


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and strides (relative to the input) of each feature stage conv1..conv5.

    `probe` names the stage a linear probe reads: the encoder's last representation at its own
    resolution (conv5 for a ResNet; a ViT's neck adds its last block's patch grid as "last").
    """

    channels: dict[str, int]
    strides: dict[str, int]
    probe: str = "conv5"

    @classmethod
    def from_channels(cls, widths: Sequence[int]) -> FeatureInfo:
        """The contract's strides with one channel width per stage, conv1 first."""
        if len(widths) != len(STAGES):
            raise ValueError(f"need {len(STAGES)} channel widths (one per stage), got {len(widths)}")
        return cls(channels=dict(zip(STAGES, widths)), strides=dict(STRIDES))
