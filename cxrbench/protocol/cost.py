"""What a run costs: parameters, peak memory and training throughput, stored in every run record.

Encoders differ by orders of magnitude in size and speed; a score is only half the story without
them. Peak memory is CUDA's max allocated memory during the run on a GPU; on the CPU it is the
process's peak resident set size (an upper bound: it includes everything the process held before).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

CUDA_PEAK = "cuda_max_allocated"
CPU_PEAK = "cpu_max_rss"


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int | None, str | None]:
    """(bytes, what was measured); (None, None) where neither measure exists (e.g. Windows CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), CUDA_PEAK
    try:
        import resource
    except ImportError:
        return None, None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), CPU_PEAK  # macOS: bytes, Linux: KiB
