"""What the frozen-feature cache saves on a linear task (rsna_seg_linear_100 on a phantom RSNA): figures
are printed, never asserted.

(1) one epoch (train + validation): features from the cache vs the encoder run at every step; the
    median over epochs 2.. of each run (epoch 1 of the cached run carries no encoding: the store is
    filled before it, and is timed apart);
(2) one run of `--epochs` epochs, end to end, cached (encoding included) vs uncached;
(3) one task: the lr grid plus `--seeds` final runs sharing one FeatureStore (`evaluate` does this:
    the images are encoded once per task), measured, vs that many uncached runs (the measured
    uncached run times the number of runs: running them all would take too long on a CPU);
(4) the same cached run with a disk (memmap) cache instead of memory, and its equality with memory.

Usage: python benchmarks/bench_feature_cache.py [--arch resnet50] [--resolution 224] [--n-images 96]
       [--epochs 5] [--seeds 5] [--device auto] [--work DIR]
Goal (issue 15): the linear task's speed-up >= 20x over recomputing the encoder every epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from cxrbench.datasets import get_adapter
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.encoders import ResNetEncoder
from cxrbench.protocol.feature_cache import FeatureStore
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import TASKS_BY_ID, get_profile
from cxrbench.protocol.training import train_run
from cxrbench.runtime import resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_run(task, arch, data, lr, resolution, device, amp, **cache) -> tuple[float, list[float], object]:
    """(seconds of the run, seconds of each epoch after the first, the result)."""
    torch.manual_seed(0)
    encoder = ResNetEncoder(arch)
    marks: list[float] = []

    def on_epoch(entry: dict) -> None:
        sync(device)
        marks.append(time.perf_counter())

    sync(device)
    start = time.perf_counter()
    result = train_run(task, encoder, 1, data, lr, 0, resolution, device, amp=amp, on_epoch=on_epoch, **cache)
    sync(device)
    return time.perf_counter() - start, [b - a for a, b in itertools.pairwise(marks)], result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--n-images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    amp = not args.no_amp
    work = args.work or Path(tempfile.mkdtemp(prefix="cxrbench-bench-"))
    raw, prepared = work / "raw" / "rsna", work / "prepared"
    if not raw.exists():
        write_phantom("rsna", raw, n_images=args.n_images, seed=0)
    if not (prepared / "rsna" / "prepared.json").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(get_adapter("rsna"), raw, prepared / "rsna", size=args.resolution)
    profile = dataclasses.replace(get_profile("full"), name="bench", resolution=args.resolution)
    base = profile.apply(TASKS_BY_ID["rsna_seg_linear_100"])
    task = dataclasses.replace(base, max_epochs=args.epochs, patience=args.epochs)  # every epoch runs
    dataset = open_task_dataset(prepared, "rsna")
    data = {s: load_task_split(dataset, task, s, profile) for s in ("train", "val", "test")}
    lr, res = task.default_lr, args.resolution

    cached_s, cached_epochs, cached = timed_run(task, args.arch, data, lr, res, device, amp)
    uncached_s, uncached_epochs, _ = timed_run(
        task, args.arch, data, lr, res, device, amp, use_feature_cache=False
    )
    disk_s, disk_epochs, disk = timed_run(
        task, args.arch, data, lr, res, device, amp, cache_budget_bytes=0, cache_disk_budget_bytes=2**40
    )
    kinds = (cached.feature_cache_kind, disk.feature_cache_kind)  # ("memory", "disk")
    same = cached.history == disk.history and cached.test == disk.test

    runs = len(base.lr_grid) + args.seeds
    with FeatureStore() as store:  # as `evaluate` runs a task: one store, every run
        sync(device)
        start = time.perf_counter()
        for seed in range(runs):
            torch.manual_seed(0)
            encoder = ResNetEncoder(args.arch)
            train_run(task, encoder, 1, data, lr, seed, res, device, amp=amp, feature_store=store)
        sync(device)
        task_cached_s = time.perf_counter() - start

    epoch_c, epoch_u, epoch_d = (statistics.median(e) for e in (cached_epochs, uncached_epochs, disk_epochs))
    n = {k: len(v) for k, v in data.items()}
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"torch threads {torch.get_num_threads()}, arch {args.arch}, resolution {res}, amp {amp}, "
        f"images train/val/test {n['train']}/{n['val']}/{n['test']}, batch {task.batch_size}"
    )
    print(f"encoding the cache once (3 splits)   : {cached.timings['feature_cache_s']:8.2f} s")
    print(
        f"(1) one epoch (train + val)          : cached {epoch_c:.3f} s, uncached {epoch_u:.3f} s, "
        f"speed-up {epoch_u / epoch_c:.1f}x   (disk cache: {epoch_d:.3f} s, {epoch_u / epoch_d:.1f}x)"
    )
    print(
        f"(2) one run, {args.epochs} epochs              : cached {cached_s:.1f} s, uncached {uncached_s:.1f} s, "
        f"speed-up {uncached_s / cached_s:.1f}x   (disk cache: {disk_s:.1f} s, {uncached_s / disk_s:.1f}x)"
    )
    print(
        f"(3) one task, {runs} runs sharing a store : cached {task_cached_s:.1f} s, uncached "
        f"{runs} x {uncached_s:.1f} s = {runs * uncached_s:.1f} s (extrapolated), "
        f"speed-up {runs * uncached_s / task_cached_s:.1f}x"
    )
    print(f"(4) caches {kinds[0]} vs {kinds[1]}: the same history and test metrics: {same}")


if __name__ == "__main__":
    main()
