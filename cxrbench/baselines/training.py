"""Pre-training loop: the method's optimiser and schedule, gradient accumulation, early stopping,
resume, AMP (encoders only; losses in float32), DDP.

One function, `pretrain`, takes a method name, a prepared MIMIC-CXR folder and an output folder and
leaves there: encoder.safetensors and encoder.pt (the ResNet backbone of the best validation epoch,
torchvision key names, loadable by `cxrbench evaluate` without options), projection_heads.safetensors
(the projection heads of that same epoch), checkpoint.pt (the full training state after the last
finished epoch, tensors and plain containers only, so it loads with weights_only=True) and
history.json. Image-only methods (SimCLR, BYOL, CheXpert) are trained by `image_only.py`.
Launched by torchrun (RANK / WORLD_SIZE in the environment) it trains with DistributedDataParallel
(nccl on GPUs, gloo on CPUs) and only rank 0 writes files.
`load_pretrained_model` rebuilds a run's model from its output folder (for `cxrbench analyze`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from cxrbench.baselines.data import PairCollator, PretrainPairs, build_offline_tokenizer
from cxrbench.baselines.methods import MethodConfig, get_method, method_loss
from cxrbench.baselines.models import ImageModel, PretrainModel, ReportModel
from cxrbench.datasets import open_prepared
from cxrbench.encoders import ResNetEncoder, find_imagenet_weights, load_encoder, read_checkpoint
from cxrbench.errors import CheckpointError, CxrbenchError, RunFailedError
from cxrbench.io_utils import atomic_path, atomic_write_json
from cxrbench.provenance import provenance
from cxrbench.runtime import autocast, resolve_device

CHECKPOINT = "checkpoint.pt"
ENCODER_FILES = ("encoder.safetensors", "encoder.pt")
HISTORY = "history.json"
PROJECTION_HEADS = "projection_heads.safetensors"  # best epoch's projections, for `cxrbench analyze`
HEAD_PREFIXES = ("image_global_proj.", "report_global_proj.", "image_local_proj.", "report_local_proj.")
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"


@dataclass(frozen=True)
class PretrainProfile:
    """How big a pre-training run is. `full`: docs/protocol.md; `demo` runs every code path in minutes on a CPU."""

    name: str
    arch: str = "resnet50"
    resolution: int = 224
    batch_size: int = 32
    accumulation: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-6
    max_epochs: int = 100
    patience: int = 10
    d_hidden: int = 2048
    d_z: int = 512
    bert: str | None = CLINICAL_BERT  # None: a small random BERT with a tokenizer built from the reports
    bert_hidden: int = 64
    bert_layers: int = 2
    bert_heads: int = 2
    vocab_size: int = 2000
    max_tokens: int = 512
    freeze_bert_layers: int = 6
    freeze_bert_embeddings: bool = True
    image_init: str = "imagenet_if_available"  # or "random"
    percent: float = 30  # share of the train split (the prepared fixed subset)
    max_train_images: int | None = None
    max_val_images: int | None = None
    workers: int = 8
    seed: int = 0
    # True: a method's own lr / max_epochs / patience / accumulation (e.g. ConVIRT's 500 epochs) replace
    # the values above; False (demo, tests): the profile's short budget holds for every method.
    method_budget: bool = True


PRETRAIN_PROFILES: dict[str, PretrainProfile] = {
    "full": PretrainProfile("full"),
    "demo": PretrainProfile(
        "demo",
        arch="resnet18",
        resolution=128,
        batch_size=8,
        accumulation=1,
        lr=3e-4,
        weight_decay=1e-6,
        max_epochs=8,
        patience=3,
        d_hidden=256,
        d_z=64,
        bert=None,
        max_tokens=128,
        freeze_bert_layers=0,
        freeze_bert_embeddings=False,
        image_init="random",
        percent=100,
        max_train_images=256,
        max_val_images=64,
        workers=0,
        method_budget=False,
    ),
}


def method_profile(config: MethodConfig, profile: PretrainProfile) -> PretrainProfile:
    """The profile a method trains with: its own budget where the profile lets methods set it."""
    if not profile.method_budget:
        return profile
    own = {
        "lr": config.lr,
        "max_epochs": config.max_epochs,
        "patience": config.patience,
        "accumulation": config.accumulation,
    }
    return replace(profile, **{k: v for k, v in own.items() if v is not None})


def get_pretrain_profile(name: str) -> PretrainProfile:
    try:
        return PRETRAIN_PROFILES[name]
    except KeyError:
        raise CxrbenchError(f"unknown profile {name!r}; valid: {', '.join(PRETRAIN_PROFILES)}") from None


class PretrainReporter:
    """Progress callbacks (no-ops); the CLI subclasses this with a rich display."""

    def started(self, method: str, epochs: int, steps_per_epoch: int, start_epoch: int) -> None: ...
    def step(self, epoch: int, loss: float) -> None: ...
    def epoch(self, entry: dict) -> None: ...
    def finished(self, result: PretrainResult) -> None: ...


@dataclass
class PretrainResult:
    out: Path
    encoder_path: Path
    history: list[dict]
    best_epoch: int | None
    stopped_early: bool = False


@dataclass
class _Dist:
    """Distributed context from torchrun's environment (world_size 1 = plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch_dist.all_reduce(t)
        return (t / self.world_size).tolist()


def _dist_from_env(device_spec: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not torch_dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
        created = True
    return _Dist(rank, world, local, created)


def _device(spec: str, ctx: _Dist) -> torch.device:
    device = resolve_device(spec)
    if device.type == "cuda" and ctx.active:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


# ------------------------------------------------------------------------------------------- export
def save_encoder(encoder: ResNetEncoder | dict[str, Tensor], out: Path) -> Path:
    """Write the backbone as encoder.safetensors and encoder.pt (torchvision key names); returns the first."""
    from safetensors.torch import save_file

    state = encoder.state_dict() if isinstance(encoder, nn.Module) else encoder
    state = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ENCODER_FILES[0]) as tmp:
        save_file(state, str(tmp))
    with atomic_path(out / ENCODER_FILES[1]) as tmp:
        torch.save(state, tmp)
    return out / ENCODER_FILES[0]


def save_projection_heads(model: nn.Module, out: Path) -> Path:
    """Write the projection heads (global and local, PretrainModel key names) next to the encoder.

    Written with the best-epoch encoder, so `cxrbench analyze` projects that backbone's regions with
    the heads trained alongside it (checkpoint.pt holds the last epoch's model instead).
    """
    from safetensors.torch import save_file

    state = {
        k: v.detach().cpu().clone().contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(HEAD_PREFIXES)
    }
    with atomic_path(out / PROJECTION_HEADS) as tmp:
        save_file(state, str(tmp))
    return out / PROJECTION_HEADS


def export_init(config: MethodConfig, out: Path, profile: PretrainProfile) -> PretrainResult:
    """`random` / `imagenet`: export the initial backbone without training."""
    encoder = load_encoder(config.name, arch=profile.arch, seed=profile.seed).encoder
    path = save_encoder(encoder, out)
    atomic_write_json(
        out / HISTORY,
        {
            "method": config.as_record(),
            "profile": asdict(profile),
            "history": [],
            "best_epoch": None,
            **provenance(),
        },
    )
    return PretrainResult(out, path, [], None)


# ------------------------------------------------------------------------------------------ building
def _report_encoder(profile: PretrainProfile, bert: str | None, out: Path, texts: list[str], ctx: _Dist):
    """(tokenizer, BERT model): a local/hub model when `bert` is given, else a small random BERT."""
    from transformers import BertConfig, BertModel

    if bert is None:
        if ctx.main:
            build_offline_tokenizer(texts, out / TOKENIZER_DIR, profile.vocab_size)
        ctx.barrier()
        tokenizer = build_offline_tokenizer(texts, out / TOKENIZER_DIR, profile.vocab_size)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=profile.bert_hidden,
            num_hidden_layers=profile.bert_layers,
            num_attention_heads=profile.bert_heads,
            intermediate_size=4 * profile.bert_hidden,
            max_position_embeddings=max(profile.max_tokens, 8),
        )
        return tokenizer, BertModel(config, add_pooling_layer=False)
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(bert)
        model = AutoModel.from_pretrained(bert, add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        raise CxrbenchError(
            f"cannot load the report encoder {bert!r} ({str(exc).splitlines()[0]}). Pass --bert with a local "
            f"folder holding the model (e.g. a download of {CLINICAL_BERT}), or make it available in the "
            "Hugging Face cache on a machine with internet first (HF_HUB_OFFLINE=1 then uses the cache)"
        ) from None
    return tokenizer, model


def build_model(
    config: MethodConfig, profile: PretrainProfile, bert_model: nn.Module, image: ImageModel | None = None
) -> PretrainModel:
    """The PretrainModel of `config`: used by training and by `load_pretrained_model`, so they agree.

    `image` is an already initialised ImageModel (training's ImageNet init); by default a fresh one.
    Modules are created in the same order either way (the RNG draws of training do not change).
    """
    image = image if image is not None else ImageModel(profile.arch, config.image_pooling)
    report = ReportModel(
        bert_model, config.sentence_pooling, profile.freeze_bert_layers, profile.freeze_bert_embeddings
    )
    return PretrainModel(
        image,
        report,
        profile.d_hidden,
        profile.d_z,
        config.projection,
        local=config.needs_local_projections,
        cross_attention=config.needs_cross_attention,
        learnable_tau=config.global_tau if config.learnable_tau else None,
    )


# ------------------------------------------------------------------------------------------- loading
PRETRAIN_CHECKPOINT_KEYS = ("method", "profile", "model")


@dataclass
class LoadedPretrainModel:
    """A finished or interrupted pre-training run rebuilt for inference (`load_pretrained_model`)."""

    model: PretrainModel  # state of the last finished epoch, eval mode, no gradients
    tokenizer: object
    profile: PretrainProfile
    config: MethodConfig
    checkpoint: Path  # the checkpoint.pt that was read
    best_encoder: dict[str, Tensor]  # backbone of the best validation epoch = encoder.safetensors
    epoch: int
    best_epoch: int | None


def is_pretrain_checkpoint(obj: object) -> bool:
    """True for the training state that `pretrain` writes as OUT/checkpoint.pt."""
    return isinstance(obj, Mapping) and all(k in obj for k in PRETRAIN_CHECKPOINT_KEYS)


def pretrain_checkpoint_file(source: str | Path) -> Path:
    """OUT/checkpoint.pt for a pre-training output folder, else `source` itself."""
    path = Path(source)
    return path / CHECKPOINT if path.is_dir() else path


def load_pretrained_model(
    source: str | Path, device: str | torch.device = "cpu", state: Mapping | None = None
) -> LoadedPretrainModel:
    """Rebuild the PretrainModel of a pre-training run exactly as `pretrain` built it and load its weights.

    `source` is the output folder or its checkpoint.pt (read with weights_only=True; pass `state` when
    it was already read). The report encoder comes from the run's tokenizer/ folder (small random BERT)
    or its --bert model, which must still be available. The global RNG is left untouched.
    """
    path = pretrain_checkpoint_file(source)
    if not path.is_file():
        raise CheckpointError(f"{source}: no pre-training checkpoint ({CHECKPOINT}) found there")
    state = read_checkpoint(path) if state is None else state
    if not is_pretrain_checkpoint(state):
        keys = ", ".join(map(repr, PRETRAIN_CHECKPOINT_KEYS))
        raise CheckpointError(f"{path}: not a pre-training checkpoint (needs the keys {keys})")
    config = _config_from_record(state["method"])
    names = {f.name for f in fields(PretrainProfile)}
    profile = PretrainProfile(**{k: v for k, v in state["profile"].items() if k in names})
    bert = state.get("bert")
    vocab = path.parent / TOKENIZER_DIR / "vocab.txt"
    if bert is None and not vocab.is_file():
        raise CheckpointError(
            f"{path}: the run's tokenizer {vocab} is missing (keep the whole output folder)"
        )
    with torch.random.fork_rng(devices=[]):
        tokenizer, bert_model = _report_encoder(profile, bert, path.parent, [], _Dist())
        model = build_model(config, profile, bert_model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: its weights do not fit the {config.name!r} model ({str(exc).splitlines()[0]})"
        ) from None
    model.to(device).eval().requires_grad_(False)
    best = state.get("best_encoder") or model.image.backbone.state_dict()
    return LoadedPretrainModel(
        model,
        tokenizer,
        profile,
        config,
        path,
        dict(best),
        int(state.get("epoch", 0)),
        state.get("best_epoch"),
    )


def _config_from_record(record: Mapping) -> MethodConfig:
    """The MethodConfig a checkpoint was trained with: the registered one when it matches the record."""
    try:
        registered: MethodConfig | None = get_method(record["name"])
    except (CxrbenchError, KeyError):
        registered = None
    if registered is not None and registered.as_record() == dict(record):
        return registered
    names = {f.name for f in fields(MethodConfig)} - {"extra_loss"}
    kwargs = {k: v for k, v in record.items() if k in names}
    kwargs["prior_kwargs"] = tuple(dict(kwargs.get("prior_kwargs") or {}).items())
    extra = record.get("extra_loss")
    if extra is not None:
        known = registered.extra_loss if registered is not None else None
        kwargs["extra_loss"] = known if known is not None else _unavailable_loss(str(extra))
    return MethodConfig(**kwargs)


def _unavailable_loss(name: str) -> Callable:
    """Stands in for an extra loss that is not registered here: the model builds, the loss refuses."""

    def loss(_outputs: object) -> Tensor:
        raise CxrbenchError(f"the extra loss {name!r} of this checkpoint is not registered in this process")

    loss.__name__ = name
    return loss


def _image_model(config: MethodConfig, profile: PretrainProfile) -> tuple[ImageModel, str]:
    image = ImageModel(profile.arch, config.image_pooling)
    if profile.image_init == "imagenet_if_available":
        try:
            path = find_imagenet_weights(profile.arch)
        except CheckpointError as exc:
            warnings.warn(f"training from random init: {exc}", stacklevel=3)
            return image, "random"
        image.backbone.load_state_dict(load_encoder(path, arch=profile.arch).encoder.state_dict())
        return image, f"imagenet ({path.name})"
    return image, "random"


def _batches(loader: DataLoader, device: torch.device) -> Iterator[dict[str, Tensor]]:
    for batch in loader:
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _step_lr(config: MethodConfig, base: float, step: int, steps_per_epoch: int, total: int) -> float | None:
    """The learning rate of optimiser step `step`, or None when the schedule acts per epoch (plateau).

    "cosine": one cosine from `base` to 0 over the run. "cosine_per_epoch": the reference's
    CosineAnnealingLR with T_max = one epoch of steps, stepped every step and never reset, i.e. the
    periodic curve 0.5 base (1 + cos(pi step / steps_per_epoch)): 0 after odd epochs, `base` after even.
    """
    if config.schedule == "cosine":
        return _cosine_lr(base, step, total)
    if config.schedule == "cosine_per_epoch":
        return 0.5 * base * (1.0 + math.cos(math.pi * step / max(steps_per_epoch, 1)))
    return None


def _optimizer(config: MethodConfig, params: list, prof: PretrainProfile) -> torch.optim.Optimizer:
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=prof.lr, weight_decay=prof.weight_decay, foreach=True)


# ------------------------------------------------------------------------------------------- training
def pretrain(
    method: str | MethodConfig,
    data: str | Path,
    out: str | Path,
    profile: str | PretrainProfile = "demo",
    *,
    resume: bool = False,
    epochs: int | None = None,
    percent: float | None = None,
    device: str = "auto",
    bert: str | None = None,
    reporter: PretrainReporter | None = None,
) -> PretrainResult:
    """Pre-train `method` on a prepared MIMIC-CXR folder; see the module docstring for the outputs."""
    config = get_method(method) if isinstance(method, str) else method
    prof = get_pretrain_profile(profile) if isinstance(profile, str) else profile
    prof = method_profile(config, prof)
    if epochs is not None:
        prof = replace(prof, max_epochs=epochs)
    if percent is not None:
        prof = replace(prof, percent=percent)
    out = Path(out)
    reporter = reporter or PretrainReporter()
    if config.kind == "image_only":
        from cxrbench.baselines.image_only import pretrain_image_only

        return pretrain_image_only(
            config, Path(data), out, prof, resume=resume, device=device, reporter=reporter
        )
    if not config.trains:
        return export_init(config, out, prof)
    if (out / CHECKPOINT).exists() and not resume:
        raise CxrbenchError(
            f"{out} already holds a pre-training checkpoint; pass --resume or choose a new --out"
        )
    if resume and not (out / CHECKPOINT).exists():
        raise CxrbenchError(f"--resume: no {CHECKPOINT} in {out}")
    ctx = _dist_from_env(device)
    try:
        return _train(config, Path(data), out, prof, resume, device, bert, reporter, ctx)
    finally:
        if ctx.created:
            torch_dist.destroy_process_group()


def _train(
    config: MethodConfig,
    data: Path,
    out: Path,
    prof: PretrainProfile,
    resume: bool,
    device_spec: str,
    bert: str | None,
    reporter: PretrainReporter,
    ctx: _Dist,
) -> PretrainResult:
    state = read_checkpoint(out / CHECKPOINT) if resume else None
    if state is not None and state.get("method", {}).get("name") != config.name:
        raise CxrbenchError(f"{out} holds a {state.get('method', {}).get('name')!r} run, not {config.name!r}")
    bert = bert if bert is not None else (state["bert"] if state is not None else prof.bert)
    device = _device(device_spec, ctx)
    torch.manual_seed(prof.seed)
    dataset = open_prepared(data)
    train_split = dataset.split("train", prof.percent)
    try:
        train_split.field("sentences")
    except KeyError:
        raise CxrbenchError(
            f"{data} has no report sentences: prepare MIMIC-CXR with `cxrbench prepare mimic_cxr`"
        ) from None
    mean, std = dataset.stats["mean"], dataset.stats["std"]
    train = PretrainPairs(
        train_split,
        prof.resolution,
        mean,
        std,
        True,
        prof.seed,
        prof.max_train_images,
        sentences=config.report_sentences,
    )
    val = PretrainPairs(
        dataset.split("val"), prof.resolution, mean, std, False, prof.seed, prof.max_val_images
    )
    if len(train) < 2 or len(val) < 1:
        raise CxrbenchError(f"{data}: too few pairs to pre-train (train {len(train)}, val {len(val)})")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, bert_model = _report_encoder(prof, bert, out, [" ".join(s) for s in train.sentences], ctx)
    image, image_init = _image_model(config, prof)
    model = build_model(config, prof, bert_model, image).to(device)
    collate = PairCollator(tokenizer, prof.max_tokens)
    batch_size = min(prof.batch_size, len(train) // ctx.world_size)
    if ctx.active:
        train_sampler = DistributedSampler(
            train, ctx.world_size, ctx.rank, shuffle=True, seed=prof.seed, drop_last=True
        )
        val_sampler = DistributedSampler(val, ctx.world_size, ctx.rank, shuffle=False)
    else:
        train_sampler, val_sampler = _SeededSampler(len(train), prof.seed), None
    loader_args = {"collate_fn": collate, "num_workers": prof.workers, "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train, batch_size, sampler=train_sampler, drop_last=True, **loader_args)
    val_loader = DataLoader(val, prof.batch_size, sampler=val_sampler, **loader_args)
    steps_per_epoch = math.ceil(len(train_loader) / prof.accumulation)
    total_steps = steps_per_epoch * prof.max_epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(config, params, prof)
    plateau = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, patience=config.plateau_patience, factor=config.plateau_factor
        )
        if config.schedule == "plateau"
        else None
    )
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 autocast needs none; kept for checkpoint.pt
    history: list[dict] = []
    epoch = step = bad_epochs = 0
    best_val, best_epoch, stopped = math.inf, None, False
    best_encoder = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if plateau is not None:
            plateau.load_state_dict(state["scheduler"])
        history, epoch, step = list(state["history"]), state["epoch"], state["step"]
        best_val, best_epoch, bad_epochs = state["best_val"], state["best_epoch"], state["bad_epochs"]
        stopped = state["stopped_early"]
        best_encoder = state["best_encoder"]
    trainable = model
    if ctx.active:
        ids = [device.index] if device.type == "cuda" else None
        trainable = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def evaluate() -> dict[str, float]:
        model.eval()
        generator = torch.Generator(device=device).manual_seed(prof.seed)
        totals: dict[str, float] = {}
        n = 0
        with torch.no_grad(), autocast(device):
            for batch in _batches(val_loader, device):
                losses = method_loss(config, model(batch), generator)
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * len(batch["images"])
                n += len(batch["images"])
        keys = sorted(totals)
        means = ctx.mean([totals[k] / max(n, 1) for k in keys])
        return dict(zip(keys, means))

    def save(done: bool) -> None:
        if not ctx.main:
            return
        record = {
            "method": config.as_record(),
            "profile": asdict(prof),
            "bert": bert,
            "image_init": image_init,
            "world_size": ctx.world_size,
            "history": history,
            "best_epoch": best_epoch,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
            "stopped_early": stopped,
            "finished": done,
            **provenance(),
        }
        checkpoint = {
            "format_version": FORMAT_VERSION,
            "method": config.as_record(),
            "profile": asdict(prof),
            "bert": bert,
            "epoch": epoch,
            "step": step,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped,
            "history": history,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "scheduler": None if plateau is None else plateau.state_dict(),
            "best_encoder": best_encoder,
        }
        with atomic_path(out / CHECKPOINT) as tmp:
            torch.save(checkpoint, tmp)
        atomic_write_json(out / HISTORY, record)

    reporter.started(config.name, prof.max_epochs, len(train_loader), epoch)
    if state is None:
        start = time.perf_counter()
        losses = evaluate()
        history.append(
            {
                "epoch": 0,
                "train_loss": None,
                "val_loss": losses["loss"],
                "lr": 0.0,
                "val": losses,
                "time_s": time.perf_counter() - start,
            }
        )
        best_val, best_epoch = losses["loss"], 0
        best_encoder = {k: v.detach().cpu().clone() for k, v in model.image.backbone.state_dict().items()}
        if ctx.main:
            save_encoder(best_encoder, out)
            save_projection_heads(model, out)
        reporter.epoch(history[-1])
        save(False)
    while epoch < prof.max_epochs and not stopped:
        start = time.perf_counter()
        train.epoch = epoch
        train_sampler.set_epoch(epoch)
        # The global RNG (dropout, loader seeds) restarts from (seed, epoch) each epoch, so a run resumed
        # from an epoch checkpoint trains exactly as the uninterrupted run did.
        torch.manual_seed(prof.seed * 1_000_003 + epoch)
        trainable.train()
        running, count = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(_batches(train_loader, device)):
            sync = (i + 1) % prof.accumulation == 0 or i + 1 == len(train_loader)
            no_sync = trainable.no_sync() if ctx.active and not sync else contextlib.nullcontext()
            with no_sync:
                with autocast(device):
                    losses = method_loss(config, trainable(batch))
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise RunFailedError(
                        f"{config.name}: the training loss became {float(loss)} in epoch {epoch + 1}"
                    )
                scaler.scale(loss / prof.accumulation).backward()
            if sync:
                lr = _step_lr(config, prof.lr, step, steps_per_epoch, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] if lr is None else lr
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            running += float(loss.detach())
            count += 1
            reporter.step(epoch + 1, float(loss.detach()))
        epoch += 1
        train_loss = ctx.mean([running / max(count, 1)])[0]
        val_losses = evaluate()
        lr_used = optimizer.param_groups[0]["lr"]
        if plateau is not None:
            plateau.step(val_losses["loss"])
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_losses["loss"],
            "lr": lr_used,
            "val": val_losses,
            "time_s": time.perf_counter() - start,
        }
        history.append(entry)
        if val_losses["loss"] < best_val:
            best_val, best_epoch, bad_epochs = val_losses["loss"], epoch, 0
            best_encoder = {k: v.detach().cpu().clone() for k, v in model.image.backbone.state_dict().items()}
            if ctx.main:
                save_encoder(best_encoder, out)
                save_projection_heads(model, out)
        else:
            bad_epochs += 1
            stopped = bad_epochs >= prof.patience
        reporter.epoch(entry)
        save(False)
    save(True)
    ctx.barrier()
    result = PretrainResult(out, out / ENCODER_FILES[0], history, best_epoch, stopped)
    reporter.finished(result)
    return result


class _SeededSampler(torch.utils.data.Sampler):
    """A random order per epoch from (seed, epoch), so a resumed run continues the same sequence."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng((self.seed, self.epoch)).permutation(self.n).tolist())
