"""`cxrbench sweep`: executors, idempotence, kill-and-resume, failures and unusable runs dirs."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

import cxrbench.protocol.runner as runner
import cxrbench.sweep as sweep
import cxrbench.sweep.job as sweep_job
import cxrbench.sweep.planning as planning
from cxrbench.cli.sweep import sweep_command
from cxrbench.encoders import ResNetEncoder
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import sha256_file
from cxrbench.output_dirs import SWEEP_LOGS
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.tasks import get_profile, select_tasks
from cxrbench.sweep import (
    CheckpointSpec,
    ClusterOptions,
    SweepConfig,
    config_from_mapping,
    run_sweep,
)

TINY = dataclasses.replace(
    get_profile("demo"),
    name="test",
    resolution=64,
    max_epochs=2,
    default_seeds=2,
    max_train_images=16,
    max_eval_images=16,
)
TINY_YAML = {"base": "demo", "name": "test", "resolution": 64, "max_epochs": 2, "default_seeds": 2,
             "max_train_images": 16, "max_eval_images": 16}  # fmt: skip
RANDOM = CheckpointSpec("random", arch="resnet18")
TWO_TASKS = "covid_linear,rsna_seg_linear_10"


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "mine.pt"
    torch.manual_seed(1)
    torch.save(ResNetEncoder("resnet18").state_dict(), path)
    return path


def _config(prepared_root, runs, executor="debug", checkpoints=(RANDOM,), tasks="covid_linear", **kw):
    return SweepConfig(
        list(checkpoints), prepared_root, runs, tasks, kw.pop("profile", TINY), executor=executor, **kw
    )


def _records(runs: Path) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted(runs.glob("*/*/*.json"))}


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("sweep")(sweep_command)
    app.command("noop")(lambda: None)  # keeps `sweep` a named sub-command, as in the real CLI
    return app


def test_debug_sweep_runs_lr_search_then_seeds_with_evaluate_keys(prepared_root, tmp_path, saved_checkpoint):
    profile = dataclasses.replace(TINY, max_lrs=None, max_train_images=8, max_eval_images=8)  # full 4-lr grid
    mine = CheckpointSpec(str(saved_checkpoint), encoder="mine")
    config = _config(
        prepared_root, tmp_path, checkpoints=(mine,), tasks="rsna_seg_linear_10", profile=profile
    )
    summary = run_sweep(config)
    assert summary.ok and summary.count("ok") == 4 + 2
    records = list(_records(tmp_path).values())
    search = {r["lr"]: r["val"]["dice"] for r in records if r["phase"] == "lr_search"}
    finals = [r for r in records if r["phase"] == "final"]
    assert sorted(search) == [1e-3, 3e-3, 1e-2, 3e-2] and sorted(r["seed"] for r in finals) == [0, 1]
    assert {r["lr"] for r in finals} == {max(search, key=search.get)}
    assert summary.chosen_lr[("mine", "rsna_seg_linear_10")] == finals[0]["lr"]
    assert all(r["checkpoint"]["sha256"] == sha256_file(saved_checkpoint) for r in records)
    # the records are evaluate's: evaluate finds every run done and re-runs nothing
    opts = EvaluateOptions(prepared_root, tmp_path, "mine", profile, arch="resnet18")
    outcome = evaluate_checkpoint(saved_checkpoint, select_tasks("rsna_seg_linear_10"), opts)[0]
    assert {r["run_id"] for r in outcome.records} == {r["run_id"] for r in records}
    assert len(_records(tmp_path)) == 6


def test_submitit_local_executor_and_resubmission_skips(prepared_root, tmp_path):
    config = _config(prepared_root, tmp_path / "runs", "submitit-local", workers=2)
    summary = run_sweep(config)
    assert summary.ok and summary.count("ok") == 2, [o.error for o in summary.outcomes]
    records = _records(tmp_path / "runs")
    assert len(records) == 2 and all(r["sweep"]["executor"] == "submitit-local" for r in records.values())
    assert list((tmp_path / "runs" / ".submitit").iterdir())  # submitit's job folders
    again = run_sweep(config)
    assert again.count("skipped") == 2 and again.count("ok") == 0
    assert {o.run_id for o in again.outcomes} == {r["run_id"] for r in records.values()}


def test_local_process_pool_executor(prepared_root, tmp_path):
    summary = run_sweep(_config(prepared_root, tmp_path, "local", tasks="rsna_seg_linear_10", workers=2))
    assert summary.ok and summary.count("ok") == 2
    records = _records(tmp_path)
    assert len(records) == 2 and len({r["run_id"] for r in records.values()}) == 2
    assert {r["sweep"]["executor"] for r in records.values()} == {"local"}


def test_kill_and_resume_sweep(prepared_root, tmp_path):
    runs = tmp_path / "runs"
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "checkpoints": [{"spec": "random", "arch": "resnet18"}], "data": str(prepared_root), "runs_dir": str(runs),
        "tasks": TWO_TASKS, "profile": TINY_YAML, "executor": "local", "workers": 1,
    }))  # fmt: skip
    cmd = [sys.executable, "-m", "cxrbench.cli.sweep", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(runs.glob("random/*/*.json")) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool workers
    proc.wait()
    before = {p: r["run_id"] for p, r in _records(runs).items()}
    assert 1 <= len(before) < 4
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    after = _records(runs)
    assert len(after) == 4 and all(r["status"] == "ok" for r in after.values())
    assert len({r["run_key"] for r in after.values()}) == 4
    assert all(after[p]["run_id"] == run_id for p, run_id in before.items())  # finished runs untouched
    assert not list(runs.rglob("*.tmp"))


def test_failing_jobs_are_recorded_and_others_continue(prepared_root, tmp_path, monkeypatch):
    import cxrbench.protocol.heads.segmentation as segmentation

    real_loss, real_split = segmentation.soft_dice_loss, runner.load_task_split
    monkeypatch.setattr(
        segmentation, "soft_dice_loss", lambda logits, target: real_loss(logits, target) * float("nan")
    )

    def broken_split(dataset, task, split, profile):
        if task.task_id == "rsna_seg_linear_10":
            raise RuntimeError("unreadable image cache")
        return real_split(dataset, task, split, profile)

    monkeypatch.setattr(runner, "load_task_split", broken_split)
    config = _config(
        prepared_root, tmp_path, tasks="covid_linear,rsna_seg_linear_10,rsna_yolo_frozen_10", seeds=1
    )
    summary = run_sweep(config)
    by_task = {r["task_id"]: r for r in _records(tmp_path).values()}
    assert (
        by_task["covid_linear"]["status"] == "failed"
        and "loss became nan" in by_task["covid_linear"]["error"]
    )
    assert by_task["rsna_seg_linear_10"]["status"] == "failed"
    assert "RuntimeError: unreadable image cache" in by_task["rsna_seg_linear_10"]["error"]
    assert by_task["rsna_yolo_frozen_10"]["status"] == "ok" and not summary.ok
    assert summary.count("failed") == 2 and summary.count("ok") == 1
    monkeypatch.setattr(segmentation, "soft_dice_loss", real_loss)
    monkeypatch.setattr(runner, "load_task_split", real_split)
    again = run_sweep(config)  # failed runs are retried and replace their failed records
    assert again.ok and again.count("ok") == 2 and again.count("skipped") == 1
    assert len(_records(tmp_path)) == 3


def _never_run(job):
    raise AssertionError("no job may start when the runs directory is unusable")


@pytest.mark.parametrize(
    "failure, message",
    [
        (PermissionError(errno.EACCES, "Permission denied"), r"is not writable \(permission denied\)"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    ],
)
def test_unwritable_runs_dir_is_one_clear_error_before_any_job(
    prepared_root, tmp_path, monkeypatch, failure, message
):
    def refuse(*args, **kwargs):
        raise failure

    monkeypatch.setattr(sweep_job, "run_single", _never_run)
    monkeypatch.setattr(planning.os, "write", refuse)
    with pytest.raises(CxrbenchError, match=message) as info:
        run_sweep(_config(prepared_root, tmp_path / "runs"))
    assert str(tmp_path / "runs") in str(info.value)


def test_runs_dir_under_a_file_is_a_clear_cli_error(prepared_root, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    args = ["sweep", "-c", "random", "--arch", "resnet18", "--data", str(prepared_root), "--tasks", "covid_linear",
            "--profile", "demo", "--executor", "debug", "--runs-dir", str(blocker / "runs")]  # fmt: skip
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 2, result.output
    assert f"{blocker} is a file, not a directory" in result.output
    assert "Traceback" not in result.output


def test_cli_dry_run_lists_jobs_and_writes_nothing(prepared_root, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "checkpoints": ["random"], "data": str(prepared_root), "runs_dir": str(tmp_path / "runs"),
        "tasks": ["covid_linear", "covid_unet_frozen"], "profile": "full", "seeds": 3,
    }))  # fmt: skip
    result = CliRunner().invoke(_cli(), ["sweep", str(config), "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "7 runs" in result.output  # lr search: 4 + 3 lrs; finals wait for it
    assert result.output.count("best of stage 1") == 2 and not (tmp_path / "runs").exists()


def test_config_validation_and_profile_overrides():
    base = {"checkpoints": ["mine=ckpt.pt", {"spec": "random", "arch": "resnet18"}], "data": "prepared"}
    config = config_from_mapping({**base, "profile": TINY_YAML, "slurm": {"partition": "gpu"}})
    assert config.checkpoints == [CheckpointSpec("ckpt.pt", "mine"), RANDOM]
    assert config.profile == TINY and config.cluster.partition == "gpu"
    example = config_from_mapping(sweep.load_config(Path(__file__).parents[1] / "examples" / "sweep.yaml"))
    assert example.executor == "slurm" and example.cluster.mem_gb == 48 and len(example.checkpoints) == 3
    for bad, message in [
        ({**base, "exector": "local"}, "unknown key"),
        ({**base, "executor": "lsf"}, "unknown executor"),
        ({**base, "tasks": ["no_such_task"]}, "unknown task"),
        ({**base, "profile": {"base": "demo", "resolution": 64}}, "needs its own `name`"),
        ({**base, "slurm": {"gpus": 2}}, "`slurm:` takes"),
        ({"data": "prepared"}, "no checkpoints"),
    ]:
        with pytest.raises(CxrbenchError, match=message):
            config_from_mapping(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"checkpoints": "random"},
            r"`checkpoints` must be a list.*'random'",
        ),  # not 6 one-letter checkpoints
        ({"checkpoints": {"spec": "random"}}, "`checkpoints` must be a list"),
        ({"data": 5}, "`data` must be a path"),
        ({"runs_dir": ["a", "b"]}, "`runs_dir` must be a path"),
        ({"tasks": 5}, "`tasks` must be"),
        ({"amp": "false"}, "`amp` must be true or false, got 'false'"),  # bool('false') is True
        ({"feature_cache": 0}, "`feature_cache` must be true or false"),
        ({"slurm": {"time_min": "4h"}}, r"`slurm\.time_min` must be an integer of 1 or more, got '4h'"),
        ({"slurm": {"mem_gb": -1}}, r"`slurm\.mem_gb` must be an integer of 1"),
        ({"slurm": {"partition": 3}}, r"`slurm\.partition` must be a string"),
    ],
)
def test_config_values_of_the_wrong_yaml_type_are_one_message(change, message):
    """YAML hands over whatever type was written: each mistake is a CxrbenchError naming the key (was a
    TypeError traceback, or silently another setting)."""
    base = {"checkpoints": ["random"], "data": "prepared"}
    with pytest.raises(CxrbenchError, match=message):
        config_from_mapping({**base, **change})
    assert config_from_mapping({**base, "slurm": {"gpus_per_job": 0}}).cluster.gpus_per_job == 0


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    cluster = ClusterOptions(partition="gpu", account="lab", gpus_per_job=2, cpus_per_job=12, mem_gb=64,
                             time_min=90, array_parallelism=16)  # fmt: skip
    plan = sweep.SweepPlan(
        SweepConfig([RANDOM], tmp_path, tmp_path / "runs", executor="slurm", cluster=cluster),
        TINY,
        [],
        [],
        1,
        1,
        12,
    )
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CxrbenchError, match="sbatch and srun"):
        sweep.make_submitit_executor(plan)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    params = sweep.make_submitit_executor(plan)._executor.parameters
    assert (params["partition"], params["account"], params["gpus_per_node"], params["cpus_per_task"]) == (
        "gpu",
        "lab",
        2,
        12,
    )
    assert (params["time"], params["array_parallelism"], params["mem"]) == (90, 16, "64GB")


def test_a_logs_dir_is_claimed_before_submitit_writes_into_it(prepared_root, tmp_path):
    """`--logs-dir` (submitit's job folders) follows the output-folder rule: a user's folder is
    refused before any job; a new one is marked; one holding submitit's job folders is accepted."""
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's file")
    with pytest.raises(CxrbenchError, match=r"mine"):
        planning.plan_sweep(_config(prepared_root, tmp_path / "runs", "submitit-local", logs_dir=foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "logs"
    planning.plan_sweep(_config(prepared_root, tmp_path / "runs", "submitit-local", logs_dir=fresh))
    assert (fresh / SWEEP_LOGS.marker).is_file()
    old = tmp_path / "old_logs" / "4242"
    old.mkdir(parents=True)
    (old / "4242_submitted.pkl").write_bytes(b"")
    planning.plan_sweep(_config(prepared_root, tmp_path / "runs", "slurm", logs_dir=old.parent))
    planning.plan_sweep(
        _config(prepared_root, tmp_path / "runs2", "debug", logs_dir=foreign)
    )  # debug writes no logs
