"""A toy pre-training method registered from outside the package, and a DDP worker for the tests.

Lives in its own module so that `torch.multiprocessing.spawn` children can import the worker.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from cxrbench.baselines import MethodConfig, register_method
from cxrbench.baselines.losses import moment_matching_prior
from cxrbench.baselines.models import PretrainOutputs


def region_spread(out: PretrainOutputs) -> Tensor:
    """Toy local term: the moment-matching prior on image regions only."""
    return moment_matching_prior(out.image_local)


TOY = MethodConfig(
    "toy_global_spread",
    pooling="avg",
    extra_loss=region_spread,
    extra_weight=0.5,
    description="toy: global InfoNCE + moment-matching prior on image regions (a test of the registry)",
)


def register_toy() -> MethodConfig:
    return register_method(TOY.name, TOY, replace=True)


def ddp_worker(rank: int, world_size: int, port: int, method: str, data: str, out: str, profile) -> None:
    """One rank of a gloo DDP run on CPU, with the environment torchrun would set."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from cxrbench.baselines.training import pretrain

    result = pretrain(method, data, out, profile, device="cpu")
    torch.save({"rank": rank, "epochs": len(result.history)}, f"{out}/rank{rank}.pt")
