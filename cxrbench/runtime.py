"""Where and how tensors are computed: device choice, the mixed-precision policy, seeding, and how
batches reach the device (loader workers, pinned memory, memory format).

One policy for every command, so that `evaluate`, `sweep` and `pretrain` run the same numerics on the
same hardware: bfloat16 autocast on CUDA when enabled; float32 on CPU and on GPUs without bfloat16
(bfloat16 keeps float32's range, so no loss scaling is ever needed).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

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


@dataclass(frozen=True)
class LoaderSettings:
    """How batches reach the device: `num_workers` processes gather them (0: this process does, in
    line with the step), `pin_memory` puts them in page-locked memory so host-to-GPU copies run
    asynchronously."""

    num_workers: int
    pin_memory: bool


MAX_LOADER_WORKERS = 4


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_settings(device: torch.device, cpu_count: int | None = None) -> LoaderSettings:
    """Loader settings for `device`. On the CPU none: batches are slices of in-memory tensors that the
    training process gathers itself (workers would only compete with the step for the same cores).
    On CUDA the GPU step is fast enough for gathering to matter: up to 4 workers, leaving one core to
    the training process, and pinned memory."""
    if device.type != "cuda":
        return LoaderSettings(0, False)
    cpus = usable_cpus() if cpu_count is None else cpu_count
    return LoaderSettings(max(0, min(MAX_LOADER_WORKERS, cpus - 1)), True)


def memory_format(device: torch.device) -> torch.memory_format:
    """The memory format of images and convolution weights: channels-last on CUDA (what its tensor
    cores run convolutions in under bfloat16, without layout transposes), the default elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def to_memory_format(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with its 4-D weights in `memory_format(device)` (unchanged off CUDA)."""
    fmt = memory_format(device)
    return module if fmt == torch.contiguous_format else module.to(memory_format=fmt)
