"""Fault classes: unwritable output locations, unsafe names and out-of-range counts are refused before
any training, with one line and exit code 2, and nothing is written."""

from __future__ import annotations

import errno

import pytest

import cxrbench.output_dirs as output_dirs
from cxrbench.errors import CxrbenchError
from cxrbench.output_dirs import check_name

from .helpers import assert_one_line_error, run_cli, write_seg_run


def _no_work(*args, **kwargs):
    raise AssertionError("work started although an output location was unusable")


@pytest.fixture
def no_training(monkeypatch):
    """Any training (evaluate, sweep job, pretrain, leaderboard build, analysis) fails the test."""
    import cxrbench.analysis as analysis
    import cxrbench.baselines.training as training
    import cxrbench.leaderboard.report as report
    import cxrbench.protocol.runner as runner
    import cxrbench.sweep.job as sweep_job

    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_work)
    monkeypatch.setattr(sweep_job, "run_single", _no_work)
    monkeypatch.setattr(training, "pretrain", _no_work)
    monkeypatch.setattr(report, "build_leaderboard", _no_work)
    monkeypatch.setattr(analysis, "analyze_encoder", _no_work)


def _outputs(prepared_root, tmp_path) -> dict[str, tuple[list, object]]:
    runs = tmp_path / "runs"
    write_seg_run(runs, "enc", 0)
    out = tmp_path / "out"
    return {
        "evaluate": (["evaluate", "random", "--data", prepared_root, "--tasks", "covid_linear",
                      "--arch", "resnet18", "--runs-dir", out], out),
        "sweep": (["sweep", "-c", "random", "--arch", "resnet18", "--data", prepared_root, "--tasks",
                   "covid_linear", "--profile", "demo", "--executor", "debug", "--runs-dir", out], out),
        "pretrain": (["pretrain", "convirt", "--data", prepared_root / "mimic_cxr", "--out", out], out),
        "leaderboard": (["leaderboard", "--runs-dir", runs, "--out", out], out),
    }  # fmt: skip


@pytest.mark.parametrize("command", ["evaluate", "sweep", "pretrain", "leaderboard"])
@pytest.mark.parametrize(
    "failure, message",
    [
        (PermissionError(errno.EACCES, "Permission denied"), "is not writable (permission denied)"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    ],
)
def test_unwritable_output_is_found_before_any_work(
    prepared_root, tmp_path, monkeypatch, no_training, command, failure, message
):
    def refuse(*args, **kwargs):
        raise failure

    args, out = _outputs(prepared_root, tmp_path)[command]
    monkeypatch.setattr(output_dirs.os, "write", refuse)
    result = run_cli(*args)
    monkeypatch.undo()
    assert_one_line_error(result, message, str(out))
    assert not [p for p in out.rglob("*") if p.is_file()]  # the probe left nothing behind


@pytest.mark.parametrize("command", ["evaluate", "sweep", "pretrain", "leaderboard"])
def test_output_under_a_file_is_found_before_any_work(prepared_root, tmp_path, no_training, command):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    args, out = _outputs(prepared_root, tmp_path)[command]
    args = [blocker / "out" if a == out else a for a in args]
    assert_one_line_error(run_cli(*args), f"{blocker} is a file, not a directory")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../escape", "", "  ", "tab\there", "a\\b"])
def test_unsafe_names_are_refused_by_one_rule(name):
    with pytest.raises(CxrbenchError, match="a name is one folder name"):
        check_name(name)


@pytest.mark.parametrize("name", ["..", "a/b", "", ".hidden"])
def test_unsafe_names_are_refused_by_every_command(prepared_root, tmp_path, no_training, name):
    runs = tmp_path / "runs"
    evaluate = ["evaluate", "random", "--data", prepared_root, "--tasks", "covid_linear", "--arch",
                "resnet18", "--runs-dir", runs, "--name", name]  # fmt: skip
    assert_one_line_error(run_cli(*evaluate), "--name", "a name is one folder name")
    sweep = ["sweep", "-c", f"{name}=random", "--arch", "resnet18", "--data", prepared_root, "--tasks",
             "covid_linear", "--profile", "demo", "--executor", "debug", "--runs-dir", runs]  # fmt: skip
    if name:  # "=random" is a checkpoint spec without a name
        assert_one_line_error(run_cli(*sweep), "checkpoint name", "a name is one folder name")
    analyze = ["analyze", "run", "random", "--data", prepared_root, "--arch", "resnet18",
               "--out", tmp_path / "analysis", "--name", name]  # fmt: skip
    assert_one_line_error(run_cli(*analyze), "--name", "a name is one folder name")
    assert not runs.exists() and not (tmp_path / "analysis").exists()
    assert not (tmp_path.parent / "escape").exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_out_of_range_counts_are_one_line_before_any_work(prepared_root, tmp_path, no_training, value):
    runs = tmp_path / "runs"
    evaluate = ["evaluate", "random", "--data", prepared_root, "--tasks", "covid_linear", "--arch",
                "resnet18", "--runs-dir", runs, "--seeds", value]  # fmt: skip
    assert_one_line_error(run_cli(*evaluate), f"--seeds {value}")
    sweep = ["sweep", "-c", "random", "--arch", "resnet18", "--data", prepared_root, "--tasks",
             "covid_linear", "--profile", "demo", "--executor", "debug", "--runs-dir", runs, "--seeds", value]  # fmt: skip
    assert_one_line_error(run_cli(*sweep), "`seeds`", value)
    analyze = ["analyze", "run", "random", "--data", prepared_root, "--out", tmp_path / "analysis",
               "--n-images", value]  # fmt: skip
    assert_one_line_error(run_cli(*analyze), f"--n-images {value}")
    pretrain = ["pretrain", "convirt", "--data", prepared_root / "mimic_cxr", "--out", tmp_path / "pt",
                "--epochs", value]  # fmt: skip
    assert_one_line_error(run_cli(*pretrain), f"--epochs {value}")
    assert not runs.exists() and not (tmp_path / "analysis").exists() and not (tmp_path / "pt").exists()


def test_negative_bootstrap_counts_are_one_line(tmp_path, no_training):
    runs = tmp_path / "runs"
    write_seg_run(runs, "enc", 0)
    for option in ("--n-boot", "--n-boot-detection"):
        result = run_cli("leaderboard", "--runs-dir", runs, "--out", tmp_path / "out", option, "-1")
        assert_one_line_error(result, f"{option} -1", "0 or more")
    assert not (tmp_path / "out").exists()


def test_a_sweep_profile_name_follows_the_same_rule():
    from cxrbench.sweep import config_from_mapping

    base = {"checkpoints": ["random"], "data": "prepared"}
    with pytest.raises(CxrbenchError, match="profile name 'a/b' contains a path separator"):
        config_from_mapping({**base, "profile": {"base": "demo", "name": "a/b", "max_epochs": 1}})


def test_a_wrong_data_folder_is_named_before_the_runs_dir_is_created(prepared_root, tmp_path, no_training):
    """`evaluate --data` at one prepared dataset or at a raw download says so (never suggesting a
    cache inside the download); it, an unknown profile or an absent device create no runs dir."""
    raw = tmp_path / "downloads" / "rsna"
    (raw / "stage_2_train_images").mkdir(parents=True)
    (raw / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\n")
    args = ["evaluate", "random", "--arch", "resnet18", "--tasks", "rsna_seg_linear_1"]
    cases = [
        (["--data", prepared_root / "rsna"], ["is itself one prepared dataset", str(prepared_root)]),
        (["--data", raw], [f"{raw} is a raw rsna download", "outside the download"]),
        (["--data", raw.parent], [f"{raw} is a raw rsna download"]),
        (["--data", prepared_root, "--profile", "nightly"], ["unknown profile 'nightly'"]),
    ]
    for k, (extra, fragments) in enumerate(cases):
        runs = tmp_path / f"runs{k}"
        assert_one_line_error(run_cli(*args, *extra, "--runs-dir", runs), *fragments)
        assert not runs.exists()
    assert sorted(p.name for p in raw.iterdir()) == ["stage_2_train_images", "stage_2_train_labels.csv"]
