"""cxrbench analyze: statistics on hand-built features, analysis on phantom data, correlation, CLI."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import typer
from scipy import stats
from typer.testing import CliRunner

from cxrbench.analysis import (
    MEAN_TASK,
    SCALAR_STATISTICS,
    analyze_encoder,
    correlate,
    feature_statistics,
    global_alignment,
    local_alignment,
    region_statistics,
    spearman_permutation,
    write_analysis,
)
from cxrbench.cli.analyze import analyze_app
from cxrbench.errors import CxrbenchError

T = 2.0


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(analyze_app, name="analyze")
    app.command("unused")(lambda: None)  # two commands: the sub-command name is then required
    return app


# ------------------------------------------------------------------------------ hand-built features
def test_identical_regions_collapse() -> None:
    base = torch.randn(3, 1, 16)
    regions = base.expand(3, 9, 16).clone() * torch.rand(3, 9, 1).add(0.5)  # scale does not matter
    st = region_statistics(regions, (3, 3))
    assert st["within_image_uniformity"] == pytest.approx(0.0, abs=1e-6)
    assert st["effective_rank_mean"] == pytest.approx(1.0, abs=1e-4)  # float32 normalisation
    assert st["effective_rank_distribution"]["max"] == pytest.approx(1.0, abs=1e-4)
    assert st["mean_within_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in st["spatial_smoothness"].values())


def test_orthogonal_regions_closed_form() -> None:
    b, n, d = 3, 4, 6
    regions = torch.eye(d)[:n].expand(b, n, d).clone()
    st = region_statistics(regions, (2, 2))
    assert st["within_image_uniformity"] == pytest.approx(-2 * T, abs=1e-5)  # ||e_n - e_m||^2 = 2
    assert st["effective_rank_mean"] == pytest.approx(n, abs=1e-5)
    assert st["mean_within_cosine"] == pytest.approx(0.0, abs=1e-6)
    # across images the same basis vector recurs: distance 0 with probability 1/n, else 2
    expected = math.log(1 / n + (n - 1) / n * math.exp(-2 * T))
    assert st["between_image_uniformity"] == pytest.approx(expected, abs=1e-5)
    # every image pools to the same vector: global uniformity at its maximum 0
    assert st["global_uniformity"] == pytest.approx(0.0, abs=1e-6)


def test_region_permutation_changes_only_spatial_smoothness() -> None:
    torch.manual_seed(0)
    grid = torch.linspace(0, 1, 4)
    smooth = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(16, 2)
    regions = torch.cat([smooth.expand(5, 16, 2) * 3, 0.3 * torch.randn(5, 16, 6)], -1)
    perm = torch.randperm(16)
    a, b = region_statistics(regions, (4, 4)), region_statistics(regions[:, perm], (4, 4))
    for key in ("global_uniformity", "within_image_uniformity", "between_image_uniformity"):
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    for key in ("mean_within_cosine", "effective_rank_mean"):
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert a["effective_rank_distribution"] == pytest.approx(b["effective_rank_distribution"], abs=1e-5)
    curve_a = np.array(list(a["spatial_smoothness"].values()))
    curve_b = np.array(list(b["spatial_smoothness"].values()))
    assert not np.allclose(curve_a, curve_b, atol=1e-3)
    assert curve_a[0] > curve_a[-1]  # the smooth component makes neighbours more similar


def test_feature_map_layout_and_single_image() -> None:
    fmap = torch.randn(1, 8, 2, 3)
    st = feature_statistics(fmap)
    assert st["global_uniformity"] is None  # one image: no pairs (NaN -> null for JSON)
    assert st["between_image_uniformity"] is None
    assert set(st["spatial_smoothness"]) == {"1", "2"}
    json.dumps(st, allow_nan=False)


def test_alignment_functions() -> None:
    z = torch.randn(5, 8)
    assert global_alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-6)
    assert global_alignment(z, -z) == pytest.approx(4.0, abs=1e-5)
    regions, attended = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    attended_ok = attended.clone()
    attended_ok[mask] = regions[mask]
    assert local_alignment(regions, attended_ok, mask) == pytest.approx(0.0, abs=1e-6)
    assert local_alignment(regions, attended_ok) > 0.1


# --------------------------------------------------------------------------------------- permutation
def test_spearman_permutation_exact_and_sampled() -> None:
    x, y = [0.1, 0.4, 0.2, 0.9], [1.0, 3.0, 2.5, 4.0]
    rho, p, note = spearman_permutation(x, y)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic)
    null = [stats.spearmanr(x, [y[i] for i in perm]).statistic for perm in itertools.permutations(range(4))]
    assert p == pytest.approx(np.mean(np.abs(null) >= abs(rho) - 1e-12)) and "exact" in note
    xs = np.arange(10.0)
    rho, p, note = spearman_permutation(xs, xs**2, n_permutations=2000, seed=1)
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 2001) and "random" in note
    assert math.isnan(spearman_permutation([1, 2], [3, 4])[0])
    rho, p, note = spearman_permutation([1, 1, 1], [1, 2, 3])
    assert math.isnan(rho) and math.isnan(p) and "constant" in note


# ------------------------------------------------------------------------------------ phantom data
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.phantom import write_phantom
    from cxrbench.datasets.prepare import prepare

    root = tmp_path_factory.mktemp("analysis")
    write_phantom("covid_rural", root / "raw", n_images=30, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(get_adapter("covid_rural"), root / "raw", root / "prepared" / "covid_rural", size=64)
    return root / "prepared"


def test_analyze_random_encoder(prepared, tmp_path) -> None:
    record = analyze_encoder("random", prepared / "covid_rural", n_images=64, arch="resnet18")
    assert record["features"]["grid"] == [7, 7] and record["sample"]["resolution"] == 224
    assert record["checkpoint"]["sha256"] is None and record["checkpoint"]["arch"] == "resnet18"
    st = record["statistics"]
    assert -4.0 <= st["within_image_uniformity"] <= 0.0 and 1.0 <= st["effective_rank_mean"] <= 49.0
    assert st["global_alignment"] is None and "not a checkpoint file" in st["alignment_note"]
    assert set(st["spatial_smoothness"]) == {str(d) for d in range(1, 7)}
    assert record["git_commit"] and record["versions"]["torch"]
    # the seeded sample and the 'random' weights are reproducible
    again = analyze_encoder("random", prepared / "covid_rural", n_images=64, arch="resnet18")
    assert again["sample"]["image_ids"] == record["sample"]["image_ids"]
    assert again["statistics"]["within_image_uniformity"] == pytest.approx(st["within_image_uniformity"])
    path = write_analysis(record, tmp_path / "analysis", "rand 18")
    assert path == tmp_path / "analysis" / "rand_18__covid_rural.json"
    saved = json.loads(path.read_text())
    assert (
        saved["name"] == "rand 18" and saved["sample"]["image_ids_hash"] == record["sample"]["image_ids_hash"]
    )


def test_analyze_torchvision_state_dict(prepared, tmp_path) -> None:
    torch.manual_seed(3)
    ckpt = tmp_path / "tv18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    record = analyze_encoder(ckpt, prepared / "covid_rural", n_images=8, seed=2, resolution=96)
    assert record["checkpoint"]["arch"] == "resnet18" and len(record["checkpoint"]["sha256"]) == 64
    assert record["features"]["grid"] == [3, 3] and record["sample"]["n_images"] <= 8
    assert "not an image-report checkpoint" in record["statistics"]["alignment_note"]
    json.dumps(record, allow_nan=False)


def test_analyze_feeds_the_encoders_input_preset_as_evaluation_does(prepared) -> None:
    """The preset evaluation would use (here: the protocol's dataset statistics for a ResNet, or an
    explicit one) normalises analyze's images too, and the record says which."""
    common = dict(n_images=8, resolution=64, arch="resnet18")
    default = analyze_encoder("random", prepared / "covid_rural", **common)
    imagenet = analyze_encoder("random", prepared / "covid_rural", preset="imagenet", **common)
    assert default["preprocessing"]["name"] == "dataset" and default["preprocessing"]["mean"] is None
    assert imagenet["preprocessing"]["name"] == "imagenet"
    assert list(imagenet["preprocessing"]["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    uniformity = "within_image_uniformity"
    assert imagenet["statistics"][uniformity] != pytest.approx(default["statistics"][uniformity], rel=1e-6)
    with pytest.raises(CxrbenchError, match="preset"):
        analyze_encoder("random", prepared / "covid_rural", preset="no-such-preset", **common)


def test_analyze_rejects_bad_input(prepared) -> None:
    with pytest.raises(CxrbenchError, match="n-images"):
        analyze_encoder("random", prepared / "covid_rural", n_images=0, arch="resnet18")
    with pytest.raises(CxrbenchError, match="cxrbench prepare"):
        analyze_encoder("random", prepared / "missing", arch="resnet18")


# --------------------------------------------------------------------------------------- correlate
ENCODERS = {"a": -3.0, "b": -2.5, "c": -1.0, "d": -2.0}  # within-image uniformity per encoder
TASKS = ("rsna_yolo_frozen_10", "siim_unet_frozen")


def _score(encoder: str, task: str, seed: int) -> float:
    base = {"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.4}[encoder]
    return base + (0.05 if task == TASKS[1] and encoder == "c" else 0.0) + 0.01 * seed


def _write_runs(runs: Path, encoders) -> None:
    for enc in encoders:
        for task in TASKS:
            for seed, (status, phase) in enumerate([("ok", "final"), ("ok", "final"), ("failed", "final")]):
                rec = {
                    "schema_version": 1,
                    "run_id": f"{enc}-{task}-{seed}",
                    "encoder": enc,
                    "task_id": task,
                    "metric": "map",
                    "phase": phase,
                    "status": status,
                    "test": {"map": _score(enc, task, seed) if status == "ok" else 0.99},
                    "protocol_hash": "p",
                }
                path = runs / enc / task / f"run-{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rec))


def _write_analyses(out: Path, encoders) -> None:
    for enc in encoders:
        stats_ = {k: None for k in SCALAR_STATISTICS}
        stats_.update(
            within_image_uniformity=ENCODERS[enc], global_uniformity=-1.0, effective_rank_mean=ord(enc)
        )
        record = {"analysis_schema_version": 1, "dataset": "rsna", "statistics": stats_}
        write_analysis(record, out / "analysis", enc)


def test_correlate_four_encoders(tmp_path) -> None:
    runs = tmp_path / "runs"
    _write_runs(runs, ENCODERS)
    _write_analyses(tmp_path, ENCODERS)
    frame = correlate([runs], tmp_path / "analysis")
    row = frame[(frame.statistic == "within_image_uniformity") & (frame.task_id == TASKS[0])].iloc[0]
    x = list(ENCODERS.values())
    y = [np.mean([_score(e, TASKS[0], s) for s in (0, 1)]) for e in ENCODERS]
    assert row.spearman_rho == pytest.approx(stats.spearmanr(x, y).statistic) and row.n_encoders == 4
    assert 0 < row.p_value <= 1 and "exact" in row.note
    mean = frame[(frame.statistic == "within_image_uniformity") & (frame.task_id == MEAN_TASK)].iloc[0]
    y_mean = [np.mean([np.mean([_score(e, t, s) for s in (0, 1)]) for t in TASKS]) for e in ENCODERS]
    assert mean.spearman_rho == pytest.approx(stats.spearmanr(x, y_mean).statistic)
    const = frame[frame.statistic == "global_uniformity"].iloc[0]
    assert math.isnan(const.spearman_rho) and "constant" in const.note
    missing = frame[frame.statistic == "global_alignment"].iloc[0]
    assert math.isnan(missing.spearman_rho) and missing.n_encoders == 0
    paths = frame.attrs["paths"]
    for key in ("csv", "heatmap_rsna", "scatter_rsna"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    assert paths["heatmap_rsna"].read_bytes()[:4] == b"\x89PNG"
    assert len(frame) == len(SCALAR_STATISTICS) * (len(TASKS) + 1)


def test_correlate_too_few_encoders_and_missing_tasks(tmp_path) -> None:
    runs = tmp_path / "runs"
    _write_runs(runs, ["a", "b"])
    _write_analyses(tmp_path, ["a", "b", "c"])
    frame = correlate(runs, tmp_path / "analysis", out_dir=tmp_path / "out")
    assert frame.spearman_rho.isna().all()
    notes = " ".join(frame.attrs["notes"])
    assert "need at least 3" in notes and "no run records for c" in notes
    assert (tmp_path / "out" / "correlation.csv").is_file()
    # an encoder without one task: the mean over tasks uses the common tasks only
    _write_runs(runs, ["c", "d"])
    for path in (runs / "d" / TASKS[1]).glob("*.json"):
        path.unlink()
    _write_analyses(tmp_path, ["d"])
    frame = correlate(runs, tmp_path / "analysis")
    assert any("1 task(s) lack scores" in n for n in frame.attrs["notes"])
    row = frame[(frame.statistic == "within_image_uniformity") & (frame.task_id == TASKS[1])].iloc[0]
    assert row.n_encoders == 3


# --------------------------------------------------------------------------------------------- CLI
def test_cli_analyze_and_correlate(prepared, tmp_path) -> None:
    app = _app()
    runner = CliRunner()
    runs = tmp_path / "runs"
    args = [
        "analyze",
        "run",
        "random",
        "--data",
        str(prepared),
        "--dataset",
        "covid_rural",
        "--n-images",
        "4",
    ]
    result = runner.invoke(app, [*args, "--resolution", "64", "--arch", "resnet18", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert "within-image uniformity" in result.output
    assert (tmp_path / "analysis" / "random__covid_rural.json").is_file()

    result = runner.invoke(app, ["analyze", "run", "random", "--data", str(tmp_path), "--dataset", "rsna"])
    assert result.exit_code == 2 and "cxrbench prepare rsna" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["analyze"])
    assert result.exit_code == 2 and "correlate" in result.output

    _write_runs(runs, ENCODERS)
    _write_analyses(tmp_path, ENCODERS)
    result = runner.invoke(app, ["analyze", "correlate", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert "within_image_uniformity" in result.output and "no run records for random" in result.output
    assert (tmp_path / "analysis" / "correlation.csv").is_file()
    result = runner.invoke(app, ["analyze", "correlate"])
    assert result.exit_code == 2 and "--runs-dir" in result.output


def test_cli_analyze_out_is_where_correlate_looks(prepared, tmp_path) -> None:
    """`analyze run --out DIR` then `analyze correlate --analysis-dir DIR` finds the record; the form
    without `run` (`cxrbench analyze CHECKPOINT ...`) still works."""
    app = _app()
    runner = CliRunner()
    out = tmp_path / "board" / "analysis"
    args = ["--data", str(prepared / "covid_rural"), "--n-images", "4", "--resolution", "64"]
    result = runner.invoke(app, ["analyze", "random", *args, "--arch", "resnet18", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "random__covid_rural.json").is_file() and not (out / "analysis").exists()
    runs = tmp_path / "runs"
    _write_runs(runs, ENCODERS)
    _write_analyses(tmp_path / "board", ENCODERS)  # into `out`
    result = runner.invoke(app, ["analyze", "correlate", "--runs-dir", str(runs), "--analysis-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "no run records for random" in result.output  # the record `analyze --out` wrote was read
    assert (out / "correlation.csv").is_file()
    result = runner.invoke(
        app, ["analyze", "correlate", "--runs-dir", str(runs), "--analysis-dir", str(runs)]
    )
    assert result.exit_code == 2 and "no analysis records" in result.output


def test_cli_correlate_out_is_claimed_like_every_output_folder(tmp_path) -> None:
    """`analyze correlate --out` writes only into a new, empty or earlier correlation/analysis folder: a
    user's folder (with its own correlation.csv), a file or the runs dir are refused and untouched."""
    app = _app()
    runner = CliRunner()
    runs = tmp_path / "runs"
    _write_runs(runs, ENCODERS)
    _write_analyses(tmp_path, ENCODERS)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "correlation.csv").write_text("my own numbers\n")
    report = tmp_path / "report.txt"
    report.write_text("keep\n")
    runs_before = sorted(str(p.relative_to(runs)) for p in runs.rglob("*"))
    for target, message in ((mine, "already holds files"), (report, "existing file"), (runs, "input folder")):
        result = runner.invoke(app, ["analyze", "correlate", "--runs-dir", str(runs), "--out", str(target)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert sorted(p.name for p in mine.iterdir()) == ["correlation.csv"]
    assert (mine / "correlation.csv").read_text() == "my own numbers\n" and report.read_text() == "keep\n"
    assert sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) == runs_before
    new = tmp_path / "new"
    for _ in range(2):  # a new folder, then the same folder again (its own)
        result = runner.invoke(app, ["analyze", "correlate", "--runs-dir", str(runs), "--out", str(new)])
        assert result.exit_code == 0, result.output
        assert (new / "correlation.csv").is_file()
