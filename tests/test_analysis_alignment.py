"""cxrbench analyze on a pre-training output: the rebuilt model, image-report alignment, null reasons."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_baselines import TINY
from typer.testing import CliRunner

from cxrbench.analysis import analyze_encoder, default_name
from cxrbench.baselines.training import CHECKPOINT, load_pretrained_model, pretrain
from cxrbench.errors import CheckpointError

IMAGE_KEYS = (
    "global_uniformity",
    "within_image_uniformity",
    "between_image_uniformity",
    "mean_within_cosine",
    "effective_rank_mean",
    "effective_rank_distribution",
    "neighbour_cosine",
    "spatial_smoothness",
)
ANALYSIS = {"n_images": 8, "resolution": 64}


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory) -> Path:
    """PREPARED_ROOT with a tiny phantom mimic_cxr (pairs) and covid_rural (the analysed images)."""
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.phantom import write_phantom
    from cxrbench.datasets.prepare import prepare

    root = tmp_path_factory.mktemp("alignment")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, n in (("mimic_cxr", 60), ("covid_rural", 20)):
            write_phantom(name, root / "raw" / name, n_images=n, seed=0)
            prepare(get_adapter(name), root / "raw" / name, root / "prepared" / name, size=64)
    return root / "prepared"


@pytest.fixture(scope="module")
def lovt_run(prepared_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lovt_run")
    profile = dataclasses.replace(TINY, max_epochs=1, max_train_images=16, max_val_images=8)
    pretrain("lovt", prepared_root / "mimic_cxr", out, profile, device="cpu")
    return out


def test_load_pretrained_model_rebuilds_the_trained_model(lovt_run) -> None:
    state = torch.load(lovt_run / CHECKPOINT, map_location="cpu", weights_only=True)
    rng = torch.get_rng_state()
    for source in (lovt_run, lovt_run / CHECKPOINT):
        loaded = load_pretrained_model(source)
        assert loaded.config.name == "lovt" and loaded.profile.resolution == TINY.resolution
        assert not loaded.model.training and loaded.model.cross_attention
        for key, value in loaded.model.state_dict().items():
            torch.testing.assert_close(value, state["model"][key])
        assert loaded.epoch == 1 and loaded.best_epoch == state["best_epoch"]
    assert torch.equal(rng, torch.get_rng_state())  # building the model leaves the global RNG alone
    with pytest.raises(CheckpointError, match="no pre-training checkpoint"):
        load_pretrained_model(lovt_run / "missing")


def test_analyze_pretraining_folder_computes_alignment(prepared_root, lovt_run) -> None:
    record = analyze_encoder(lovt_run, prepared_root / "covid_rural", **ANALYSIS)
    st = record["statistics"]
    for key in ("global_alignment", "local_alignment"):
        assert st[key] is not None and 0.0 <= st[key] <= 4.0, (key, st)
    assert "mimic_cxr test pairs" in st["alignment_note"]
    pairs = record["alignment_pairs"]
    assert pairs["dataset"] == "mimic_cxr" and pairs["method"] == "lovt" and pairs["n_pairs"] >= 1
    assert record["checkpoint"]["path"] == str(lovt_run / CHECKPOINT)
    assert record["checkpoint"]["fraction_loaded"] == 1.0 and len(record["checkpoint"]["sha256"]) == 64
    json.dumps(record, allow_nan=False)

    # the image statistics are those of the exported best-epoch encoder
    exported = analyze_encoder(lovt_run / "encoder.safetensors", prepared_root / "covid_rural", **ANALYSIS)
    assert exported["sample"]["image_ids"] == record["sample"]["image_ids"]
    for key in IMAGE_KEYS:
        assert record["statistics"][key] == exported["statistics"][key], key
    assert exported["statistics"]["global_alignment"] is None and exported["alignment_pairs"] is None

    # checkpoint.pt itself gives the same record as its folder, and the same seeded pair sample
    again = analyze_encoder(lovt_run / CHECKPOINT, prepared_root / "covid_rural", **ANALYSIS)
    assert again["statistics"] == record["statistics"] and again["alignment_pairs"] == pairs
    assert default_name(lovt_run) == default_name(lovt_run / CHECKPOINT) == lovt_run.name


def test_missing_mimic_pairs_give_null_with_the_prepare_command(prepared_root, lovt_run, tmp_path) -> None:
    shutil.copytree(prepared_root / "covid_rural", tmp_path / "covid_rural")
    record = analyze_encoder(lovt_run, tmp_path / "covid_rural", **ANALYSIS)
    st = record["statistics"]
    assert st["global_alignment"] is None and st["local_alignment"] is None
    assert (
        "cxrbench prepare mimic_cxr" in st["alignment_note"]
        and str(tmp_path / "mimic_cxr") in st["alignment_note"]
    )
    assert st["within_image_uniformity"] is not None and record["alignment_pairs"] is None


def test_cli_analyzes_a_pretraining_folder(prepared_root, lovt_run, tmp_path) -> None:
    from test_analysis import _app

    args = ["analyze", "run", str(lovt_run), "--data", str(prepared_root), "--dataset", "covid_rural"]
    result = CliRunner().invoke(
        _app(), [*args, "--n-images", "4", "--resolution", "64", "--out", str(tmp_path / "analysis")]
    )
    assert result.exit_code == 0, result.output
    assert "global alignment" in result.output
    saved = json.loads((tmp_path / "analysis" / f"{lovt_run.name}__covid_rural.json").read_text())
    assert 0.0 <= saved["statistics"]["local_alignment"] <= 4.0
    empty = tmp_path / "empty_run"
    empty.mkdir()
    result = CliRunner().invoke(
        _app(), ["analyze", "run", str(empty), "--data", str(prepared_root), "--dataset", "covid_rural"]
    )
    assert result.exit_code == 2 and "checkpoint.pt" in result.output and "Traceback" not in result.output


def test_global_only_method_has_global_alignment_and_a_local_reason(prepared_root, tmp_path) -> None:
    profile = dataclasses.replace(TINY, max_epochs=1, max_train_images=16, max_val_images=8)
    pretrain("convirt", prepared_root / "mimic_cxr", tmp_path, profile, device="cpu")
    st = analyze_encoder(tmp_path, prepared_root / "covid_rural", n_images=4, resolution=64)["statistics"]
    assert 0.0 <= st["global_alignment"] <= 4.0 and st["local_alignment"] is None
    assert "'convirt' has no local projections" in st["alignment_note"]
