"""Wall and CPU time of single demo-profile U-Net runs (one seed, random ResNet-18, phantom data at the
demo's sizes); figures are printed, never asserted.

Usage: python benchmarks/bench_unet_tasks.py [--tasks covid_unet_frozen,siim_unet_finetune]
       [--profile demo] [--arch resnet18] [--threads 2] [--work DIR]
Why: the U-Net head dominates the demo's time on CPU; this times what `make demo` runs per U-Net
task and seed, so head changes can be measured before and after. On a shared machine the CPU
time with --threads 1 is the steadier figure (wall time there mostly measures the other load).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from cxrbench.datasets import get_adapter
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.encoders import ResNetEncoder
from cxrbench.protocol.heads import get_head
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import TASKS_BY_ID, get_profile
from cxrbench.protocol.training import train_run


def ensure_prepared(work: Path, dataset: str) -> Path:
    """Phantom raw data at the demo's default size, prepared once under `work` (reused later)."""
    prepared = work / "prepared"
    if not (prepared / dataset / "prepared.json").exists():
        write_phantom(dataset, work / "phantom" / dataset, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(get_adapter(dataset), work / "phantom" / dataset, prepared / dataset, size=224)
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="covid_unet_frozen,siim_unet_finetune")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cxrbench_bench_unet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    for task_id in args.tasks.split(","):
        task = profile.apply(TASKS_BY_ID[task_id])
        prepared = ensure_prepared(args.work, task.dataset)
        dataset = open_task_dataset(prepared, task.dataset)
        data = {s: load_task_split(dataset, task, s, profile) for s in ("train", "val", "test")}
        torch.manual_seed(0)
        encoder = ResNetEncoder(args.arch)
        n_classes = len(dataset.classes)
        head = get_head(task.head).build(encoder.feature_info, n_classes, profile.resolution)
        n_params = sum(p.numel() for p in head.parameters())
        start, cpu_start = time.perf_counter(), time.process_time()
        result = train_run(
            task, encoder, n_classes, data, task.default_lr, 0, profile.resolution, torch.device("cpu")
        )
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        timings = ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
        print(
            f"{task_id}: {wall:.1f} s wall, {cpu:.1f} s CPU ({timings}); epochs {len(result.history)}, "
            f"images {[len(d) for d in data.values()]}, batch {task.batch_size}, "
            f"warm-up steps {task.warmup_steps}, head {n_params:,} parameters, "
            f"test {task.metric} {result.test[task.metric]:.4f}; load average {os.getloadavg()}"
        )


if __name__ == "__main__":
    main()
