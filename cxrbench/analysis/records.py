"""One analysis record per (encoder, dataset): run a frozen encoder on a seeded sample of prepared test
images, measure its representation statistics (and image-report alignment when it is a pre-training
run), and store the result with its provenance.

Records live in an analysis folder as `<name>__<dataset>.json`; `cxrbench.analysis.correlation`
reads every record of that folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cxrbench.analysis.alignment import (
    best_backbone,
    folder_source,
    local_projection,
    open_pretrained,
    pair_alignment,
)
from cxrbench.analysis.statistics import TEMPERATURE, feature_statistics, sample_indices
from cxrbench.datasets import open_prepared
from cxrbench.datasets.splits import ids_hash
from cxrbench.encoders import is_builtin, load_encoder
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_write_json
from cxrbench.protocol.runner import run_preprocessing
from cxrbench.protocol.task_data import TaskSplit, resize_images
from cxrbench.provenance import provenance
from cxrbench.runtime import resolve_device

ANALYSIS_SCHEMA_VERSION = 1
DEFAULT_RESOLUTION = 224  # the full protocol's resolution: conv5 is a 7 x 7 grid
BATCH_SIZE = 16


def analyze_encoder(
    checkpoint: str | Path,
    prepared_dataset_path: str | Path,
    n_images: int = 64,
    seed: int = 0,
    resolution: int | None = None,
    device: str = "cpu",
    arch: str | None = None,
    prefix: str | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Statistics of a frozen encoder's conv5 features on a seeded sample of prepared test images.

    `checkpoint` is "random", "imagenet" or a file (as for `cxrbench evaluate`; "random" weights are
    seeded exactly like the benchmark's, so they are the evaluated network), or a `cxrbench pretrain`
    output folder / its checkpoint.pt: then the image statistics use the run's best-epoch backbone
    (the exported encoder.safetensors) and image-report alignment is computed with the whole model.
    Images are resized and normalised by the protocol's own code, exactly as evaluation feeds them:
    with the encoder's input preset (`preset`, or what the checkpoint says; `cxrbench.encoders.presets`).
    `resolution` defaults to 224 (conv5 is 7 x 7). Returns a JSON-able record with statistics and
    provenance.
    """

    start = time.perf_counter()
    resolution = DEFAULT_RESOLUTION if resolution is None else int(resolution)
    if resolution < 32:
        raise CxrbenchError(f"--resolution must be at least 32 (conv5 has stride 32), got {resolution}")
    torch_device = resolve_device(device)
    dataset = open_prepared(prepared_dataset_path)
    test = dataset.split("test")
    if len(test) == 0:
        raise CxrbenchError(f"{dataset.root}: the test split is empty")
    sample = test.subset(sample_indices(len(test), n_images, seed))
    checkpoint = folder_source(checkpoint)
    pretrained = open_pretrained(checkpoint, torch_device)
    if pretrained is not None:
        loaded = best_backbone(pretrained, checkpoint)
    else:
        loaded = load_encoder(checkpoint, arch=arch, prefix=prefix)
    preprocessing = run_preprocessing(checkpoint, loaded, preset)
    encoder = loaded.encoder.to(torch_device).eval()
    encoder.requires_grad_(False)
    stage = encoder.feature_info.probe  # conv5 of a ResNet, the last block's grid of a ViT
    ids = sample.image_ids
    inputs = TaskSplit(
        resize_images(sample.images(), resolution),
        None,
        None,
        ids,
        dataset.stats["mean"],
        dataset.stats["std"],
        preprocessing,
    )
    maps = []
    with torch.no_grad():
        for index in inputs.batches(BATCH_SIZE):
            x = inputs.normalise(inputs.images[index])
            maps.append(encoder(x.to(torch_device))[stage].float().cpu())
    feature_map = torch.cat(maps)
    statistics = feature_statistics(feature_map)
    projected_statistics, projected_features = None, None
    if pretrained is not None:
        projected_statistics, projected_features = _projected(
            pretrained, inputs, feature_map, stage, torch_device
        )
    pair_statistics, pairs = pair_alignment(
        checkpoint, pretrained, dataset.root, n_images, seed, torch_device
    )
    statistics.update(pair_statistics)
    report = loaded.report
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
        "preprocessing": preprocessing.describe(),
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
            "stage": stage,
            "grid": list(feature_map.shape[-2:]),
            "channels": feature_map.shape[1],
            "temperature": TEMPERATURE,
        },
        "statistics": statistics,
        "projected_features": projected_features,
        "projected_statistics": projected_statistics,
        "alignment_pairs": pairs,
        "device": str(torch_device),
        "wall_time_s": round(time.perf_counter() - start, 3),
        **provenance(),
    }


def _projected(
    pretrained: Any, inputs: TaskSplit, feature_map: Tensor, stage: str, device: torch.device
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The same statistics on the run's projected region features (the d_z space of its local
    losses and uniformity prior), or None with the reason when the method has no region projection."""
    projection, backbone, source = local_projection(pretrained)
    if projection is None:
        return None, {"source": None, "note": source}
    projection = projection.to(device)
    maps = []
    with torch.no_grad():
        for index in inputs.batches(BATCH_SIZE):
            if backbone is None:  # the best-epoch backbone's conv5 map, already computed
                fmap = feature_map[index].to(device)
            else:
                fmap = backbone(inputs.normalise(inputs.images[index]).to(device))[stage].float()
            regions = projection(fmap.flatten(2).transpose(1, 2))  # B x N x d_z
            maps.append(regions.transpose(1, 2).reshape(len(fmap), -1, *fmap.shape[-2:]).float().cpu())
    projected = torch.cat(maps)
    info = {"source": source, "dim": projected.shape[1], "grid": list(projected.shape[-2:])}
    return feature_statistics(projected), info


def default_name(checkpoint: str | Path) -> str:
    """The encoder name an analysis is stored under when none is given: the spec, the file stem, or the
    folder name for a pre-training output folder or its checkpoint.pt."""
    text = str(checkpoint)
    if is_builtin(text):
        return text
    path = Path(text)
    if path.is_dir():
        return path.resolve().name
    return path.resolve().parent.name if path.name == "checkpoint.pt" else path.stem


def analysis_path(analysis_dir: str | Path, name: str, dataset: str) -> Path:
    """Where the record of encoder `name` on `dataset` lives: ANALYSIS_DIR/<name>__<dataset>.json."""
    from cxrbench.protocol.records import safe_name

    return Path(analysis_dir) / f"{safe_name(name)}__{safe_name(dataset)}.json"


def write_analysis(record: dict[str, Any], analysis_dir: str | Path, name: str) -> Path:
    """Write the record into `analysis_dir` atomically (the folder `correlate` reads), under `name`."""
    record = {**record, "name": name}
    path = analysis_path(analysis_dir, name, record["dataset"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path
