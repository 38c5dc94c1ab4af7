"""What a protocol run will cost before it starts: runs, images and an estimated wall time per task.

`plan_costs` counts, per task as the profile runs it, the runs (the lr-search grid, one seed each,
plus the final seeds), the images of each split, the epoch cap, and the worst-case image-steps (every
run trains to its epoch cap). `probe_throughput` measures, on this device with this encoder, a few
training and evaluation steps of each head kind (and the encoder alone, for cached frozen tasks), so
the plan can turn the counts into seconds. The estimate is an upper bound in epochs (early stopping
only shortens runs) and ignores data loading and start-up. `cxrbench plan` prints it and
`cxrbench sweep` sizes Slurm time limits with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxrbench.encoders import INPUT
from cxrbench.protocol.feature_cache import (
    DEFAULT_DISK_BUDGET_BYTES,
    DEFAULT_MEMORY_BUDGET_BYTES,
    NONE,
    cache_bytes,
    cache_kind,
)
from cxrbench.protocol.feature_disk import free_bytes
from cxrbench.protocol.heads import get_head
from cxrbench.protocol.heads.with_neck import build_head_with_neck
from cxrbench.protocol.metrics import MASKS
from cxrbench.protocol.tasks import Profile, Task
from cxrbench.protocol.training import encoder_stages

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Throughput:
    """Measured seconds per image on one device: the encoder alone (no gradient), and per (head, mode)
    a training step and an evaluation step (frozen: the head on given features; fine-tune: encoder and
    head together)."""

    encode_s: float
    train_s: Mapping[tuple[str, str], float]
    eval_s: Mapping[tuple[str, str], float]
    device: str
    batch_size: int


@dataclass(frozen=True)
class TaskCost:
    """One task's planned work; ``seconds`` is None without a throughput probe."""

    task_id: str
    head: str
    mode: str
    lr_search_runs: int
    final_runs: int
    images: Mapping[str, int]
    epoch_cap: int
    # frozen tasks: "memory", "disk" (memmapped temporary files), "none" (over both budgets: encoded at
    # every step); "-" for fine-tune tasks (protocol/feature_cache.py)
    feature_cache: str
    cache_bytes: int
    seconds: float | None
    # of `seconds`, the task's one encoding of its images into the cache (shared by its runs under
    # `evaluate`; a sweep job, one run, encodes them itself)
    cache_seconds: float = 0.0

    @property
    def runs(self) -> int:
        return self.lr_search_runs + self.final_runs

    @property
    def image_steps(self) -> int:
        """Worst case: every run trains its epoch cap over the train split (warm-up steps aside)."""
        return self.runs * self.epoch_cap * self.images["train"]


def split_sizes(data_root: Path, task: Task, profile: Profile) -> dict[str, int]:
    """Images per split the task uses (its train subset and validation share; the profile's caps applied)."""
    from cxrbench.protocol.task_data import open_task_dataset, task_split_source

    dataset = open_task_dataset(data_root, task.dataset)
    sizes = {}
    for split in SPLITS:
        n = len(task_split_source(dataset, task, split))
        limit = profile.max_images(task, split)
        sizes[split] = n if limit is None else min(n, limit)
    return sizes


def plan_costs(
    tasks: Sequence[Task],
    profile: Profile,
    seeds: int,
    sizes: Mapping[str, Mapping[str, int]],
    feature_info,
    throughput: Throughput | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    disk_budget_bytes: int = DEFAULT_DISK_BUDGET_BYTES,
    disk_free_bytes: Callable[[], int] = free_bytes,
) -> list[TaskCost]:
    """The cost of each task (`sizes`: task id -> split -> images; `feature_info`: the encoder's), with
    the feature cache each frozen task would use under the memory and disk budgets."""
    costs = []
    for protocol_task in tasks:
        task = profile.apply(protocol_task)
        images = dict(sizes[task.task_id])
        n_grid = len(task.lr_grid) if len(task.lr_grid) > 1 else 0
        stages = encoder_stages(get_head(task.head).required_stages)  # the image itself is never cached
        need = sum(cache_bytes(feature_info, stages, n, profile.resolution) for n in images.values())
        if not task.frozen:
            cache = "-"
        else:
            cache = cache_kind(need, True, memory_budget_bytes, disk_budget_bytes, disk_free_bytes)
        cost = TaskCost(
            task.task_id, task.head, task.mode, n_grid, seeds, images, task.max_epochs, cache, need, None
        )
        if throughput is not None:
            seconds, once = _seconds(task, cost, throughput)
            cost = TaskCost(**{**cost.__dict__, "seconds": seconds, "cache_seconds": once})
        costs.append(cost)
    return costs


def _seconds(task: Task, cost: TaskCost, tp: Throughput) -> tuple[float, float]:
    """(the task's estimated seconds, of which its one-time feature-cache encoding)"""
    key = (task.head, task.mode)
    train, val, test = (cost.images[s] for s in SPLITS)
    train_s, eval_s = tp.train_s[key], tp.eval_s[key]
    per_run = cost.epoch_cap * (train * train_s + val * eval_s) + test * eval_s
    per_task = 0.0
    if task.frozen and cost.feature_cache != NONE:
        per_task = (train + val + test) * tp.encode_s  # encoded once, shared by the task's runs
    elif task.frozen:  # encoded again at every step
        per_run += (cost.epoch_cap * (train + val) + test) * tp.encode_s
    else:
        per_run += task.warmup_steps * task.batch_size * train_s
    return cost.runs * per_run + per_task, per_task


def _synthetic_targets(head: str, batch: int, resolution: int, n_classes: int, device) -> object:
    if get_head(head).target is MASKS:
        masks = torch.zeros(batch, n_classes, resolution, resolution, dtype=torch.bool)
        masks[..., resolution // 4 : resolution // 2, resolution // 4 : resolution // 2] = True
        return masks.to(device)
    box = torch.tensor([[resolution / 4, resolution / 4, resolution / 2, resolution / 2]])
    return [box.to(device) for _ in range(batch)]


def _timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    step()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def probe_throughput(
    encoder: nn.Module,
    kinds: Sequence[tuple[str, str]],
    resolution: int,
    device: torch.device,
    batch_size: int = 8,
    steps: int = 2,
    n_classes: int = 1,
) -> Throughput:
    """Seconds per image of a few steps of each (head, mode) in `kinds` on random inputs."""
    encoder = encoder.to(device)
    images = torch.randn(batch_size, getattr(encoder, "in_chans", 3), resolution, resolution, device=device)
    out_size = (resolution, resolution)

    def encode(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**encoder(x), INPUT: x}  # heads with an image skip (ResUNet) also read the input

    encoder.eval()
    with torch.no_grad():
        encode_s = _timed(lambda: encoder(images), steps, device) / batch_size
        features = encode(images)
    train_s, eval_s = {}, {}
    for head_name, mode in dict.fromkeys(kinds):
        head = build_head_with_neck(get_head(head_name), encoder, n_classes, resolution).to(device)
        targets = _synthetic_targets(head_name, batch_size, resolution, n_classes, device)
        frozen = mode == "frozen"
        params = list(head.parameters()) + ([] if frozen else list(encoder.parameters()))
        optimizer = torch.optim.Adam(params, lr=1e-6)

        def train_step(head=head, targets=targets, optimizer=optimizer, frozen=frozen) -> None:
            feats = features if frozen else encode(images)
            loss = head.training_loss(head(feats, out_size), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def eval_step(head=head, frozen=frozen) -> None:
            with torch.no_grad():
                head(features if frozen else encode(images), out_size)

        state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        head.train()
        encoder.train(not frozen)
        train_s[(head_name, mode)] = _timed(train_step, steps, device) / batch_size
        encoder.load_state_dict(state)  # the probe never changes the encoder
        encoder.eval()
        head.eval()
        eval_s[(head_name, mode)] = _timed(eval_step, steps, device) / batch_size
    return Throughput(encode_s, train_s, eval_s, str(device), batch_size)


def job_time_limit_min(costs: Sequence[TaskCost], margin: float = 1.5, floor_min: int = 10) -> int | None:
    """A Slurm time limit (minutes) for one-run jobs: the longest estimated run, times `margin`."""
    per_run = [
        (c.seconds - c.cache_seconds) / c.runs + c.cache_seconds  # a job encodes its own cache
        for c in costs
        if c.seconds is not None and c.runs
    ]
    if not per_run:
        return None
    return max(floor_min, math.ceil(max(per_run) * margin / 60))


def format_hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
