"""Where and how tensors are computed: device choice, the mixed-precision policy, seeding.

One policy for every command, so that `evaluate`, `sweep` and `pretrain` run the same numerics on the
same hardware: bfloat16 autocast on CUDA when enabled; float32 on CPU and on GPUs without bfloat16
(bfloat16 keeps float32's range, so no loss scaling is ever needed).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import numpy as np
import torch

from cxrbench.errors import CxrbenchError


def resolve_device(spec: str) -> torch.device:
    """The device for `spec`: "auto" (CUDA when available, else CPU) or a torch device string that
    must exist on this machine."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise CxrbenchError(f"invalid --device {spec!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CxrbenchError("--device cuda requested but CUDA is not available on this machine")
    return device


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The mixed-precision dtype on `device`, or None when computation stays in float32."""
    if not enabled or device.type != "cuda" or not _cuda_bf16():
        return None
    return torch.bfloat16


@functools.cache
def _cuda_bf16() -> bool:
    return torch.cuda.is_bf16_supported()


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """A context that runs its forward passes under the policy's mixed precision (a no-op off CUDA)."""
    dtype = autocast_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def autocast_factory(
    device: torch.device, enabled: bool = True
) -> Callable[[], contextlib.AbstractContextManager]:
    """`autocast` as a zero-argument factory, for code that opens a fresh context per batch."""
    return functools.partial(autocast, device, enabled)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU) and NumPy's global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
