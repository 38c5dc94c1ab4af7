"""Batches of one task split as the training loop consumes them: the uint8 images and the targets of
each planned index batch, gathered either in the training process (the CPU default, exactly as before)
or by DataLoader worker processes into pinned memory (on CUDA, `runtime.loader_settings`).

The order of batches is always planned in the training process (`TaskSplit.batches` with the run's
generator), so workers change where a batch is gathered, never which images it holds: the same seed
gives the same batches with and without workers. Images stay uint8 until they reach the device, where
they are normalised (a quarter of the bytes of float32 to copy, and no float work on the host).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrbench.protocol.task_data import TaskSplit
from cxrbench.runtime import LoaderSettings


@dataclass
class Batch:
    """One batch on the host: its image indices, uint8 images (None when not needed) and targets."""

    index: Tensor
    images: Tensor | None
    targets: Tensor | list[Tensor]

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (called by DataLoader's pinning thread, or inline)."""
        targets = self.targets
        pinned = targets.pin_memory() if isinstance(targets, Tensor) else [t.pin_memory() for t in targets]
        images = None if self.images is None else self.images.pin_memory()
        return Batch(self.index, images, pinned)


class _Gather(Dataset):
    """Maps a batch's index list to its `Batch` (runs in a worker process when there are workers)."""

    def __init__(self, split: TaskSplit, with_images: bool):
        self.split, self.with_images = split, with_images

    def __getitem__(self, index: list[int] | Tensor) -> Batch:
        index = torch.as_tensor(index, dtype=torch.long)
        images = self.split.images[index] if self.with_images else None
        return Batch(index, images, self.split.targets(index))

    def __len__(self) -> int:
        return len(self.split)


class _Plan(Sampler):
    """The index batches of the current pass, set before each pass (persistent workers read it anew)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class SplitLoader:
    """Iterates the `Batch`es of given index batches of one split, per `settings`."""

    def __init__(self, split: TaskSplit, settings: LoaderSettings, with_images: bool = True):
        self.settings = settings
        self._gather = _Gather(split, with_images)
        self._plan = _Plan()
        self._loader: DataLoader | None = None
        if settings.num_workers > 0:
            self._loader = DataLoader(
                self._gather,
                batch_size=None,  # each key is already a whole batch
                sampler=self._plan,
                num_workers=settings.num_workers,
                collate_fn=_identity,
                pin_memory=settings.pin_memory,
                persistent_workers=True,  # one start per run, not per epoch
            )

    def __call__(self, batches: Iterable[Tensor]) -> Iterator[Batch]:
        if self._loader is None:
            for index in batches:
                batch = self._gather[index]
                yield batch.pin_memory() if self.settings.pin_memory else batch
            return
        self._plan.batches = [index.tolist() for index in batches]
        yield from self._loader


def _identity(batch: Batch) -> Batch:
    return batch
