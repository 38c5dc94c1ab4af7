"""Image-only pre-training baselines: SimCLR, BYOL and CheXpert-supervised, on prepared MIMIC-CXR images.

`pretrain` dispatches methods of kind "image_only" here. Settings are in `image_only_specs.py`; the
augmentation is the protocol's pre-training augmentation (`data.train_augmentation`). The output
folder is like the image-report methods': encoder.safetensors / encoder.pt (the ResNet backbone,
torchvision key names, loadable by `cxrbench evaluate` with no options), checkpoint.pt (the training
state after the last finished epoch, loadable with weights_only=True, so `--resume` continues to the
same weights) and history.json. Augmentations are seeded by (seed, epoch, index), the order by
(seed, epoch) and the global RNG by (seed, epoch): same seed, data and CPU -> same exported weights.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cxrbench.baselines.chexpert import COMPETITION_LABELS, DEFAULT_POLICY, binary_targets
from cxrbench.baselines.data import eval_transform, train_augmentation
from cxrbench.baselines.image_only_specs import IMAGE_ONLY_SPECS, ImageOnlySpec
from cxrbench.baselines.methods import MethodConfig
from cxrbench.baselines.training import (
    CHECKPOINT,
    ENCODER_FILES,
    HISTORY,
    PretrainProfile,
    PretrainReporter,
    PretrainResult,
    _SeededSampler,
    save_encoder,
)
from cxrbench.datasets import PreparedSplit, open_prepared
from cxrbench.encoders import ResNetEncoder, find_imagenet_weights, load_encoder, read_checkpoint
from cxrbench.errors import CheckpointError, CxrbenchError, RunFailedError
from cxrbench.io_utils import atomic_path, atomic_write_json
from cxrbench.provenance import provenance
from cxrbench.runtime import autocast, resolve_device

FORMAT_VERSION = 1
CHECKPOINT_KEY = "image_only_method"  # distinguishes these checkpoints from image-report ones


# ------------------------------------------------------------------------------------------------ data
class ImageViews(Dataset):
    """Images of one prepared split as `views` augmented copies (and CheXpert targets when given).

    `augment=False` gives one resized view (supervised validation). Targets: an N x L float array.
    """

    def __init__(
        self,
        split: PreparedSplit,
        resolution: int,
        mean: float,
        std: float,
        *,
        views: int,
        augment: bool,
        seed: int,
        targets: np.ndarray | None = None,
    ):
        self.split, self.views, self.augment, self.seed = split, views, augment, seed
        self.mean, self.std, self.targets = mean, std, targets
        self.transform = train_augmentation(resolution) if augment else eval_transform(resolution)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def _tensor(self, pixels: np.ndarray) -> Tensor:
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0).sub_(self.mean).div_(self.std)
        return x.unsqueeze(0).expand(3, -1, -1).contiguous()

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image = np.ascontiguousarray(self.split.image(index))
        item: dict[str, Tensor] = {}
        for v in range(self.views):
            if self.augment:
                self.transform.set_random_seed(int(rng.integers(2**31)))
            item[f"view{v}"] = self._tensor(self.transform(image=image)["image"])
        if self.targets is not None:
            item["targets"] = torch.from_numpy(self.targets[index])
        return item


def _subset(split: PreparedSplit, max_images: int | None, seed: int) -> PreparedSplit:
    if max_images is None or len(split) <= max_images:
        return split
    return split.subset(np.sort(np.random.default_rng(seed).choice(len(split), max_images, replace=False)))


def chexpert_split(split: PreparedSplit, data: Path) -> tuple[PreparedSplit, np.ndarray]:
    """The images whose study has CheXpert labels, and their binary targets (U-Ones, blank = 0)."""
    try:
        codes = split.field("chexpert")
    except KeyError:
        raise CxrbenchError(
            f"{data} has no CheXpert labels: prepare MIMIC-CXR again with mimic-cxr-2.0.0-chexpert.csv.gz "
            "in the raw folder (`cxrbench prepare mimic_cxr`)"
        ) from None
    targets = [binary_targets(c, COMPETITION_LABELS, DEFAULT_POLICY) for c in codes]
    keep = np.array([i for i, t in enumerate(targets) if t is not None], dtype=np.int64)
    if len(keep) == 0:
        return split.subset(keep), np.zeros((0, len(COMPETITION_LABELS)), np.float32)
    return split.subset(keep), np.stack([targets[i] for i in keep])


# ---------------------------------------------------------------------------------------------- models
def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Linear (the BYOL projector / predictor)."""
    return nn.Sequential(
        nn.Linear(d_in, d_hidden), nn.BatchNorm1d(d_hidden), nn.ReLU(inplace=True), nn.Linear(d_hidden, d_out)
    )


class ImageOnlyModel(nn.Module):
    """A ResNet backbone (the exported encoder), global average pooling and the method's heads."""

    def __init__(self, spec: ImageOnlySpec, arch: str):
        super().__init__()
        self.spec = spec
        self.backbone = ResNetEncoder(arch)
        dim = self.backbone.feature_info.channels["conv5"]
        if spec.objective == "simclr":
            hidden = spec.projection_hidden or dim
            self.projector: nn.Module = nn.Sequential(
                nn.Linear(dim, hidden, bias=False),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, spec.projection_size, bias=False),
            )
        elif spec.objective == "byol":
            self.projector = _mlp(dim, spec.projection_hidden, spec.projection_size)
            self.predictor = _mlp(spec.projection_size, spec.projection_hidden, spec.projection_size)
            self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        elif spec.objective == "chexpert":
            self.classifier = nn.Linear(dim, len(COMPETITION_LABELS))
        else:
            raise CxrbenchError(f"image-only method {spec.name!r}: unknown objective {spec.objective!r}")

    def features(self, x: Tensor, target: bool = False) -> Tensor:
        backbone = self.target_backbone if target else self.backbone
        return backbone(x)["conv5"].mean((2, 3))

    @torch.no_grad()
    def update_target(self) -> None:
        """BYOL: target <- m * target + (1 - m) * online (parameters; BatchNorm statistics are its own)."""
        m = self.spec.momentum
        for online, target in (
            (self.backbone, self.target_backbone),
            (self.projector, self.target_projector),
        ):
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.mul_(m).add_(p_o.detach(), alpha=1.0 - m)


def nt_xent(z1: Tensor, z2: Tensor, tau: float) -> Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of its image, negatives the other 2B-2."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    n = z1.shape[0]
    sim = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def byol_regression(p: Tensor, t: Tensor) -> Tensor:
    """2 - 2 cos(p, t) per sample (t is the target network's projection, no gradient)."""
    return 2 - 2 * F.cosine_similarity(p.float(), t.detach().float(), dim=-1)


def image_only_loss(model: ImageOnlyModel, batch: dict[str, Tensor], device: torch.device) -> Tensor:
    """The method's loss on one batch; the backbone may run under autocast, the loss runs in float32."""
    spec = model.spec
    with autocast(device):
        if spec.objective == "chexpert":
            logits = model.classifier(model.features(batch["view0"]))
        elif spec.objective == "simclr":
            z1 = model.projector(model.features(batch["view0"]))
            z2 = model.projector(model.features(batch["view1"]))
        else:
            p1 = model.predictor(model.projector(model.features(batch["view0"])))
            p2 = model.predictor(model.projector(model.features(batch["view1"])))
            with torch.no_grad():
                t1 = model.target_projector(model.features(batch["view0"], target=True))
                t2 = model.target_projector(model.features(batch["view1"], target=True))
    if spec.objective == "chexpert":
        return F.binary_cross_entropy_with_logits(logits.float(), batch["targets"].float())
    if spec.objective == "simclr":
        return nt_xent(z1, z2, spec.temperature)
    return (byol_regression(p1, t2) + byol_regression(p2, t1)).mean()


# -------------------------------------------------------------------------------------------- training
def _batch_size(spec: ImageOnlySpec, prof: PretrainProfile, n_train: int) -> int:
    """The reference batch, capped by the profile's (micro-batch x accumulation) and the data."""
    return max(2, min(spec.batch_size, prof.batch_size * prof.accumulation, n_train))


def _init_backbone(model: ImageOnlyModel, prof: PretrainProfile) -> str:
    if prof.image_init != "imagenet_if_available":
        return "random"
    try:
        path = find_imagenet_weights(prof.arch)
    except CheckpointError as exc:
        warnings.warn(f"training from random init: {exc}", stacklevel=3)
        return "random"
    model.backbone.load_state_dict(load_encoder(path, arch=prof.arch).encoder.state_dict())
    if model.spec.objective == "byol":
        model.target_backbone.load_state_dict(model.backbone.state_dict())
    return f"imagenet ({path.name})"


def _warmup_cosine(base: float, step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * base * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def pretrain_image_only(
    config: MethodConfig,
    data: Path,
    out: Path,
    prof: PretrainProfile,
    *,
    resume: bool = False,
    device: str = "auto",
    reporter: PretrainReporter | None = None,
) -> PretrainResult:
    """Train one image-only method on the prepared MIMIC-CXR train split (profile's percent / caps)."""
    spec = IMAGE_ONLY_SPECS[config.name]
    reporter = reporter or PretrainReporter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CxrbenchError(f"{config.name}: image-only methods train in one process; run without torchrun")
    if (out / CHECKPOINT).exists() and not resume:
        raise CxrbenchError(
            f"{out} already holds a pre-training checkpoint; pass --resume or choose a new --out"
        )
    if resume and not (out / CHECKPOINT).exists():
        raise CxrbenchError(f"--resume: no {CHECKPOINT} in {out}")
    state = read_checkpoint(out / CHECKPOINT) if resume else None
    if state is not None and state.get(CHECKPOINT_KEY, {}).get("name") != config.name:
        raise CxrbenchError(f"{out} does not hold a {config.name!r} run")
    dev = resolve_device(device)
    torch.manual_seed(prof.seed)
    dataset = open_prepared(data)
    mean, std = dataset.stats["mean"], dataset.stats["std"]
    train_split = _subset(dataset.split("train", prof.percent), prof.max_train_images, prof.seed)
    val_split = _subset(dataset.split("val"), prof.max_val_images, prof.seed)
    supervised = spec.objective == "chexpert"
    train_targets = val_targets = None
    if supervised:
        train_split, train_targets = chexpert_split(train_split, data)
        val_split, val_targets = chexpert_split(val_split, data)
    views = 1 if supervised else 2
    train = ImageViews(
        train_split,
        prof.resolution,
        mean,
        std,
        views=views,
        augment=True,
        seed=prof.seed,
        targets=train_targets,
    )
    # Validation: fixed views (the same every epoch), so the loss curve compares like with like.
    val = ImageViews(
        val_split,
        prof.resolution,
        mean,
        std,
        views=views,
        augment=not supervised,
        seed=prof.seed + 1,
        targets=val_targets,
    )
    if len(train) < 2 or len(val) < 1:
        raise CxrbenchError(f"{data}: too few images for {config.name} (train {len(train)}, val {len(val)})")
    out.mkdir(parents=True, exist_ok=True)
    model = ImageOnlyModel(spec, prof.arch)
    image_init = _init_backbone(model, prof)
    model.to(dev)
    batch_size = _batch_size(spec, prof, len(train))
    sampler = _SeededSampler(len(train), prof.seed)
    loader_args = {"num_workers": prof.workers, "pin_memory": dev.type == "cuda"}
    train_loader = DataLoader(train, batch_size, sampler=sampler, drop_last=True, **loader_args)
    val_loader = DataLoader(
        val, batch_size, drop_last=not supervised and len(val) >= 2 * batch_size, **loader_args
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    plateau = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=spec.plateau_factor, patience=spec.plateau_patience
        )
        if spec.schedule == "plateau"
        else None
    )
    steps_per_epoch, total_steps = len(train_loader), len(train_loader) * prof.max_epochs
    history: list[dict] = []
    epoch = step = bad_epochs = 0
    best_val, best_epoch, stopped, best_encoder = math.inf, None, False, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if plateau is not None:
            plateau.load_state_dict(state["scheduler"])
        history, epoch, step = list(state["history"]), state["epoch"], state["step"]
        best_val, best_epoch, bad_epochs = state["best_val"], state["best_epoch"], state["bad_epochs"]
        stopped, best_encoder = state["stopped_early"], state["best_encoder"]

    def evaluate() -> float:
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in val_loader:
                batch = {k: v.to(dev) for k, v in batch.items()}
                if not supervised and len(batch["view0"]) < 2:
                    continue
                total += float(image_only_loss(model, batch, dev)) * len(batch["view0"])
                n += len(batch["view0"])
        return total / max(n, 1)

    def backbone_state() -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}

    def save(done: bool) -> None:
        record = {
            "method": config.as_record(),
            "settings": asdict(spec),
            "profile": asdict(prof),
            "batch_size": batch_size,
            "image_init": image_init,
            "labels": list(COMPETITION_LABELS) if supervised else None,
            "uncertain_policy": DEFAULT_POLICY if supervised else None,
            "history": history,
            "best_epoch": best_epoch,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
            "stopped_early": stopped,
            "finished": done,
            **provenance(),
        }
        checkpoint = {
            "format_version": FORMAT_VERSION,
            CHECKPOINT_KEY: config.as_record(),
            "settings": asdict(spec),
            "profile": asdict(prof),
            "epoch": epoch,
            "step": step,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped,
            "history": history,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": plateau.state_dict() if plateau is not None else None,
            "best_encoder": best_encoder,
        }
        with atomic_path(out / CHECKPOINT) as tmp:
            torch.save(checkpoint, tmp)
        atomic_write_json(out / HISTORY, record)

    reporter.started(config.name, prof.max_epochs, steps_per_epoch, epoch)
    if state is None:
        start = time.perf_counter()
        best_val, best_epoch = evaluate(), 0
        history.append(
            {
                "epoch": 0,
                "train_loss": None,
                "val_loss": best_val,
                "lr": 0.0,
                "time_s": time.perf_counter() - start,
            }
        )
        best_encoder = backbone_state()
        save_encoder(best_encoder, out)
        reporter.epoch(history[-1])
        save(False)
    while epoch < prof.max_epochs and not stopped:
        start = time.perf_counter()
        train.epoch = epoch
        sampler.set_epoch(epoch)
        torch.manual_seed(prof.seed * 1_000_003 + epoch)
        model.train()
        running, count = 0.0, 0
        for batch in train_loader:
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            if plateau is None:
                for group in optimizer.param_groups:
                    group["lr"] = _warmup_cosine(spec.lr, step, steps_per_epoch, total_steps)
            loss = image_only_loss(model, batch, dev)
            if not torch.isfinite(loss):
                raise RunFailedError(
                    f"{config.name}: the training loss became {float(loss)} in epoch {epoch + 1}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if spec.objective == "byol":
                model.update_target()
            step += 1
            running += float(loss.detach())
            count += 1
            reporter.step(epoch + 1, float(loss.detach()))
        epoch += 1
        val_loss = evaluate()
        entry = {
            "epoch": epoch,
            "train_loss": running / max(count, 1),
            "val_loss": val_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "time_s": time.perf_counter() - start,
        }
        history.append(entry)
        if plateau is not None:
            plateau.step(val_loss)
        if val_loss < best_val:
            best_val, best_epoch, bad_epochs = val_loss, epoch, 0
            if spec.export == "best":
                best_encoder = backbone_state()
        else:
            bad_epochs += 1
            stopped = bool(spec.early_stop_patience) and bad_epochs >= spec.early_stop_patience
        if spec.export == "last":
            best_encoder = backbone_state()
        save_encoder(best_encoder, out)
        reporter.epoch(entry)
        save(False)
    save(True)
    result = PretrainResult(out, out / ENCODER_FILES[0], history, best_epoch, stopped)
    reporter.finished(result)
    return result
