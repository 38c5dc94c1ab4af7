"""cxrbench analyze on the projected region features of a pre-training run (the space of its prior)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats
from test_analysis import ENCODERS, TASKS, _app, _score, _write_runs
from test_baselines import TINY
from typer.testing import CliRunner

from cxrbench.analysis import (
    SCALAR_STATISTICS,
    analyze_encoder,
    correlate,
    feature_statistics,
    write_analysis,
)
from cxrbench.baselines.training import PROJECTION_HEADS, load_pretrained_model, pretrain
from cxrbench.datasets import open_prepared
from cxrbench.encoders import load_encoder
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.task_data import TaskSplit, resize_images

ANALYSIS = {"n_images": 6, "resolution": 64}


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory) -> Path:
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.phantom import write_phantom
    from cxrbench.datasets.prepare import prepare

    root = tmp_path_factory.mktemp("projected")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, n in (("mimic_cxr", 60), ("covid_rural", 20)):
            write_phantom(name, root / "raw" / name, n_images=n, seed=0)
            prepare(get_adapter(name), root / "raw" / name, root / "prepared" / name, size=64)
    return root / "prepared"


@pytest.fixture(scope="module")
def prior_run(prepared_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prior_run")
    profile = dataclasses.replace(TINY, max_epochs=1, max_train_images=16, max_val_images=8)
    pretrain("uniformity_prior", prepared_root / "mimic_cxr", out, profile, device="cpu")
    return out


def _by_hand(run: Path, data: Path, sample_ids: list[str]) -> dict:
    """Best-epoch encoder + projection_heads.safetensors applied outside the analysis code."""
    encoder = load_encoder(run / "encoder.safetensors").encoder.eval()
    projection = load_pretrained_model(run).model.image_local_proj
    heads = load_file(str(run / PROJECTION_HEADS))
    projection.load_state_dict(
        {k.split(".", 1)[1]: v for k, v in heads.items() if k.startswith("image_local_proj.")}
    )
    ds = open_prepared(data)
    test = ds.split("test")
    index = [test.image_ids.index(i) for i in sample_ids]
    split = test.subset(np.array(index))
    inputs = TaskSplit(
        resize_images(split.images(), 64), None, None, sample_ids, ds.stats["mean"], ds.stats["std"]
    )
    with torch.no_grad():
        fmap = encoder(inputs.normalise(inputs.images))["conv5"]
        regions = projection.eval()(fmap.flatten(2).transpose(1, 2))
    return feature_statistics(regions.transpose(1, 2).reshape(len(fmap), -1, *fmap.shape[-2:]))


def test_run_folder_holds_the_best_epoch_projection_heads(prior_run) -> None:
    heads = load_file(str(prior_run / PROJECTION_HEADS))
    assert {k.split(".")[0] for k in heads} == {
        "image_global_proj",
        "report_global_proj",
        "image_local_proj",
        "report_local_proj",
    }
    assert heads["image_local_proj.net.3.weight"].shape[0] == TINY.d_z


def test_analyze_measures_projected_regions_side_by_side(prepared_root, prior_run, tmp_path) -> None:
    data = prepared_root / "covid_rural"
    record = analyze_encoder(prior_run, data, **ANALYSIS)
    info = record["projected_features"]
    assert info["dim"] == TINY.d_z and PROJECTION_HEADS in info["source"]
    assert info["grid"] == record["features"]["grid"]
    projected, backbone = record["projected_statistics"], record["statistics"]
    expected = _by_hand(prior_run, data, record["sample"]["image_ids"])
    for key in ("within_image_uniformity", "global_uniformity", "effective_rank_mean", "mean_within_cosine"):
        assert projected[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
        assert projected[key] != backbone[key]
    json.dumps(record, allow_nan=False)

    # without the heads file: the checkpoint's last-epoch projection with its own backbone, and it says so
    (prior_run / PROJECTION_HEADS).rename(tmp_path / PROJECTION_HEADS)
    try:
        fallback = analyze_encoder(prior_run, data, **ANALYSIS)
    finally:
        (tmp_path / PROJECTION_HEADS).rename(prior_run / PROJECTION_HEADS)
    assert "checkpoint.pt, last epoch 1" in fallback["projected_features"]["source"]
    assert fallback["projected_statistics"]["within_image_uniformity"] is not None

    # a plain encoder file has no projected features
    plain = analyze_encoder(prior_run / "encoder.safetensors", data, **ANALYSIS)
    assert plain["projected_statistics"] is None and plain["projected_features"] is None


def test_cli_shows_both_feature_columns(prepared_root, prior_run, tmp_path) -> None:
    args = ["analyze", "run", str(prior_run), "--data", str(prepared_root), "--dataset", "covid_rural"]
    result = CliRunner().invoke(
        _app(), [*args, "--n-images", "4", "--resolution", "64", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "backbone" in result.output and f"projected ({TINY.d_z}-d)" in result.output


def _write_both(out: Path) -> None:
    """Backbone statistics ordered like ENCODERS, projected ones in the reverse order; 'e' has none."""
    values = list(ENCODERS.values())
    for k, enc in enumerate(ENCODERS):
        backbone = dict.fromkeys(SCALAR_STATISTICS)
        backbone["within_image_uniformity"] = values[k]
        projected = dict.fromkeys(SCALAR_STATISTICS)
        projected["within_image_uniformity"] = -values[k]
        record = {
            "analysis_schema_version": 1,
            "dataset": "rsna",
            "statistics": backbone,
            "projected_statistics": projected,
        }
        write_analysis(record, out, enc)
    write_analysis(
        {
            "analysis_schema_version": 1,
            "dataset": "rsna",
            "statistics": backbone,
            "projected_statistics": None,
        },
        out,
        "e",
    )


def test_correlate_uses_backbone_or_projected_statistics(tmp_path) -> None:
    runs = tmp_path / "runs"
    _write_runs(runs, ENCODERS)
    _write_both(tmp_path / "analysis")
    y = [np.mean([_score(e, TASKS[0], s) for s in (0, 1)]) for e in ENCODERS]
    rho = stats.spearmanr(list(ENCODERS.values()), y).statistic

    def first(frame):
        return frame[(frame.statistic == "within_image_uniformity") & (frame.task_id == TASKS[0])].iloc[0]

    backbone = correlate([runs], tmp_path / "analysis")
    projected = correlate([runs], tmp_path / "analysis", features="projected")
    assert first(backbone).spearman_rho == pytest.approx(rho)
    assert first(projected).spearman_rho == pytest.approx(-rho) and first(projected).n_encoders == 4
    assert set(projected.features) == {"projected"} and set(backbone.features) == {"backbone"}
    assert projected.attrs["paths"]["csv"].name == "correlation_projected.csv"
    assert (tmp_path / "analysis" / "correlation.csv").is_file()
    assert any("no projected features" in n and ": e" in n for n in projected.attrs["notes"])
    with pytest.raises(CxrbenchError, match="unknown features"):
        correlate([runs], tmp_path / "analysis", features="pixels")

    result = CliRunner().invoke(
        _app(),
        [
            "analyze",
            "correlate",
            "--runs-dir",
            str(runs),
            "--analysis-dir",
            str(tmp_path / "analysis"),
            "--features",
            "projected",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "no projected features" in result.output
