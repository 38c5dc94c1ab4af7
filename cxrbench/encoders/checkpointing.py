"""Gradient checkpointing for BatchNorm networks that leaves their running statistics untouched.

`torch.utils.checkpoint` runs a module's forward twice (once more in the backward pass). For a
BatchNorm module in training mode the second run would update the running mean/var (and the batch
counter) a second time, so a checkpointed fine-tune would end with other buffers than an ordinary
one. `checkpointed` restores the buffers after the recomputation: the loss, the gradients and the
buffers equal those of the plain forward/backward (tests/test_encoder_families.py checks this).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def checkpointed(module: nn.Module, x: Tensor) -> Tensor:
    """`module(x)` with its activations recomputed in the backward pass instead of stored."""
    if not torch.is_grad_enabled():
        return module(x)
    calls = [0]

    def run(inp: Tensor) -> Tensor:
        calls[0] += 1
        if calls[0] == 1:
            return module(inp)
        saved = [(b, b.detach().clone()) for m in module.modules() if _has_stats(m) for b in m.buffers()]
        try:  # finally: the recomputation may stop early once the tensors backward needs exist
            return module(inp)
        finally:
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)

    return checkpoint(run, x, use_reentrant=False)


def _has_stats(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
