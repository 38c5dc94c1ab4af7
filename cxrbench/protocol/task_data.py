"""In-memory task data: prepared arrays -> tensors at the profile's resolution, and batching.

The protocol uses no augmentation, so a split is loaded once into uint8 tensors (memory-mapped
arrays, no image decoding) and batches are slices normalised on the fly. This keeps the data
pipeline far cheaper than the model step (see benchmarks/bench_training_pipeline.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrbench.datasets import PreparedDataset, PreparedSplit, open_prepared
from cxrbench.encoders.presets import Preprocessing
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.heads import get_head
from cxrbench.protocol.metrics import MASKS
from cxrbench.protocol.tasks import Profile, Task


@dataclass
class TaskSplit:
    """One split of one task: uint8 images N x R x R, targets, ids (all in memory)."""

    images: torch.Tensor
    masks: torch.Tensor | None  # bool N x C x R x R
    boxes: list[torch.Tensor] | None  # float32 K_i x 4 in R-pixel xyxy
    image_ids: list[str]
    mean: float
    std: float
    # The encoder's preset (cxrbench.encoders.presets); None: the protocol's dataset statistics.
    preprocessing: Preprocessing | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 B x R x R -> float B x C x R x R as the encoder's preset says (default: 3 channels
        normalised with the train split's mean/std)."""
        if self.preprocessing is not None:
            return self.preprocessing.apply(images, self.mean, self.std)
        x = images.float().div_(255.0).sub_(self.mean).div_(self.std)
        return x.unsqueeze(1).expand(-1, 3, -1, -1)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Index tensors of each batch (a random permutation when shuffling). `drop_last` leaves out
        a final partial batch, as the reference's training loaders do, unless it is the only batch
        (a split smaller than the batch still trains)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        end = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, end, batch_size):
            yield order[start : start + batch_size]

    def targets(self, index: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.masks is not None:
            return self.masks[index]
        assert self.boxes is not None
        return [self.boxes[i] for i in index.tolist()]


def prepared_path(data_root: Path, dataset: str) -> Path:
    return Path(data_root) / dataset


def open_task_dataset(data_root: Path, dataset: str) -> PreparedDataset:
    """Open PREPARED_ROOT/<dataset>, or say which `cxrbench prepare` command creates it."""
    path = prepared_path(data_root, dataset)
    if not (path / "prepared.json").exists():
        raise CxrbenchError(_not_prepared(Path(data_root), dataset, path))
    return open_prepared(path)


def _not_prepared(data_root: Path, dataset: str, path: Path) -> str:
    """Why PREPARED_ROOT/<dataset> is not a prepared dataset, for the usual wrong `--data`: a folder
    that does not exist, one prepared dataset instead of their parent, or a raw download (whose
    `prepare` command would otherwise be suggested with an output inside it)."""
    from cxrbench.datasets import get_adapter

    if (data_root / "prepared.json").is_file():
        return (
            f"--data {data_root} is itself one prepared dataset; --data takes PREPARED_ROOT, the folder "
            f"that holds one prepared folder per dataset (e.g. {data_root.parent}), so {dataset} is read "
            f"from PREPARED_ROOT/{dataset}"
        )
    adapter = get_adapter(dataset)
    for raw in (path, data_root):
        required = adapter.required_files(raw)
        if required and all(p.exists() for p in required):
            return (
                f"{raw} is a raw {dataset} download (it holds {required[0].name}), not a prepared dataset: "
                f"run `cxrbench prepare {dataset} {raw} PREPARED_ROOT/{dataset}` (a folder outside the "
                "download), then pass PREPARED_ROOT as --data"
            )
    missing = "" if data_root.is_dir() else f" (--data {data_root} does not exist)"
    return (
        f"prepared dataset {dataset!r} not found at {path}{missing}. Create it with:\n"
        f"  cxrbench prepare {dataset} RAW_DIR {path}\n"
        f"(or `cxrbench phantom PHANTOM_DIR --dataset {dataset}` first for synthetic data)"
    )


def _limit(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(indices) <= limit:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))


def task_split_source(dataset: PreparedDataset, task: Task, split: str) -> PreparedSplit:
    """The images of `split` the task uses before any profile cap: the nested train subset, the
    validation share (its first images in list order, as the reference), the whole test split."""
    source = dataset.split(split, task.percent if split == "train" else None)
    if split == "val":
        source = source.subset(np.arange(task.validation_count(len(source))))
    return source


def load_task_split(dataset: PreparedDataset, task: Task, split: str, profile: Profile) -> TaskSplit:
    """Load one split for a task at the profile resolution (`task_split_source`, then the profile's
    image caps), with the targets its head learns from (masks or boxes)."""
    source = task_split_source(dataset, task, split)
    limit = profile.max_images(task, split)
    keep = _limit(np.arange(len(source)), limit, seed=len(source))
    source = source.subset(keep)
    resolution = profile.resolution
    images = resize_images(source.images(), resolution)
    scale = resolution / dataset.size
    masks = boxes = None
    if get_head(task.head).target is MASKS:
        if not source.has_masks:
            raise CxrbenchError(f"{dataset.root}: task {task.task_id} needs masks but the cache has none")
        masks = torch.from_numpy(np.stack([source.masks(i) for i in range(len(source))]))
        if resolution != dataset.size:
            masks = _resize(masks.float(), resolution, "nearest") > 0.5
    else:
        if not source.has_boxes:
            raise CxrbenchError(f"{dataset.root}: task {task.task_id} needs boxes but the cache has none")
        boxes = [
            torch.from_numpy(np.asarray(source.boxes(i)[0], dtype=np.float32) * scale)
            for i in range(len(source))
        ]
    return TaskSplit(images, masks, boxes, source.image_ids, dataset.stats["mean"], dataset.stats["std"])


def resize_images(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 N x S x S -> uint8 N x R x R (antialiased bilinear, rounded): how every encoder input is sized."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    if x.shape[-1] == resolution:
        return x
    return _resize(x.unsqueeze(1).float(), resolution, "bilinear").round().clamp(0, 255).to(torch.uint8)[:, 0]


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    out = []
    for start in range(0, x.shape[0], 256):  # bounded memory for large splits
        chunk = x[start : start + 256]
        if mode == "bilinear":
            out.append(
                F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            )
        else:
            out.append(F.interpolate(chunk, size=(size, size), mode="nearest"))
    return torch.cat(out) if out else x.new_zeros((0, x.shape[1], size, size))
