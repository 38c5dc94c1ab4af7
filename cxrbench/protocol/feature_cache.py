"""Frozen-encoder feature cache: encode each image once, reuse the features every epoch.

The protocol uses no augmentation and a frozen encoder stays in eval mode, so its features for an
image never change during a frozen task. Caching them turns every epoch after the first into
head-only work. The cache lives in memory (float32, so predictions are identical to the uncached
path) and is used only when it fits `budget_bytes`; otherwise training falls back to encoding
each batch. It holds the encoder's outputs before the neck (encoders/neck.py), which trains with the
head: a ViT's cache is its tapped patch grids, not the pyramid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from cxrbench.encoders import FeatureInfo

DEFAULT_BUDGET_BYTES = 6 * 1024**3


def cache_bytes(feature_info: FeatureInfo, stages: Sequence[str], n_images: int, resolution: int) -> int:
    """Bytes a float32 cache of `stages` for `n_images` images would take."""
    per_image = sum(feature_info.channels[s] * (resolution // feature_info.strides[s]) ** 2 for s in stages)
    return 4 * per_image * n_images


@torch.no_grad()
def encode_all(
    encoder: nn.Module,
    n_images: int,
    batch_input: Callable[[Tensor], Tensor],
    stages: Sequence[str],
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], object],
) -> dict[str, Tensor]:
    """Features of every image (`batch_input(index)` gives the normalised batch), on the CPU."""
    encoder.eval()
    parts: dict[str, list[Tensor]] = {s: [] for s in stages}
    for start in range(0, n_images, batch_size):
        index = torch.arange(start, min(start + batch_size, n_images))
        with autocast():
            feats = encoder(batch_input(index).to(device, non_blocking=True))
        for s in stages:
            parts[s].append(feats[s].float().cpu())
    return {s: torch.cat(parts[s]) for s in stages}
