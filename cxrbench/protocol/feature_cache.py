"""Frozen-encoder feature cache: encode each image once, reuse the features every epoch and every run.

The protocol uses no augmentation and a frozen encoder stays in eval mode, so its features for an
image never change during a frozen task. Caching them turns every epoch after the first into
head-only work, and a `FeatureStore` shared by a task's runs (the lr search and the final seeds all
start from the same encoder weights) encodes the task's images once for all of them.

Where the cache lives, per task (`cache_kind`, budgets as options of `evaluate` and `plan`):
- "memory" when the features fit the memory budget (`--cache-memory-gb`, default 6 GiB);
- "disk" otherwise, when they fit the disk budget (`--cache-disk-gb`, default 20 GiB) and the free
  space of the temporary directory: memmapped .npy files in a cxrbench-owned, marked temporary folder
  removed when the task ends (protocol/feature_disk.py);
- "none" otherwise: the encoder runs at every step, as for fine-tune tasks.
The budgets are checked against the float32 size (`cache_bytes`), an upper bound.

Dtype rule (memory and disk alike): features are stored in the dtype the encoder returned them in
under the run's autocast, never converted. On a CPU, or with `--no-amp`, that is float32; under
CUDA mixed precision a stage the encoder returns in bfloat16 is stored in bfloat16 (on disk as its
16 bits), half the size and bit-identical to what the uncached path hands the head. So the cached
paths give the same features, and the same predictions and metrics for a seed, as encoding at
every step. The cache holds the encoder's outputs before the neck (encoders/neck.py), which trains
with the head: a ViT's cache is its tapped patch grids, not the pyramid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from cxrbench.encoders import FeatureInfo
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.feature_disk import OwnedFolder, free_bytes, storage_view

MEMORY, DISK, NONE = "memory", "disk", "none"
DEFAULT_MEMORY_BUDGET_BYTES = 6 * 1024**3
DEFAULT_BUDGET_BYTES = DEFAULT_MEMORY_BUDGET_BYTES  # the name older callers import
DEFAULT_DISK_BUDGET_BYTES = 20 * 1024**3
ENCODE_BATCH = 64


def cache_bytes(feature_info: FeatureInfo, stages: Sequence[str], n_images: int, resolution: int) -> int:
    """Bytes a float32 cache of `stages` for `n_images` images would take (an upper bound)."""
    per_image = sum(feature_info.channels[s] * (resolution // feature_info.strides[s]) ** 2 for s in stages)
    return 4 * per_image * n_images


def budget_bytes(option: str, gib: float | None, default: int) -> int:
    """A budget option in GiB as bytes (None: `default`); refuses negative or non-finite values."""
    if gib is None:
        return default
    if not math.isfinite(gib) or gib < 0:
        raise CxrbenchError(
            f"{option} must be a finite number of GiB >= 0 (0 turns that cache off), got {gib}"
        )
    return int(gib * 1024**3)


def cache_kind(
    need_bytes: int,
    enabled: bool = True,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    disk_budget_bytes: int = DEFAULT_DISK_BUDGET_BYTES,
    disk_free_bytes: Callable[[], int] = free_bytes,
) -> str:
    """Where a frozen task's features go: MEMORY if they fit its budget, else DISK if they fit the
    disk budget and the free space, else NONE (`enabled` False: NONE)."""
    if not enabled:
        return NONE
    if need_bytes <= memory_budget_bytes:
        return MEMORY
    if need_bytes <= disk_budget_bytes and need_bytes <= disk_free_bytes():
        return DISK
    return NONE


def state_fingerprint(module: nn.Module) -> tuple[float, ...]:
    """A cheap checksum of a module's weights and buffers: a store re-encodes if they changed."""
    values = [t.detach().double().sum() for t in module.state_dict().values() if t.is_floating_point()]
    return tuple(torch.stack(values).cpu().tolist()) if values else ()


@dataclass
class _Entry:
    split: object
    fingerprint: tuple[float, ...]
    features: dict[str, Tensor]
    prefix: str  # its files' names in the disk cache's folder start with it


class FeatureStore:
    """The cached features of one task's splits, shared by the task's runs; `close` (or leaving the
    `with` block) frees them and removes the disk cache's folder."""

    def __init__(self, parent: Path | None = None):
        self.parent = parent  # where the disk cache's temporary folder goes (None: the system's)
        self._entries: dict[tuple, _Entry] = {}
        self._folder: OwnedFolder | None = None
        self._written = 0  # arrays encoded so far: unique file names in the folder

    @property
    def folder(self) -> Path | None:
        """The disk cache's folder while it exists."""
        return self._folder.path if self._folder is not None else None

    def features(
        self,
        kind: str,
        data: Mapping[str, object],
        encoder: nn.Module,
        stages: Sequence[str],
        device: torch.device,
        autocast: Callable[[], object],
    ) -> dict[str, dict[str, Tensor]]:
        """Per split of `data` (name -> TaskSplit), the features of every image, encoded on first use
        (again if the split object or the encoder's weights changed); kept in memory or on disk as
        `kind` says."""
        if kind not in (MEMORY, DISK):
            raise ValueError(f"no feature cache of kind {kind!r}")
        fingerprint = state_fingerprint(encoder)
        out = {}
        for name, split in data.items():
            key = (name, kind, tuple(stages))
            entry = self._entries.get(key)
            if entry and entry.split is split and entry.fingerprint == fingerprint:
                out[name] = entry.features
                continue
            if kind == DISK and self._folder is None:
                self._folder = OwnedFolder(self.parent)
            self._drop(key)  # release the old features before encoding the new ones
            prefix = f"{self._written}-{name}"
            features = encode_all(
                encoder,
                len(split),
                lambda i, split=split: split.normalise(split.images[i]),
                stages,
                ENCODE_BATCH,
                device,
                autocast,
                folder=self._folder if kind == DISK else None,
                prefix=prefix,
            )
            self._written += 1
            self._entries[key] = _Entry(split, fingerprint, features, prefix)
            out[name] = features
        return out

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and self._folder is not None:
            entry.features.clear()
            for path in self._folder.path.glob(f"{entry.prefix}-*.npy"):
                path.unlink()

    def close(self) -> None:
        self._entries.clear()
        if self._folder is not None:
            self._folder.remove()
            self._folder = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def owns_feature_store(train: Callable) -> Callable:
    """Give a training function called without `feature_store=` a store of its own for that call,
    closed (its disk folder removed) when the call returns or raises."""

    @functools.wraps(train)
    def wrapper(*args, feature_store: FeatureStore | None = None, **kwargs):
        if feature_store is not None:
            return train(*args, feature_store=feature_store, **kwargs)
        with FeatureStore() as store:
            return train(*args, feature_store=store, **kwargs)

    return wrapper


@torch.no_grad()
def encode_all(
    encoder: nn.Module,
    n_images: int,
    batch_input: Callable[[Tensor], Tensor],
    stages: Sequence[str],
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], object],
    folder: OwnedFolder | None = None,
    prefix: str = "features",
) -> dict[str, Tensor]:
    """Features of every image (`batch_input(index)` gives the normalised batch), in the dtype the
    encoder returns, on the CPU: in memory, or in memmapped files of `folder`."""
    encoder.eval()
    out: dict[str, Tensor] = {}
    pending: dict[str, tuple] = {}
    for start in range(0, n_images, batch_size):
        index = torch.arange(start, min(start + batch_size, n_images))
        with autocast():
            feats = encoder(batch_input(index).to(device, non_blocking=True))
        for s in stages:
            f = feats[s]
            if s not in out:
                shape = (n_images, *f.shape[1:])
                if folder is None:
                    out[s] = torch.empty(shape, dtype=f.dtype)
                else:
                    array, partial = folder.write(f"{prefix}-{s}", shape, f.dtype)
                    pending[s] = (array, partial, f.dtype)
                    target = torch.from_numpy(array)
                    out[s] = target.view(f.dtype) if f.dtype is torch.bfloat16 else target
            storage_view(out[s])[start : start + len(index)] = storage_view(f.detach()).cpu()
    for s, (array, partial, dtype) in pending.items():
        out[s] = folder.finish(array, partial, dtype)  # type: ignore[union-attr]
    del pending
    return out
