"""The evaluation batch size: the largest that fits on CUDA, the protocol's fixed 64 elsewhere.

Evaluation keeps no activations for a backward pass, so on a GPU it can run far larger batches than
training. Rather than guess the memory an encoder and head need, `BatchSizer` starts large and halves
on an out-of-memory error, retrying the same images, and remembers the size that fitted for the
run's later passes. On the CPU the size stays 64 and nothing is retried, so numbers do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

CPU_EVAL_BATCH = 64
CUDA_EVAL_BATCH = 512


class BatchSizer:
    """Runs work over consecutive slices of items, at most `size` at a time; when `adaptive`, a
    slice that runs out of memory is retried in halves and `size` shrinks for the rest."""

    def __init__(self, size: int, adaptive: bool):
        self.size, self.adaptive = size, adaptive

    @classmethod
    def for_device(cls, device: torch.device) -> BatchSizer:
        if device.type == "cuda":
            return cls(CUDA_EVAL_BATCH, adaptive=True)
        return cls(CPU_EVAL_BATCH, adaptive=False)

    def run(self, n_items: int, work: Callable[[slice], T]) -> list[T]:
        """`work(slice)` over slices covering 0..n_items in order; the results in that order."""
        results: list[T] = []
        start = 0
        while start < n_items:
            stop = min(start + self.size, n_items)
            try:
                results.append(work(slice(start, stop)))
            except torch.OutOfMemoryError:
                if not self.adaptive or stop - start == 1:
                    raise
                _release_cached_memory()
                self.size = max(1, self.size // 2)
                continue
            start = stop
        return results


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
