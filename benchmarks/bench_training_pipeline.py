"""Throughput of the evaluation pipeline (images/s); figures are printed, never asserted.

(a) model-only training steps on in-memory, already-normalised tensors;
(b) our data pipeline (prepared uint8 arrays -> normalise on the fly) + the same training steps;
(c) a naive pipeline that decodes the raw DICOM files (and pads/resizes them) every step;
(d) a frozen linear task trained with and without the frozen-feature cache.

Usage: python benchmarks/bench_training_pipeline.py [--resolution 224] [--arch resnet50]
       [--device auto] [--steps 20] [--batch 16] [--n-images 96] [--work DIR]
Goals (issue 3): (b)/(a) >= 0.9; cache >= 5x faster on the linear tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from cxrbench.datasets import get_adapter
from cxrbench.datasets.dicom_io import read_dicom_image
from cxrbench.datasets.geometry import SquareResize
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.encoders import ResNetEncoder
from cxrbench.protocol.heads import build_head, soft_dice_loss
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import TASKS_BY_ID, get_profile
from cxrbench.protocol.training import train_run
from cxrbench.runtime import autocast_factory, resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(encoder, head, device, autocast, resolution):
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step(x: torch.Tensor, masks: torch.Tensor) -> None:
        with autocast():
            logits = head(encoder(x), (resolution, resolution))
            loss = soft_dice_loss(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(fn, n_images: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return n_images / (time.perf_counter() - start)


def phantom_linear_task(work: Path, n_images: int, resolution: int):
    """Phantom RSNA written and prepared under `work` (kept between runs), with the full profile at
    `resolution` and its `rsna_seg_linear_100` task: the (profile, task, dataset) benchmarks time."""
    raw, prepared = work / "raw" / "rsna", work / "prepared"
    if not raw.exists():
        write_phantom("rsna", raw, n_images=n_images, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(get_adapter("rsna"), raw, prepared / "rsna", size=resolution)
    profile = dataclasses.replace(get_profile("full"), name="bench", resolution=resolution)
    return profile, profile.apply(TASKS_BY_ID["rsna_seg_linear_100"]), open_task_dataset(prepared, "rsna")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n-images", type=int, default=96)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    autocast = autocast_factory(device, not args.no_amp)
    work = args.work or Path(tempfile.mkdtemp(prefix="cxrbench-bench-"))
    profile, task, dataset = phantom_linear_task(work, args.n_images, args.resolution)
    train = load_task_split(dataset, task, "train", profile)
    torch.manual_seed(0)
    encoder = ResNetEncoder(args.arch).to(device).train()
    head = build_head("linear", encoder.feature_info, 1, args.resolution).to(device).train()
    step = make_step(encoder, head, device, autocast, args.resolution)
    batch, steps = args.batch, args.steps
    gen = torch.Generator().manual_seed(0)

    def batch_index() -> torch.Tensor:
        return torch.randint(len(train), (batch,), generator=gen)

    # (a) model only: tensors already normalised and on the device
    x_mem = train.normalise(train.images[:batch]).to(device).contiguous()
    m_mem = train.masks[:batch].to(device)
    step(x_mem, m_mem)  # warm-up
    a = timed(lambda: [step(x_mem, m_mem) for _ in range(steps)], steps * batch, device)

    # (b) our pipeline: slice uint8 tensors, normalise, transfer
    def ours() -> None:
        for _ in range(steps):
            idx = batch_index()
            step(
                train.normalise(train.images[idx]).to(device, non_blocking=True), train.masks[idx].to(device)
            )

    b = timed(ours, steps * batch, device)

    # (c) naive: decode the raw DICOMs of each batch every step, pad + resize, normalise
    split = dataset.split("train")
    files = [work / "raw" / "rsna" / "stage_2_train_images" / f"{i}.dcm" for i in split.image_ids]

    def naive() -> None:
        for _ in range(steps):
            idx = batch_index().tolist()
            imgs = []
            for i in idx:
                image = read_dicom_image(files[i])
                imgs.append(SquareResize(*image.shape, args.resolution).image(image))
            x = (
                torch.from_numpy(np.stack(imgs))
                .sub_(train.mean)
                .div_(train.std)
                .unsqueeze(1)
                .expand(-1, 3, -1, -1)
            )
            step(x.to(device), train.masks[idx].to(device))

    c = timed(naive, steps * batch, device)

    # (d) frozen linear task with and without the feature cache (same epochs, same seed)
    frozen = dataclasses.replace(
        profile.apply(TASKS_BY_ID["rsna_seg_linear_100"]), max_epochs=10, patience=10
    )
    data = {s: load_task_split(dataset, frozen, s, profile) for s in ("train", "val", "test")}
    times = {}
    for use_cache in (True, False):
        torch.manual_seed(0)
        enc = ResNetEncoder(args.arch)
        sync(device)
        start = time.perf_counter()
        train_run(
            frozen,
            enc,
            1,
            data,
            1e-2,
            0,
            args.resolution,
            device,
            amp=not args.no_amp,
            use_feature_cache=use_cache,
        )
        sync(device)
        times[use_cache] = time.perf_counter() - start

    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"arch {args.arch}, resolution {args.resolution}, batch {batch}, steps {steps}, amp {not args.no_amp}"
    )
    print(f"(a) model-only training steps     : {a:8.1f} images/s")
    print(f"(b) cxrbench pipeline + steps     : {b:8.1f} images/s   (b)/(a) = {b / a:.2f}")
    print(f"(c) naive raw-decode pipeline     : {c:8.1f} images/s   (c)/(a) = {c / a:.2f}")
    print(
        f"(d) frozen linear task, 10 epochs : cached {times[True]:.1f} s, uncached {times[False]:.1f} s, "
        f"speed-up {times[False] / times[True]:.1f}x"
    )


if __name__ == "__main__":
    main()
