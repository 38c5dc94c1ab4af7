"""U-Net decoder on the encoder's skips (segmentation_models_pytorch's decoder, our encoder)."""

from __future__ import annotations

from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import Tensor

from cxrbench.encoders import FeatureInfo
from cxrbench.protocol.heads.segmentation import MaskHead

DECODER_CHANNELS = (256, 128, 64, 32, 16)


class UNetHead(MaskHead):
    """smp UnetDecoder over conv5 with skips conv4..conv1, then a 1x1 classifier at input resolution.

    smp's decoder uses the input-resolution stage only for its spatial size (its first feature is
    dropped, the last block has no skip), so the head needs the output size, not the image: cached
    frozen features suffice.
    """

    name = "unet"
    required_stages = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(self, feature_info: FeatureInfo, n_classes: int, decoder_channels=DECODER_CHANNELS):
        super().__init__()
        skips = [feature_info.channels[s] for s in self.required_stages]
        self.decoder = UnetDecoder(
            encoder_channels=[3, *skips], decoder_channels=decoder_channels, n_blocks=len(decoder_channels)
        )
        self.segmentation_head = SegmentationHead(decoder_channels[-1], n_classes, kernel_size=1)

    @classmethod
    def build(cls, feature_info: FeatureInfo, n_classes: int, image_size: int) -> UNetHead:
        return cls(feature_info, n_classes)

    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int] | None = None) -> Tensor:
        """B x n_classes x H x W logits; `out_size` defaults to 2 x the conv1 grid (the input size)."""
        c1 = features["conv1"]
        size = tuple(out_size) if out_size is not None else (2 * c1.shape[-2], 2 * c1.shape[-1])
        # A zero-channel tensor carries the input resolution (smp reads only its shape).
        carrier = c1.new_empty(c1.shape[0], 0, *size)
        stages = [carrier, *(features[s] for s in self.required_stages)]
        return self.segmentation_head(self.decoder(stages))
