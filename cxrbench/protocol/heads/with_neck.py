"""A task head behind its encoder's neck: what the training loop optimises, copies and switches mode.

The neck (encoders/neck.py: identity for ResNets, the simple feature pyramid for ViTs) belongs to
the head, so the pair is one module: its parameters are the head's parameter group (they train in
frozen tasks too, and count as head parameters), its state is the head's best state, and its
`required_stages` are the encoder outputs the neck reads, which is what the feature cache stores.
"""

from __future__ import annotations

from torch import Tensor, nn

from cxrbench.encoders import INPUT, build_neck, neck_feature_info
from cxrbench.protocol.heads.base import Head


class HeadWithNeck(nn.Module):
    """`head(neck(encoder features))`, with the head's loss and decoding."""

    def __init__(self, neck: nn.Module, head: Head):
        super().__init__()
        self.neck, self.head = neck, head
        self.name, self.target = head.name, head.target
        self.reads_input = INPUT in head.required_stages
        self.required_stages = tuple(neck.inputs) + ((INPUT,) if self.reads_input else ())

    def __getattr__(self, name: str):
        """Anything else a head offers (e.g. a head-specific decoding option) is the inner head's."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            head = self.__dict__.get("_modules", {}).get("head")
            if head is None:  # not built yet (or being copied)
                raise
            return getattr(head, name)

    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int] | None = None) -> object:
        staged = self.neck({k: v for k, v in features.items() if k != INPUT})
        if self.reads_input:  # the image skip (ResUNet) bypasses the neck; a grey 1-channel input is repeated
            image = features[INPUT]
            staged = {**staged, INPUT: image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image}
        return self.head(staged, out_size)

    def training_loss(self, output: object, targets: object) -> Tensor:
        return self.head.training_loss(output, targets)

    def to_predictions(self, output: object) -> object:
        return self.head.to_predictions(output)


def build_head_with_neck(
    head_class: type[Head], encoder: nn.Module, n_classes: int, image_size: int
) -> HeadWithNeck:
    """The head a task names, built from what `encoder`'s neck offers, behind a neck for its stages."""
    head = head_class.build(neck_feature_info(encoder), n_classes, image_size)
    return HeadWithNeck(build_neck(encoder, tuple(s for s in head.required_stages if s != INPUT)), head)
