"""One training run of one task: head (and, for fine-tune tasks, encoder) on the train split,
early stopping and best-checkpoint selection on the validation metric, test scored once.

Protocol (docs/protocol.md, "Optimisation and selection"): Adam with weight decay 1e-6;
ReduceLROnPlateau on the validation loss (patience 3, factor 0.5), stepped once per epoch and
never overridden afterwards (the reference reset the lr every batch, silently disabling it);
early stopping (min_delta 1e-5) and checkpoint selection (any improvement) on the validation metric; frozen encoders stay in
eval mode with only head parameters optimised (the encoder's neck, e.g. a ViT's feature pyramid,
is part of the head); fine-tune tasks first train the head for
`warmup_steps` with the encoder frozen, then unfreeze it.

Everything head- or metric-specific (feature stages, loss, decoding, scoring) is looked up in the
head and metric registries by the task's names, so this loop is the same for every task.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from cxrbench.encoders import INPUT
from cxrbench.errors import CxrbenchError
from cxrbench.protocol import metrics
from cxrbench.protocol.batch_loader import Batch, SplitLoader
from cxrbench.protocol.cost import count_parameters, peak_memory, reset_peak_memory
from cxrbench.protocol.eval_batch import BatchSizer
from cxrbench.protocol.feature_cache import (
    DEFAULT_BUDGET_BYTES,
    DEFAULT_DISK_BUDGET_BYTES,
    NONE,
    FeatureStore,
    cache_bytes,
    cache_kind,
    owns_feature_store,
)
from cxrbench.protocol.feature_disk import free_bytes
from cxrbench.protocol.heads import Head, get_head
from cxrbench.protocol.heads.with_neck import build_head_with_neck
from cxrbench.protocol.metrics import Metric, get_metric
from cxrbench.protocol.predictions import encode_predictions
from cxrbench.protocol.task_data import TaskSplit
from cxrbench.protocol.tasks import Task
from cxrbench.runtime import (
    LoaderSettings,
    autocast_factory,
    loader_settings,
    memory_format,
    seed_everything,
    to_memory_format,
)

WEIGHT_DECAY = 1e-6
PLATEAU_PATIENCE = 3
PLATEAU_FACTOR = 0.5
MIN_DELTA = 1e-5


class TrainingDiverged(CxrbenchError):
    """The loss became NaN/inf: the run is recorded as failed, other runs continue."""


@dataclass
class RunResult:
    val: dict[str, float]
    test: dict[str, float]
    test_per_image: dict
    history: list[dict]
    best_epoch: int
    predictions: dict[str, np.ndarray]
    used_feature_cache: bool
    timings: dict[str, float] = field(default_factory=dict)
    # encoder_parameters, head_parameters, peak_memory_bytes, peak_memory_source, train_images_per_s,
    # grad_checkpointing (protocol/cost.py)
    cost: dict = field(default_factory=dict)
    feature_cache_kind: str = NONE  # "memory", "disk" or "none" (protocol/feature_cache.py)


def encoder_stages(stages) -> tuple[str, ...]:
    """The stages among a head's `required_stages` that the encoder computes (all but `INPUT`)."""
    return tuple(s for s in stages if s != INPUT)


class _Batches:
    """Feeds the head either cached features or features computed by the encoder per batch, plus
    the normalised input image under `INPUT` when the head reads it (it is never cached). `load`
    gives a split's host batches (batch_loader.py); images are normalised on the device."""

    def __init__(
        self,
        split: TaskSplit,
        encoder: nn.Module,
        stages,
        device,
        autocast,
        cache: dict | None,
        loader: LoaderSettings = LoaderSettings(0, False),
    ):
        self.split, self.encoder, self.stages = split, encoder, stages
        self.device, self.autocast, self.cache = device, autocast, cache
        self.memory_format = memory_format(device)
        self.load = SplitLoader(split, loader, with_images=cache is None or INPUT in stages)

    def inputs(self, images: Tensor) -> Tensor:
        """uint8 host images -> the encoder's normalised input on the device (in its memory format)."""
        x = self.split.normalise(images.to(self.device, non_blocking=True))
        if self.memory_format != torch.contiguous_format:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def features(self, batch: Batch) -> dict[str, Tensor]:
        wants_input = INPUT in self.stages
        images = None if batch.images is None else self.inputs(batch.images)
        if self.cache is not None:
            feats = {s: self.cache[s][batch.index].to(self.device, non_blocking=True) for s in self.cache}
        else:
            with self.autocast():
                feats = dict(self.encoder(images))
        if wants_input:
            feats[INPUT] = images
        return feats


def head_and_metric(task: Task) -> tuple[type[Head], Metric]:
    """The registered head class and metric a task names, checked to agree on the form of targets."""
    head, metric = get_head(task.head), get_metric(task.metric)
    if head.target is not metric.target:
        raise CxrbenchError(
            f"{task.task_id}: head {task.head!r} predicts {head.target.name} but metric "
            f"{task.metric!r} scores {metric.target.name}"
        )
    return head, metric


@dataclass
class Selection:
    """Checkpoint choice and early stopping on the validation metric, as the reference's Lightning
    callbacks: the checkpoint follows any strict improvement (ModelCheckpoint, mode max); early
    stopping waits `patience` epochs for an improvement by more than MIN_DELTA (EarlyStopping)."""

    patience: int
    best: float = -math.inf  # the kept checkpoint's metric
    stop_best: float = -math.inf  # the last metric that reset the early-stopping wait
    bad_epochs: int = 0

    def update(self, score: float) -> tuple[bool, bool]:
        """(keep this epoch's state, stop training now) after an epoch scoring `score`."""
        finite = bool(np.isfinite(score))
        keep = finite and score > self.best
        if keep:
            self.best = score
        if finite and score > self.stop_best + MIN_DELTA:
            self.stop_best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        return keep, self.bad_epochs >= self.patience


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """The protocol's Adam (weight decay 1e-6), fused on CPU and CUDA: one pass over each tensor
    instead of a dozen, several times faster for the 87M-124M-parameter U-Net head on a CPU (equal to
    the unfused update up to float rounding)."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.Adam(params, lr=lr, weight_decay=WEIGHT_DECAY, fused=fused)


def _to_device(targets, device):
    if isinstance(targets, Tensor):
        return targets.to(device, non_blocking=True)
    return [t.to(device, non_blocking=True) for t in targets]


def read_losses(losses: list[Tensor], task: Task, lr: float, seed: int) -> list[float]:
    """The step losses of a pass, read from the device at once (the only wait of a training pass);
    the first non-finite one fails the run as diverged."""
    if not losses:
        return []
    values = torch.stack(losses).float().cpu().tolist()
    for value in values:
        if not math.isfinite(value):
            raise TrainingDiverged(f"{task.task_id}: loss became {value} (lr {lr:g}, seed {seed})")
    return values


def compile_modules(*modules: nn.Module) -> None:
    """`torch.compile` each module in place (state-dict keys unchanged); one already compiled is left
    as it is (the encoder object is shared by a task's runs)."""
    for module in modules:
        if getattr(module, "_compiled_call_impl", None) is None:
            module.compile()


@owns_feature_store
def train_run(
    task: Task,
    encoder: nn.Module,
    n_classes: int,
    data: dict[str, TaskSplit],
    lr: float,
    seed: int,
    resolution: int,
    device: torch.device,
    amp: bool = True,
    use_feature_cache: bool = True,
    cache_budget_bytes: int = DEFAULT_BUDGET_BYTES,
    on_epoch: Callable[[dict], None] | None = None,
    grad_checkpointing: bool = False,
    cache_disk_budget_bytes: int = DEFAULT_DISK_BUDGET_BYTES,
    feature_store: FeatureStore | None = None,
    compile: bool = False,
    loader: LoaderSettings | None = None,
) -> RunResult:
    """Train and evaluate one (task, lr, seed) run; `encoder` is modified only for fine-tune tasks.

    `grad_checkpointing` (fine-tune tasks) recomputes the encoder's activations in the backward pass
    instead of storing them: less memory, the same losses and gradients, slower steps.
    Frozen tasks cache the encoder's features in memory or on disk within the budgets
    (`cache_budget_bytes` is the memory one), in `feature_store` when given (a task's runs share one,
    so its images are encoded once), else in a store of this call's own (protocol/feature_cache.py).
    `compile` runs encoder and head through `torch.compile`. `loader` (default: `runtime.loader_settings` of
    `device`) says how batches are gathered. Loss values are read once per pass over the data, so a
    step never waits for the device; a non-finite loss fails the run at the end of its epoch."""
    head_class, _ = head_and_metric(task)
    seed_everything(seed)
    t0 = time.perf_counter()
    autocast = autocast_factory(device, amp)
    loader = loader_settings(device) if loader is None else loader
    encoder = to_memory_format(encoder.to(device), device)
    reset_peak_memory(device)
    checkpointing = grad_checkpointing and not task.frozen
    if checkpointing:
        if not hasattr(encoder, "set_grad_checkpointing"):
            raise CxrbenchError(f"the {type(encoder).__name__} encoder has no gradient checkpointing")
        encoder.set_grad_checkpointing(True)
    head = to_memory_format(
        build_head_with_neck(head_class, encoder, n_classes, resolution).to(device), device
    )
    if compile:
        compile_modules(encoder, head)
    stages = head.required_stages  # encoder outputs the head's neck reads
    cached_stages = encoder_stages(stages)
    out_size = (resolution, resolution)
    generator = torch.Generator().manual_seed(seed)

    for p in encoder.parameters():
        p.requires_grad_(False)
    encoder.eval()
    caches = {name: None for name in data}
    fits = sum(cache_bytes(encoder.feature_info, cached_stages, len(s), resolution) for s in data.values())
    store = feature_store
    kind = cache_kind(
        fits,
        task.frozen and use_feature_cache and store is not None,
        cache_budget_bytes,
        cache_disk_budget_bytes,
        lambda: free_bytes(store.parent),
    )
    use_cache = kind != NONE
    if use_cache:
        caches = store.features(kind, data, encoder, cached_stages, device, autocast)
    batches = {
        name: _Batches(split, encoder, stages, device, autocast, caches[name], loader)
        for name, split in data.items()
    }
    eval_sizer = BatchSizer.for_device(device)
    t_cache = time.perf_counter()

    throughput = {"images": 0, "seconds": 0.0}

    def train_step(batch: Batch, optimizer: torch.optim.Optimizer) -> Tensor:
        """One optimiser step; its loss stays on the device (reading it would wait for the step)."""
        targets = _to_device(batch.targets, device)
        with autocast():
            feats = batches["train"].features(batch)
            output = head(feats, out_size)
            loss = head.training_loss(output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach().reshape(())

    def train_pass(optimizer: torch.optim.Optimizer, limit: int | None = None) -> list[float]:
        """One shuffled pass over the train split (at most `limit` steps): its step losses, read
        once at the end, which also completes the pass's time on the device."""
        start = time.perf_counter()
        order = data["train"].batches(task.batch_size, shuffle=True, generator=generator, drop_last=True)
        losses: list[Tensor] = []
        n_images = 0
        try:
            for batch in batches["train"].load(order):
                losses.append(train_step(batch, optimizer))
                n_images += len(batch.index)
                if limit is not None and len(losses) >= limit:
                    break
        except Exception:
            read_losses(losses, task, lr, seed)  # a step failing after a non-finite loss: that divergence
            raise
        values = read_losses(losses, task, lr, seed)
        throughput["images"] += n_images
        throughput["seconds"] += time.perf_counter() - start
        return values

    # Fine-tune warm-up: head only, encoder frozen and in eval mode.
    if not task.frozen and task.warmup_steps > 0:
        warm = adam(head.parameters(), task.warmup_lr, device)
        step = 0
        while step < task.warmup_steps:
            head.train()
            done = len(train_pass(warm, limit=task.warmup_steps - step))
            if done == 0:
                break  # an empty train split: nothing to warm up on
            step += done
    params = list(head.parameters())
    if not task.frozen:
        for p in encoder.parameters():
            p.requires_grad_(True)
        params += list(encoder.parameters())
    optimizer = adam(params, lr, device)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE
    )

    def modules_state() -> dict:
        state = {"head": copy.deepcopy(head.state_dict())}
        if not task.frozen:
            state["encoder"] = copy.deepcopy(encoder.state_dict())
        return state

    best = {"metric": -math.inf, "epoch": 0, "state": modules_state(), "val": {}}
    history: list[dict] = []
    selection = Selection(task.patience)
    for epoch in range(1, task.max_epochs + 1):
        head.train()
        if not task.frozen:
            encoder.train()
        losses = train_pass(optimizer)
        val_metrics, val_loss, _, _ = evaluate_split(
            task, head, encoder, batches["val"], data["val"], out_size, device, autocast, sizer=eval_sizer
        )
        scheduler.step(val_loss)
        score = val_metrics[task.metric]
        entry = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val_loss,
            "val_metric": score,
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(entry)
        if on_epoch:
            on_epoch(entry)
        keep, stop = selection.update(score)
        if keep:
            best = {"metric": score, "epoch": epoch, "state": modules_state(), "val": val_metrics}
        if stop:
            break
    head.load_state_dict(best["state"]["head"])
    if "encoder" in best["state"]:
        encoder.load_state_dict(best["state"]["encoder"])
    if not best["val"]:  # no epoch ran or none had a finite metric: report the selected state's
        best["val"], _, _, _ = evaluate_split(
            task, head, encoder, batches["val"], data["val"], out_size, device, autocast, sizer=eval_sizer
        )
    t_train = time.perf_counter()
    test_metrics, _, per_image, predictions = evaluate_split(
        task,
        head,
        encoder,
        batches["test"],
        data["test"],
        out_size,
        device,
        autocast,
        keep_predictions=True,
        sizer=eval_sizer,
    )
    if checkpointing:
        encoder.set_grad_checkpointing(False)  # the encoder object is shared by the task's next runs
    peak_bytes, peak_source = peak_memory(device)
    cost = {
        "encoder_parameters": count_parameters(encoder),
        "head_parameters": count_parameters(head, trainable_only=True),
        "peak_memory_bytes": peak_bytes,
        "peak_memory_source": peak_source,
        "train_images_per_s": (
            throughput["images"] / throughput["seconds"] if throughput["seconds"] > 0 else None
        ),
        "grad_checkpointing": checkpointing,
        "compiled": compile,
    }
    return RunResult(
        val=best["val"],
        test=test_metrics,
        test_per_image=per_image,
        history=history,
        best_epoch=best["epoch"],
        predictions=predictions,
        used_feature_cache=use_cache,
        feature_cache_kind=kind,
        timings={
            "feature_cache_s": t_cache - t0,
            "train_s": t_train - t_cache,
            "test_s": time.perf_counter() - t_train,
        },
        cost=cost,
    )


@torch.no_grad()
def predict(head: Head, feeder: _Batches, batch: Batch, out_size, autocast):
    """Head output for a batch: (raw output, predictions in the metrics API form)."""
    with autocast():
        output = head(feeder.features(batch), out_size)
    return output, head.to_predictions(output)


def _slice(batch: Batch, part: slice) -> Batch:
    """The images `part` of a batch (the batch itself when `part` covers it)."""
    if part.start == 0 and part.stop >= len(batch.index):
        return batch
    images = None if batch.images is None else batch.images[part]
    return Batch(batch.index[part], images, batch.targets[part])


@torch.no_grad()
def evaluate_split(
    task: Task,
    head: Head,
    encoder: nn.Module,
    feeder: _Batches,
    split: TaskSplit,
    out_size,
    device: torch.device,
    autocast,
    keep_predictions: bool = False,
    sizer: BatchSizer | None = None,
) -> tuple[dict[str, float], float, dict, dict[str, np.ndarray]]:
    """Metrics, mean loss, per-image statistics and (optionally) predictions of one split, in
    batches of `sizer` (default: `BatchSizer.for_device`; 64 on the CPU, the largest that fits on CUDA)."""
    metric = get_metric(task.metric)
    head.eval()
    encoder.eval()
    sizer = sizer or BatchSizer.for_device(device)
    parts, losses, weights = [], [], []
    kept_preds: list = []

    def score(batch: Batch) -> tuple[float, int, dict, tuple | None]:
        output, preds = predict(head, feeder, batch, out_size, autocast)
        loss = float(head.training_loss(output, _to_device(batch.targets, device)))
        gt = metric.target.to_numpy(batch.targets)
        return loss, len(batch.index), metric.per_image_stats(preds, gt), (preds, gt)

    for loaded in feeder.load(split.batches(sizer.size)):
        for loss, n, part, kept in sizer.run(len(loaded.index), lambda at, b=loaded: score(_slice(b, at))):
            losses.append(loss)
            weights.append(n)
            parts.append(part)
            if keep_predictions:
                kept_preds.append(kept)
    per_image = metrics.merge_per_image(parts)
    per_image["image_ids"] = list(split.image_ids)
    values = metric.aggregate(per_image)
    mean_loss = float(np.average(losses, weights=weights)) if losses else float("nan")
    predictions = (
        encode_predictions(
            task.metric, split.image_ids, kept_preds, lambda at: split.images[torch.from_numpy(at)].numpy()
        )
        if keep_predictions
        else {}
    )
    return values, mean_loss, per_image, predictions
