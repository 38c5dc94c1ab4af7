"""ImageNet weights already on this machine: cxrbench never downloads anything."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cxrbench.encoders.resnet import DEFAULT_ARCH
from cxrbench.errors import CheckpointError

IMAGENET_ENV = "CXRBENCH_IMAGENET_WEIGHTS"
IMAGENET_WEIGHTS_NAME = "ResNet50_Weights.IMAGENET1K_V1"
# IMAGENET1K_V1 of resnet50 (the weights the reference protocol used) is preferred when several exist.
_REFERENCE_DIGEST = "0676ba61"


def find_imagenet_weights(arch: str = DEFAULT_ARCH) -> Path:
    """Locate torchvision ImageNet weights already on disk ($CXRBENCH_IMAGENET_WEIGHTS, then the hub cache)."""
    env = os.environ.get(IMAGENET_ENV)
    if env:
        if not Path(env).is_file():
            raise CheckpointError(f"${IMAGENET_ENV} points to {env}, which is not a file")
        return Path(env)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(cache.glob(f"{arch}-*.pth"))
    found.sort(key=lambda p: _REFERENCE_DIGEST not in p.name)
    if found:
        return found[0]
    weights = IMAGENET_WEIGHTS_NAME if arch == "resnet50" else f"the torchvision {arch} IMAGENET1K_V1 weights"
    raise CheckpointError(
        f"ImageNet weights for {arch} not found (cxrbench never downloads). Download {weights} "
        f"(e.g. `python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\"` "
        f"on a machine with internet) and put the .pth file in {cache}, or set ${IMAGENET_ENV} to its path"
    )
