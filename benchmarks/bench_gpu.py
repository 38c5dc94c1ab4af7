"""GPU figures of the protocol's loops (issue 15): one prepared command for a CUDA machine.

For ResNet-50 at 224 px it prints
(a) model-only training img/s: encoder + linear head + Dice loss steps on tensors already on the device
    (channels-last, bf16 autocast: the same numerics policy as the protocol);
(b) our pipeline's training img/s: the real training loop (`train_run`, a fine-tuned linear head on
    phantom RSNA images: loader, on-device normalisation, loss read once per epoch), and (b)/(a);
(c) a frozen linear task's epoch time with and without the frozen-feature cache;
(d) the planned hours of the full protocol (18 tasks, 5 seeds, the reference split sizes) from the
    plan's throughput probe of this encoder on this device (`cxrbench.protocol.plan`).

On a machine without CUDA it says so and exits 0; `--allow-cpu` runs a tiny version on the CPU
(ResNet-18 at 64 px unless sizes are given) to check that the script works.

Usage: python benchmarks/bench_gpu.py [--allow-cpu] [--arch resnet50] [--resolution 224]
       [--batch 64] [--steps 30] [--n-images 512] [--epochs 3] [--compile] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training_pipeline import phantom_linear_task, sync, timed

from cxrbench.datasets.reference_splits import reference_split_ids
from cxrbench.encoders import ResNetEncoder
from cxrbench.protocol.heads import build_head, soft_dice_loss
from cxrbench.protocol.plan import format_hours, plan_costs, probe_throughput
from cxrbench.protocol.task_data import load_task_split
from cxrbench.protocol.tasks import TASKS, Profile, Task, get_profile
from cxrbench.protocol.training import adam, train_run
from cxrbench.runtime import autocast_factory, loader_settings, memory_format, to_memory_format

GPU_SIZES = {"arch": "resnet50", "resolution": 224, "batch": 64, "steps": 30, "n_images": 512, "epochs": 3}
CPU_SIZES = {"arch": "resnet18", "resolution": 64, "batch": 8, "steps": 3, "n_images": 48, "epochs": 2}
SPLITS = ("train", "val", "test")


def reference_sizes(task: Task, profile: Profile) -> dict[str, int]:
    """Images per split of a task on the full reference splits (the subset rule of
    `split_scheme.train_subsets`, the validation share, the profile's caps)."""
    ids = reference_split_ids(task.dataset)
    n_train = len(ids["train"])
    train = n_train if task.percent >= 100 else min(n_train, max(2, round(task.percent / 100 * n_train)))
    sizes = {"train": train, "val": task.validation_count(len(ids["val"])), "test": len(ids["test"])}
    for split in SPLITS:
        limit = profile.max_images(task, split)
        if limit is not None:
            sizes[split] = min(sizes[split], limit)
    return sizes


def model_only(args, device: torch.device, data) -> float:
    """(a): images/s of bare training steps (the protocol's fused Adam) on one batch already on the device."""
    fmt = memory_format(device)
    torch.manual_seed(0)
    encoder = to_memory_format(ResNetEncoder(args.arch).to(device), device).train()
    head = to_memory_format(build_head("linear", encoder.feature_info, 1, args.resolution).to(device), device)
    head.train()
    optimizer = adam(list(encoder.parameters()) + list(head.parameters()), 1e-4, device)  # the protocol's
    autocast, out_size = autocast_factory(device), (args.resolution, args.resolution)

    def step(x: torch.Tensor, masks: torch.Tensor) -> None:
        with autocast():
            loss = soft_dice_loss(head(encoder(x), out_size), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train = data["train"]
    x = train.normalise(train.images[: args.batch]).to(device).contiguous(memory_format=fmt)
    masks = train.masks[: args.batch].to(device)
    for _ in range(3):  # warm-up: allocations, cuDNN algorithm choice
        step(x, masks)
    return timed(lambda: [step(x, masks) for _ in range(args.steps)], args.steps * args.batch, device)


def pipeline(args, device: torch.device, task: Task, data) -> float:
    """(b): training images/s of `train_run` itself (its own measure: passes over the data, loader
    and the once-per-epoch loss read included)."""
    finetune = dataclasses.replace(
        task,
        mode="finetune",
        warmup_steps=0,
        batch_size=args.batch,
        max_epochs=args.epochs,
        patience=args.epochs,
    )
    speed = 0.0
    for _ in range(2 if device.type == "cuda" else 1):  # on CUDA the first run warms cuDNN (and compiles)
        torch.manual_seed(0)
        result = train_run(
            finetune,
            ResNetEncoder(args.arch),
            1,
            data,
            1e-4,
            0,
            args.resolution,
            device,
            compile=args.compile,
        )
        speed = float(result.cost["train_images_per_s"])
    return speed


def frozen_epochs(args, device: torch.device, task: Task, data) -> dict[bool, tuple[float, float]]:
    """(c): (seconds per training epoch, seconds encoding the cache) with and without the cache."""
    frozen = dataclasses.replace(task, max_epochs=args.epochs, patience=args.epochs)
    out = {}
    for use_cache in (True, False):
        torch.manual_seed(0)
        sync(device)
        result = train_run(
            frozen,
            ResNetEncoder(args.arch),
            1,
            data,
            1e-2,
            0,
            args.resolution,
            device,
            use_feature_cache=use_cache,
        )
        epochs = max(1, len(result.history))
        out[use_cache] = (result.timings["train_s"] / epochs, result.timings["feature_cache_s"])
    return out


def planned_hours(args, device: torch.device) -> tuple[float, list]:
    """(d): the full protocol's planned seconds for this encoder on this device, and its task costs."""
    profile = dataclasses.replace(get_profile("full"), resolution=args.resolution)
    encoder = ResNetEncoder(args.arch)
    kinds = [(t.head, t.mode) for t in TASKS]
    throughput = probe_throughput(encoder, kinds, profile.resolution, device, batch_size=min(args.batch, 16))
    sizes = {t.task_id: reference_sizes(profile.apply(t), profile) for t in TASKS}
    costs = plan_costs(TASKS, profile, profile.default_seeds, sizes, encoder.feature_info, throughput)
    return sum(c.seconds for c in costs), costs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--allow-cpu", action="store_true", help="Run a tiny version on the CPU.")
    for name in GPU_SIZES:
        kind = str if name == "arch" else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the pipeline run (b).")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "bench_gpu: no CUDA device on this machine; nothing measured (--allow-cpu runs a tiny CPU version)."
        )
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    defaults = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="cxrbench-bench-gpu-"))
    profile, task, dataset = phantom_linear_task(work, args.n_images, args.resolution)
    data = {s: load_task_split(dataset, task, s, profile) for s in SPLITS}
    print(
        f"prepared {args.n_images} phantom RSNA images at {args.resolution} px in {time.perf_counter() - start:.1f} s"
    )

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    loader = loader_settings(device)
    print(
        f"device {device} ({name}), arch {args.arch}, resolution {args.resolution}, batch {args.batch}, "
        f"train images {len(data['train'])}, loader workers {loader.num_workers}, pinned {loader.pin_memory}, "
        f"memory format {memory_format(device)}, compile {args.compile}"
    )
    a = model_only(args, device, data)
    print(f"(a) model-only training steps   : {a:9.1f} images/s")
    b = pipeline(args, device, task, data)
    print(f"(b) cxrbench training loop      : {b:9.1f} images/s   (b)/(a) = {b / a:.2f}")
    c = frozen_epochs(args, device, task, data)
    (cached, encode_s), (uncached, _) = c[True], c[False]
    print(
        f"(c) frozen linear, per epoch    : cached {cached:.3f} s (+{encode_s:.2f} s encoding once), "
        f"uncached {uncached:.3f} s, {uncached / cached:.1f}x"
    )
    seconds, costs = planned_hours(args, device)
    largest = sorted(costs, key=lambda cost: cost.seconds, reverse=True)[:3]
    print(
        f"(d) full protocol, planned      : {format_hours(seconds)} ({seconds / 3600:.2f} h; 18 tasks, "
        f"{profile.default_seeds} seeds, reference split sizes at {args.resolution} px); largest: "
        + ", ".join(f"{cost.task_id} {format_hours(cost.seconds)}" for cost in largest)
    )
    print(f"total bench time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
