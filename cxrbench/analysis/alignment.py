"""Image-report alignment of a pre-training run: global E||z_img - z_rep||^2 and region-to-sentences.

Alignment needs the report half of a model, so it is measured on `cxrbench pretrain` outputs only:
the run is rebuilt by `cxrbench.baselines.training.load_pretrained_model` and run on a seeded sample
of the prepared MIMIC-CXR test pairs next to the analysed dataset. This is the only analysis module
that imports `cxrbench.baselines`: scoring an encoder never depends on how it was trained.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from cxrbench.analysis.statistics import finite_or_none, sample_indices
from cxrbench.datasets.splits import ids_hash
from cxrbench.encoders import LoadedEncoder, LoadReport, ResNetEncoder, is_builtin, read_checkpoint
from cxrbench.errors import CheckpointError, CxrbenchError
from cxrbench.io_utils import read_json, sha256_file
from cxrbench.protocol.task_data import open_task_dataset
from cxrbench.representation import alignment

if TYPE_CHECKING:
    from cxrbench.baselines.training import LoadedPretrainModel

PAIR_DATASET = "mimic_cxr"
BATCH_SIZE = 16


def global_alignment(z_img: Tensor, z_rep: Tensor) -> float:
    """E ||z_img - z_rep||^2 over image-report pairs (B x D each, L2-normalised here); 0 is perfect."""
    if z_img.dim() != 2:
        raise ValueError(f"expected B x D embeddings, got {tuple(z_img.shape)}")
    return float(alignment(z_img, z_rep, alpha=2.0))


def local_alignment(regions: Tensor, attended: Tensor, mask: Tensor | None = None) -> float:
    """E ||z_region - z_attended||^2 over regions (B x N x D) and their attended sentences (B x N x D).

    `attended[:, n]` is the report (its sentences) attended with region n as the query, computed by the
    model's own cross-modal attention; `mask` (B x N) selects the regions that count.
    """
    if regions.dim() != 3:
        raise ValueError(f"expected B x N x D regions, got {tuple(regions.shape)}")
    return float(alignment(regions, attended, alpha=2.0, mask=mask))


def folder_source(checkpoint: str | Path) -> str | Path:
    """A pre-training output folder without an image-report checkpoint.pt (random / imagenet exports,
    image-only methods): its encoder file."""
    path = Path(checkpoint)
    if is_builtin(checkpoint) or not path.is_dir():
        return checkpoint
    if (path / "checkpoint.pt").is_file() and not folder_is_image_only(path):
        return checkpoint
    exported = path / "encoder.safetensors"
    if not exported.is_file():
        raise CheckpointError(
            f"{path} is a folder without a pre-training checkpoint.pt or an encoder.safetensors; "
            "pass a checkpoint file"
        )
    return exported


def open_pretrained(checkpoint: str | Path, device: torch.device) -> LoadedPretrainModel | None:
    """The rebuilt pre-training run when `checkpoint` is one (folder or checkpoint.pt), else None."""
    if is_builtin(checkpoint):
        return None
    from cxrbench.baselines.training import is_pretrain_checkpoint, load_pretrained_model

    path = Path(checkpoint)
    if path.is_dir():
        return load_pretrained_model(path, device)
    if not path.is_file() or path.suffix == ".safetensors":
        return None  # load_encoder reports a missing file; safetensors hold flat tensors only
    try:
        obj = read_checkpoint(path)
    except CheckpointError:
        return None  # load_encoder raises the same error with its context
    return load_pretrained_model(path, device, state=obj) if is_pretrain_checkpoint(obj) else None


def folder_is_image_only(path: Path) -> bool:
    """An image-only run (SimCLR, BYOL, CheXpert): its checkpoint.pt has no report half to rebuild."""
    try:
        record = read_json(path / "history.json")
    except (OSError, ValueError):
        return False
    method = record.get("method") if isinstance(record, dict) else None
    return isinstance(method, dict) and method.get("kind") == "image_only"


def local_projection(pretrained: LoadedPretrainModel) -> tuple[nn.Module | None, nn.Module | None, str]:
    """(region projection, backbone it belongs to or None = the best-epoch one, where both come from).

    The projection maps conv5 regions into the d_z space the local losses and the uniformity prior act
    on. It is the best epoch's (projection_heads.safetensors, written with encoder.safetensors); a run
    without that file falls back to checkpoint.pt's last-epoch projection with its own backbone.
    """
    from safetensors.torch import load_file

    from cxrbench.baselines.training import PROJECTION_HEADS

    model = pretrained.model
    if model.image_local_proj is None:
        return None, None, f"{pretrained.config.name!r} has no local projection (no local loss or prior)"
    projection = copy.deepcopy(model.image_local_proj).eval()
    heads = pretrained.checkpoint.parent / PROJECTION_HEADS
    if not heads.is_file():
        return (
            projection,
            model.image.backbone,
            f"checkpoint.pt, last epoch {pretrained.epoch} (no {PROJECTION_HEADS})",
        )
    prefix = "image_local_proj."
    state = {k[len(prefix) :]: v for k, v in load_file(str(heads)).items() if k.startswith(prefix)}
    try:
        projection.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{heads}: does not fit the run's region projection ({str(exc).splitlines()[0]})"
        ) from None
    return projection, None, f"{PROJECTION_HEADS}, best epoch {pretrained.best_epoch}"


def best_backbone(pretrained: LoadedPretrainModel, source: str | Path) -> LoadedEncoder:
    """The best-epoch backbone of a pre-training run: the tensors `pretrain` exported as encoder.safetensors."""
    arch = pretrained.profile.arch
    encoder = ResNetEncoder(arch)
    encoder.load_state_dict(pretrained.best_encoder)
    n = sum(1 for k in encoder.state_dict() if not k.endswith("num_batches_tracked"))
    path = pretrained.checkpoint
    report = LoadReport(
        str(source), arch, sha256_file(path), "best_encoder", n, n, fraction_loaded=1.0, path=str(path)
    )
    return LoadedEncoder(encoder, report)


def pair_alignment(
    checkpoint: str | Path,
    pretrained: LoadedPretrainModel | None,
    prepared_dataset_path: Path,
    n_images: int,
    seed: int,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Global and local alignment of a pre-training run on MIMIC-CXR test pairs, or nulls with the reason.

    Returns (statistics, description of the pair sample or None). The images are resized to the run's
    pre-training resolution (as in its validation); regions attend over the report's sentences with
    the model's parameter-free cross-modal attention on the projected local features (LoVT).
    """

    def missing(reason: str) -> tuple[dict[str, Any], None]:
        return {"global_alignment": None, "local_alignment": None, "alignment_note": reason}, None

    if pretrained is None:
        if is_builtin(checkpoint) or not Path(checkpoint).is_file():
            return missing(f"{checkpoint!r} is not a checkpoint file (no report encoder)")
        return missing(
            "not an image-report checkpoint (alignment needs a `cxrbench pretrain` output folder or its "
            "checkpoint.pt, with the keys 'method', 'profile' and 'model')"
        )
    try:
        dataset = open_task_dataset(Path(prepared_dataset_path).parent, PAIR_DATASET)
    except CxrbenchError as exc:
        return missing(f"image-report checkpoint, but {' '.join(str(exc).split())}")
    from cxrbench.baselines.data import PairCollator, PretrainPairs
    from cxrbench.baselines.models import cross_attention

    pairs_root = dataset.root
    split = dataset.split("test")
    if len(split) == 0:
        return missing(f"image-report checkpoint, but the {PAIR_DATASET} test split at {pairs_root} is empty")
    split = split.subset(sample_indices(len(split), n_images, seed))
    try:
        split.field("sentences")
    except KeyError:
        return missing(
            f"{pairs_root} has no report sentences (prepare it with `cxrbench prepare {PAIR_DATASET}`)"
        )
    model, prof = pretrained.model, pretrained.profile
    pairs = PretrainPairs(split, prof.resolution, dataset.stats["mean"], dataset.stats["std"], augment=False)
    collate = PairCollator(pretrained.tokenizer, prof.max_tokens)
    z_img, z_rep, regions, attended, valid = [], [], [], [], []
    with torch.no_grad():
        for lo in range(0, len(pairs), BATCH_SIZE):
            batch = collate([pairs[i] for i in range(lo, min(lo + BATCH_SIZE, len(pairs)))])
            out = model({k: v.to(device) for k, v in batch.items()})
            z_img.append(out.image_global.float().cpu())
            z_rep.append(out.report_global.float().cpu())
            if out.image_local is not None and out.sentence_local is not None:
                mask = out.sentence_mask
                regions.append(out.image_local.float().cpu())
                attended.append(cross_attention(out.image_local, out.sentence_local, mask).float().cpu())
                valid.append(mask.any(-1, keepdim=True).expand(-1, out.image_local.shape[1]).cpu())
    global_value = finite_or_none(global_alignment(torch.cat(z_img), torch.cat(z_rep)))
    local_value = None
    note = f"{len(split)} {PAIR_DATASET} test pairs (seed {seed}, {prof.resolution} px)"
    if regions:
        local_value = finite_or_none(
            local_alignment(torch.cat(regions), torch.cat(attended), torch.cat(valid))
        )
    else:
        note += f"; local alignment: method {pretrained.config.name!r} has no local projections"
    info = {
        "dataset": PAIR_DATASET,
        "dataset_path": str(dataset.root),
        "n_pairs": len(split),
        "seed": seed,
        "image_ids_hash": ids_hash(split.image_ids),
        "resolution": prof.resolution,
        "method": pretrained.config.name,
        "model_epoch": pretrained.epoch,
        "best_epoch": pretrained.best_epoch,
    }
    stats_ = {"global_alignment": global_value, "local_alignment": local_value, "alignment_note": note}
    return stats_, info
