"""Representation analysis: local uniformity/alignment statistics of an encoder, related to its scores.

`analyze_encoder` runs a frozen encoder on a fixed, seeded sample of prepared test images and reports
the statistics of `cxrbench.representation` (the same code the pre-training losses optimise) on the
L2-normalised conv5 region features and on the pooled global feature. `correlate` relates those
statistics across encoders to the downstream scores in their run records (Spearman rank correlation
with a permutation p-value). Formulas and their meaning for localized tasks: docs/analysis.md.

Image-report alignment (global E||z_img - z_rep||^2 and region-to-attended-sentence alignment) needs
the report side of a model. It is computed for the image-report baselines: a `cxrbench pretrain`
output folder or its checkpoint.pt, rebuilt by `cxrbench.baselines.training.load_pretrained_model` and
run on a seeded sample of the prepared MIMIC-CXR test pairs next to the analysed dataset. Every other
checkpoint records both as null with the reason.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

from cxrbench.datasets import open_prepared
from cxrbench.datasets.splits import ids_hash
from cxrbench.encoders import (
    LoadedEncoder,
    LoadReport,
    ResNetEncoder,
    load_encoder,
    read_checkpoint,
)
from cxrbench.errors import CheckpointError, CxrbenchError
from cxrbench.io_utils import atomic_path, atomic_write_json, sha256_file
from cxrbench.provenance import provenance
from cxrbench.representation import (
    alignment,
    between_sample_uniformity,
    effective_rank,
    global_uniformity,
    mean_within_cosine,
    spatial_smoothness,
    within_sample_uniformity,
)

if TYPE_CHECKING:
    from cxrbench.baselines.training import LoadedPretrainModel

__all__ = [
    "ANALYSIS_SCHEMA_VERSION",
    "SCALAR_STATISTICS",
    "analyze_encoder",
    "correlate",
    "feature_statistics",
    "global_alignment",
    "load_analyses",
    "local_alignment",
    "region_statistics",
    "spearman_permutation",
    "write_analysis",
]

ANALYSIS_SCHEMA_VERSION = 1
DEFAULT_RESOLUTION = 224  # the full protocol's resolution: conv5 is a 7 x 7 grid
TEMPERATURE = 2.0  # t of the Gaussian potential (Wang & Isola)
STAGE = "conv5"
BATCH_SIZE = 16
PAIR_DATASET = "mimic_cxr"
# Scalar statistics of an analysis record that `correlate` relates to downstream scores.
SCALAR_STATISTICS = (
    "global_uniformity",
    "within_image_uniformity",
    "between_image_uniformity",
    "mean_within_cosine",
    "effective_rank_mean",
    "neighbour_cosine",
    "global_alignment",
    "local_alignment",
)
MEAN_TASK = "mean_over_tasks"
N_PERMUTATIONS = 10_000


# ------------------------------------------------------------------------------------------ statistics
def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def region_statistics(regions: Tensor, grid: tuple[int, int], t: float = TEMPERATURE) -> dict[str, Any]:
    """All statistics of one batch of raw (un-normalised) region features B x (H*W) x D, row-major.

    The pooled global feature is the mean of the regions (= average pooling of the feature map); each
    statistic normalises its input itself. Undefined values (e.g. global uniformity of one image) are
    None, so the result is valid JSON.
    """
    if regions.dim() != 3:
        raise ValueError(f"expected regions B x N x D, got {tuple(regions.shape)}")
    with torch.no_grad():
        regions = regions.float()
        pooled = regions.mean(1)
        erank = effective_rank(regions).double().numpy()
        finite = erank[np.isfinite(erank)]
        smooth = spatial_smoothness(regions, grid)
        quantiles = np.quantile(finite, [0.0, 0.25, 0.5, 0.75, 1.0]) if finite.size else [math.nan] * 5
        return {
            "global_uniformity": _finite_or_none(global_uniformity(pooled, t)),
            "within_image_uniformity": _finite_or_none(within_sample_uniformity(regions, t)),
            "between_image_uniformity": _finite_or_none(between_sample_uniformity(regions, t)),
            "mean_within_cosine": _finite_or_none(mean_within_cosine(regions).nanmean()),
            "effective_rank_mean": _finite_or_none(finite.mean() if finite.size else math.nan),
            "effective_rank_distribution": {
                "std": _finite_or_none(finite.std() if finite.size else math.nan),
                **{k: _finite_or_none(v) for k, v in zip(("min", "q25", "median", "q75", "max"), quantiles)},
                "n_regions": regions.shape[1],
            },
            "neighbour_cosine": _finite_or_none(smooth.get(1, math.nan)),
            "spatial_smoothness": {str(d): _finite_or_none(v) for d, v in smooth.items()},
        }


def feature_statistics(feature_map: Tensor, t: float = TEMPERATURE) -> dict[str, Any]:
    """`region_statistics` of a B x D x H x W feature map (regions in row-major grid order)."""
    if feature_map.dim() != 4:
        raise ValueError(f"expected a B x D x H x W feature map, got {tuple(feature_map.shape)}")
    h, w = feature_map.shape[-2:]
    return region_statistics(feature_map.flatten(2).transpose(1, 2), (h, w), t)


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


# ------------------------------------------------------------------------------------------- analyze
def _sample_indices(n_available: int, n_images: int, seed: int) -> np.ndarray:
    """A fixed seeded sample (sorted) of the test split; the whole split when it is smaller."""
    if n_images < 1:
        raise CxrbenchError(f"--n-images must be at least 1, got {n_images}")
    if n_available <= n_images:
        return np.arange(n_available)
    return np.sort(np.random.default_rng(seed).choice(n_available, size=n_images, replace=False))


def _to_input(images: np.ndarray, resolution: int, mean: float, std: float) -> Tensor:
    """uint8 B x S x S -> float B x 3 x R x R exactly as the benchmark feeds its encoders."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    if x.shape[-1] != resolution:
        x = F.interpolate(
            x.unsqueeze(1).float(), size=(resolution, resolution), mode="bilinear", antialias=True
        )
        x = x.round().clamp(0, 255).to(torch.uint8)[:, 0]
    x = x.float().div_(255.0).sub_(mean).div_(std)
    return x.unsqueeze(1).expand(-1, 3, -1, -1)


def _folder_source(checkpoint: str | Path) -> str | Path:
    """A pre-training output folder without checkpoint.pt (random / imagenet exports): its encoder file."""
    path = Path(checkpoint)
    if str(checkpoint) in ("random", "imagenet") or not path.is_dir() or (path / "checkpoint.pt").is_file():
        return checkpoint
    exported = path / "encoder.safetensors"
    if not exported.is_file():
        raise CheckpointError(
            f"{path} is a folder without a pre-training checkpoint.pt or an encoder.safetensors; "
            "pass a checkpoint file"
        )
    return exported


def _open_pretrained(checkpoint: str | Path, device: torch.device) -> LoadedPretrainModel | None:
    """The rebuilt pre-training run when `checkpoint` is one (folder or checkpoint.pt), else None."""
    if str(checkpoint) in ("random", "imagenet"):
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


def _best_backbone(pretrained: LoadedPretrainModel, source: str | Path) -> LoadedEncoder:
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


def _pair_alignment(
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
        if str(checkpoint) in ("random", "imagenet") or not Path(checkpoint).is_file():
            return missing(f"{checkpoint!r} is not a checkpoint file (no report encoder)")
        return missing(
            "not an image-report checkpoint (alignment needs a `cxrbench pretrain` output folder or its "
            "checkpoint.pt, with the keys 'method', 'profile' and 'model')"
        )
    pairs_root = Path(prepared_dataset_path).parent / PAIR_DATASET
    if not (pairs_root / "prepared.json").exists():
        return missing(
            f"image-report checkpoint, but no prepared {PAIR_DATASET} pairs at {pairs_root}; create them with "
            f"`cxrbench prepare {PAIR_DATASET} RAW_DIR {pairs_root}`"
        )
    from cxrbench.baselines.data import PairCollator, PretrainPairs
    from cxrbench.baselines.models import cross_attention

    dataset = open_prepared(pairs_root)
    split = dataset.split("test")
    if len(split) == 0:
        return missing(f"image-report checkpoint, but the {PAIR_DATASET} test split at {pairs_root} is empty")
    split = split.subset(_sample_indices(len(split), n_images, seed))
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
    global_value = _finite_or_none(global_alignment(torch.cat(z_img), torch.cat(z_rep)))
    local_value = None
    note = f"{len(split)} {PAIR_DATASET} test pairs (seed {seed}, {prof.resolution} px)"
    if regions:
        local_value = _finite_or_none(
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


def analyze_encoder(
    checkpoint: str | Path,
    prepared_dataset_path: str | Path,
    n_images: int = 64,
    seed: int = 0,
    resolution: int | None = None,
    device: str = "cpu",
    arch: str | None = None,
    prefix: str | None = None,
) -> dict[str, Any]:
    """Statistics of a frozen encoder's conv5 features on a seeded sample of prepared test images.

    `checkpoint` is "random", "imagenet" or a file (as for `cxrbench evaluate`; "random" weights are
    seeded exactly like the benchmark's, so they are the evaluated network), or a `cxrbench pretrain`
    output folder / its checkpoint.pt: then the image statistics use the run's best-epoch backbone
    (the exported encoder.safetensors) and image-report alignment is computed with the whole model.
    `resolution` defaults to 224 (conv5 is 7 x 7). Returns a JSON-able record with statistics and
    provenance.
    """
    from cxrbench.protocol.runner import resolve_device

    start = time.perf_counter()
    resolution = DEFAULT_RESOLUTION if resolution is None else int(resolution)
    if resolution < 32:
        raise CxrbenchError(f"--resolution must be at least 32 (conv5 has stride 32), got {resolution}")
    torch_device = resolve_device(device)
    dataset = open_prepared(prepared_dataset_path)
    test = dataset.split("test")
    if len(test) == 0:
        raise CxrbenchError(f"{dataset.root}: the test split is empty")
    sample = test.subset(_sample_indices(len(test), n_images, seed))
    checkpoint = _folder_source(checkpoint)
    pretrained = _open_pretrained(checkpoint, torch_device)
    if pretrained is not None:
        loaded = _best_backbone(pretrained, checkpoint)
    else:
        torch.manual_seed(0)  # the same 'random' weights as cxrbench evaluate
        loaded = load_encoder(checkpoint, arch=arch, prefix=prefix)
    encoder = loaded.encoder.to(torch_device).eval()
    encoder.requires_grad_(False)
    images = sample.images()
    maps = []
    with torch.no_grad():
        for lo in range(0, len(sample), BATCH_SIZE):
            x = _to_input(
                images[lo : lo + BATCH_SIZE], resolution, dataset.stats["mean"], dataset.stats["std"]
            )
            maps.append(encoder(x.to(torch_device))[STAGE].float().cpu())
    feature_map = torch.cat(maps)
    statistics = feature_statistics(feature_map)
    pair_statistics, pairs = _pair_alignment(
        checkpoint, pretrained, dataset.root, n_images, seed, torch_device
    )
    statistics.update(pair_statistics)
    report = loaded.report
    ids = sample.image_ids
    return {
        "analysis_schema_version": ANALYSIS_SCHEMA_VERSION,
        "dataset": dataset.name,
        "dataset_path": str(dataset.root),
        "checkpoint": {
            "source": report.source,
            "path": report.path,
            "sha256": report.sha256,
            "arch": report.arch,
            "prefix": report.prefix,
            "fraction_loaded": report.fraction_loaded,
        },
        "sample": {
            "split": "test",
            "n_images": len(ids),
            "n_requested": n_images,
            "n_available": len(test),
            "seed": seed,
            "image_ids": ids,
            "image_ids_hash": ids_hash(ids),
            "prepared_size": dataset.size,
            "resolution": resolution,
        },
        "features": {
            "stage": STAGE,
            "grid": list(feature_map.shape[-2:]),
            "channels": feature_map.shape[1],
            "temperature": TEMPERATURE,
        },
        "statistics": statistics,
        "alignment_pairs": pairs,
        "device": str(torch_device),
        "wall_time_s": round(time.perf_counter() - start, 3),
        **provenance(),
    }


def default_name(checkpoint: str | Path) -> str:
    """The encoder name an analysis is stored under when none is given: the spec, the file stem, or the
    folder name for a pre-training output folder or its checkpoint.pt."""
    text = str(checkpoint)
    if text in ("random", "imagenet"):
        return text
    path = Path(text)
    if path.is_dir():
        return path.resolve().name
    return path.resolve().parent.name if path.name == "checkpoint.pt" else path.stem


def write_analysis(record: dict[str, Any], out_dir: str | Path, name: str) -> Path:
    """Write OUT/analysis/<name>__<dataset>.json atomically (one file per encoder and dataset)."""
    from cxrbench.protocol.records import safe_name

    record = {**record, "name": name}
    path = Path(out_dir) / "analysis" / f"{safe_name(name)}__{safe_name(record['dataset'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


# ----------------------------------------------------------------------------------------- correlate
def spearman_permutation(
    x: Iterable[float], y: Iterable[float], n_permutations: int = N_PERMUTATIONS, seed: int = 0
) -> tuple[float, float, str]:
    """Spearman rho of finite (x, y) pairs and its two-sided permutation p-value, plus a note.

    Permutes y's ranks: exact enumeration when n! <= n_permutations (p = share of permutations at
    least as extreme), otherwise `n_permutations` seeded draws with p = (k + 1) / (n_permutations + 1).
    NaN with a note when fewer than 3 pairs or either side is constant.
    """
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3:
        return math.nan, math.nan, f"only {n} encoder(s) with both values; need at least 3"
    if np.ptp(x) == 0:
        return math.nan, math.nan, "statistic is constant across encoders"
    if np.ptp(y) == 0:
        return math.nan, math.nan, "score is constant across encoders"
    rho = float(stats.spearmanr(x, y).statistic)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    exact = math.factorial(n) <= n_permutations
    if exact:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    cx = rx - rx.mean()
    cy = ry[perms] - ry.mean()
    null = cy @ cx / (np.linalg.norm(cx) * np.linalg.norm(cy, axis=1))
    extreme = int(np.count_nonzero(np.abs(null) >= abs(rho) - 1e-12))
    if exact:
        return rho, extreme / len(perms), f"exact over {len(perms)} permutations"
    return rho, (extreme + 1) / (n_permutations + 1), f"{n_permutations} random permutations (seed {seed})"


def load_analyses(analysis_dir: str | Path) -> pd.DataFrame:
    """One row per analysis record (name, dataset, scalar statistics) found in `analysis_dir`."""
    from cxrbench.io_utils import read_json

    root = Path(analysis_dir)
    if not root.is_dir():
        raise CxrbenchError(
            f"analysis directory {root} does not exist (run `cxrbench analyze CHECKPOINT` first)"
        )
    rows = []
    for path in sorted(root.glob("*.json")):
        try:
            rec = read_json(path)
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or "analysis_schema_version" not in rec:
            continue
        st = rec.get("statistics", {})
        row = {"name": rec.get("name") or path.stem.split("__")[0], "dataset": rec.get("dataset")}
        row.update({k: math.nan if st.get(k) is None else float(st[k]) for k in SCALAR_STATISTICS})
        rows.append(row)
    if not rows:
        raise CxrbenchError(f"no analysis records in {root} (run `cxrbench analyze CHECKPOINT` first)")
    return pd.DataFrame(rows)


def _task_scores(runs_dirs: Path | Iterable[Path]) -> dict[str, dict[str, float]]:
    """{encoder: {task_id: mean primary test score over its final ok runs}} from the run records."""
    from cxrbench.protocol.record_schema import primary_value, usable_runs
    from cxrbench.protocol.records import load_records, safe_name

    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rec in usable_runs(load_records(runs_dirs)):
        values[(str(rec["encoder"]), str(rec["task_id"]))].append(primary_value(rec))
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for (encoder, task), vals in values.items():
        scores[encoder][task] = float(np.mean(vals))
        scores[safe_name(encoder)].setdefault(task, float(np.mean(vals)))
    return scores


def _task_order(tasks: Iterable[str]) -> list[str]:
    from cxrbench.protocol.tasks import TASKS

    order = {t.task_id: k for k, t in enumerate(TASKS)}
    return sorted(set(tasks), key=lambda t: (order.get(t, len(order)), t))


def correlate(
    runs_dirs: Path | str | Iterable[Path | str],
    analysis_dir: str | Path,
    out_dir: str | Path | None = None,
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman correlation of each statistic with each task's mean test score, across encoders.

    Encoders are matched by name (analysis `--name` == run records' `encoder`). One row per (analysis
    dataset, statistic, task), plus the task "mean_over_tasks": the mean over the tasks that every
    matched encoder has. Writes correlation.csv, a heat map per dataset and the scatter plot of
    within-image uniformity against the mean score to `out_dir` (default: `analysis_dir`); their paths
    are in `df.attrs["paths"]`, and notes (unmatched encoders, too few encoders) in `df.attrs["notes"]`.
    """
    runs = [Path(runs_dirs)] if isinstance(runs_dirs, str | Path) else [Path(d) for d in runs_dirs]
    analyses = load_analyses(analysis_dir)
    scores = _task_scores(runs)
    out = Path(analysis_dir if out_dir is None else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, notes, paths = [], [], {}
    scatter_data = {}
    for dataset, group in analyses.groupby("dataset", sort=True):
        group = group.drop_duplicates("name", keep="last")
        matched = group[group["name"].isin(scores.keys())]
        unmatched = sorted(set(group["name"]) - set(matched["name"]))
        if unmatched:
            notes.append(f"{dataset}: no run records for {', '.join(unmatched)}")
        names = list(matched["name"])
        if len(names) < 3:
            notes.append(
                f"{dataset}: {len(names)} analysed encoder(s) with run records; correlations need at least 3 "
                "and are NaN"
            )
        tasks = _task_order(t for n in names for t in scores[n])
        common = [t for t in tasks if all(t in scores[n] for n in names)]
        if len(common) < len(tasks):
            notes.append(
                f"{dataset}: {len(tasks) - len(common)} task(s) lack scores for some encoders; "
                f"{MEAN_TASK} uses the {len(common)} tasks all encoders have"
            )
        score_table = {t: [scores[n].get(t, math.nan) for n in names] for t in tasks}
        score_table[MEAN_TASK] = [
            float(np.mean([scores[n][t] for t in common])) if common else math.nan for n in names
        ]
        for stat in SCALAR_STATISTICS:
            x = matched[stat].to_numpy(dtype=float)
            for task, y in score_table.items():
                rho, p, note = spearman_permutation(x, y, n_permutations, seed)
                n = int(np.count_nonzero(np.isfinite(x) & np.isfinite(np.asarray(y, dtype=float))))
                rows.append(
                    {
                        "dataset": dataset,
                        "statistic": stat,
                        "task_id": task,
                        "n_encoders": n,
                        "spearman_rho": rho,
                        "p_value": p,
                        "note": note,
                    }
                )
        scatter_data[dataset] = (
            names,
            matched["within_image_uniformity"].to_numpy(float),
            score_table[MEAN_TASK],
        )
    frame = pd.DataFrame(
        rows, columns=["dataset", "statistic", "task_id", "n_encoders", "spearman_rho", "p_value", "note"]
    )
    csv_path = out / "correlation.csv"
    with atomic_path(csv_path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    paths["csv"] = csv_path
    for dataset, sub in frame.groupby("dataset", sort=True):
        if not scatter_data[dataset][0]:
            continue  # no analysed encoder has run records: nothing to plot (noted above)
        paths[f"heatmap_{dataset}"] = _plot_heatmap(sub, out / f"correlation_heatmap__{dataset}.png", dataset)
        names, x, y = scatter_data[dataset]
        rho = sub[(sub.statistic == "within_image_uniformity") & (sub.task_id == MEAN_TASK)]
        paths[f"scatter_{dataset}"] = _plot_scatter(
            names, x, y, rho.iloc[0] if len(rho) else None, out / f"within_uniformity_vs_score__{dataset}.png"
        )
    frame.attrs["paths"] = paths
    frame.attrs["notes"] = notes
    return frame


def _plot_heatmap(sub: pd.DataFrame, path: Path, dataset: str) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    table = sub.pivot(index="statistic", columns="task_id", values="spearman_rho")
    table = table.reindex(index=[s for s in SCALAR_STATISTICS if s in table.index])
    table = table[[*_task_order(c for c in table.columns if c != MEAN_TASK), MEAN_TASK]]
    values = table.to_numpy(dtype=float)
    fig = Figure(
        figsize=(max(6.0, 3.0 + 0.5 * values.shape[1]), 1.8 + 0.4 * values.shape[0]), layout="constrained"
    )
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(values.shape[1]), table.columns, rotation=90, fontsize=6)
    ax.set_yticks(range(values.shape[0]), table.index, fontsize=7)
    n = int(sub["n_encoders"].max()) if len(sub) else 0
    ax.set_title(
        f"Spearman rho across {n} encoders\nstatistics on {dataset} vs mean test score per task", fontsize=8
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path


def _plot_scatter(names: list[str], x: np.ndarray, y: list[float], row: Any, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    y_pct = 100 * np.asarray(y, dtype=float)
    ax.scatter(x, y_pct)
    for name, xi, yi in zip(names, x, y_pct, strict=True):
        if np.isfinite(xi) and np.isfinite(yi):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xlabel("within-image uniformity of conv5 regions (lower: more uniform)", fontsize=8)
    ax.set_ylabel("mean test score over tasks (%)", fontsize=8)
    if row is not None and np.isfinite(row.spearman_rho):
        ax.set_title(f"Spearman rho {row.spearman_rho:.2f}, permutation p {row.p_value:.3g}", fontsize=9)
    else:
        ax.set_title(
            "Spearman rho undefined (" + (row.note if row is not None else "no data") + ")", fontsize=8
        )
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path
