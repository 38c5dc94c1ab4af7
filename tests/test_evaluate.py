"""The protocol engine end to end on phantom data (demo profile, CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tiny_profiles import FAST_EVAL
from typer.testing import CliRunner

from cxrbench.cli.app import app
from cxrbench.encoders import ResNetEncoder
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.record_schema import SCHEMA_VERSION
from cxrbench.protocol.records import read_record
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import PROFILES, TASKS, TASKS_BY_ID, get_profile, protocol_hash, select_tasks
from cxrbench.protocol.training import train_run

DEMO = get_profile("demo")
FAST = FAST_EVAL


def test_registry_matches_protocol_table():
    assert len(TASKS) == 18 and len(TASKS_BY_ID) == 18
    t = TASKS_BY_ID["rsna_yolo_frozen_10"]
    assert (t.batch_size, t.default_lr, t.lr_grid, t.max_epochs, t.patience) == (64, 1e-3, (1e-3,), 100, 10)
    t = TASKS_BY_ID["covid_unet_finetune"]
    assert (t.mode, t.warmup_steps, t.batch_size) == ("finetune", 20, 8)
    assert TASKS_BY_ID["nih_seg_linear"].lr_grid == (1e-1, 3e-2, 1e-2)
    assert {t.metric for t in TASKS if t.dataset == "object_cxr" and t.head == "yolo"} == {"froc"}
    assert sum(t.mode == "finetune" for t in TASKS) == 6
    assert protocol_hash(PROFILES["full"]) != protocol_hash(PROFILES["demo"])
    assert [t.task_id for t in select_tasks("covid_rural")] == [
        "covid_unet_finetune",
        "covid_unet_frozen",
        "covid_linear",
    ]


def _options(prepared_root, runs, name="random", profile=FAST, **kw):
    return EvaluateOptions(
        prepared_root, runs, name, profile, seeds=kw.pop("seeds", 1), arch="resnet18", **kw
    )


@pytest.mark.parametrize(
    "task_id",
    [
        "rsna_seg_linear_10",
        "rsna_yolo_frozen_10",
        "rsna_yolo_finetune_1",
        "covid_unet_finetune",
        "siim_unet_frozen",
        "object_yolo_finetune",
        "object_seg_linear",
        "nih_seg_linear",
    ],
)
def test_every_task_type_runs_end_to_end(prepared_root, tmp_path, task_id):
    outcome = evaluate_checkpoint("random", select_tasks(task_id), _options(prepared_root, tmp_path))[0]
    record = outcome.records[-1]
    assert record["status"] == "ok", record.get("error")
    metric = record["metric"]
    assert 0.0 <= record["test"][metric] <= 1.0 or np.isnan(record["test"][metric])
    files = list((tmp_path / "random" / task_id).glob("*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    for key in (
        "run_id",
        "encoder",
        "task_id",
        "metric",
        "status",
        "seed",
        "lr",
        "val",
        "test",
        "test_per_image",
        "history",
        "wall_time_s",
        "checkpoint",
        "protocol_hash",
        "profile",
        "versions",
        "git_commit",
    ):
        assert key in saved
    assert (
        saved["test_per_image"] == {} and saved["per_image_sidecar"]["n_images"] == saved["n_images"]["test"]
    )
    assert len(read_record(files[0])["test_per_image"]["image_ids"]) == saved["n_images"]["test"]
    assert isinstance(saved["head_parameters"], int) and saved["head_parameters"] > 0
    if TASKS_BY_ID[task_id].head == "unet":  # the reference ResUNet on a ResNet-18, one class
        assert saved["head_parameters"] == 86_699_329
    assert (files[0].with_suffix(".npz")).exists()
    if TASKS_BY_ID[task_id].mode == "frozen":
        assert saved["feature_cache"] is True


def _train(prepared_root, task_id, profile, lr=None, use_cache=True, seed=0, encoder=None):
    task = profile.apply(TASKS_BY_ID[task_id])
    ds = open_task_dataset(prepared_root, task.dataset)
    data = {s: load_task_split(ds, task, s, profile) for s in ("train", "val", "test")}
    torch.manual_seed(0)
    encoder = encoder or ResNetEncoder("resnet18")
    return train_run(
        task,
        encoder,
        len(ds.classes),
        data,
        lr or task.default_lr,
        seed,
        profile.resolution,
        torch.device("cpu"),
        use_feature_cache=use_cache,
    )


def test_feature_cache_gives_the_same_predictions(prepared_root):
    cached = _train(prepared_root, "covid_linear", FAST, use_cache=True)
    direct = _train(prepared_root, "covid_linear", FAST, use_cache=False)
    assert cached.used_feature_cache and not direct.used_feature_cache
    for key in ("intersection", "pred_sum", "gt_sum"):
        assert cached.test_per_image[key] == direct.test_per_image[key]
    np.testing.assert_allclose(
        [h["val_loss"] for h in cached.history], [h["val_loss"] for h in direct.history], rtol=1e-4
    )


def test_trained_head_beats_untrained_head(prepared_root):
    learn = dataclasses.replace(FAST, resolution=128, max_epochs=8, patience=8)
    untrained = _train(prepared_root, "covid_linear", dataclasses.replace(learn, max_epochs=0))
    # lr 1e-1 (the top of the linear probes' grids): with the reference's Dice loss (classes pooled, no
    # smoothing) 3e-2 gains only 0.047 test Dice on these 12 test images in 8 epochs, 1e-1 gains 0.062
    trained = _train(prepared_root, "covid_linear", learn, lr=1e-1)
    assert untrained.best_epoch == 0
    # phantom COVID opacities are small (about 2% of the pixels), so Dice stays low at this scale:
    # the trained probe must at least improve on the untrained one by half
    for split in ("val", "test"):
        before, after = getattr(untrained, split)["dice"], getattr(trained, split)["dice"]
        assert after > 1.5 * before and after > before + 0.02, (split, before, after)


def test_plateau_schedule_really_reduces_lr(prepared_root):
    # A tiny lr keeps the validation loss flat: after PLATEAU_PATIENCE + 1 flat epochs the lr halves,
    # and it stays halved (the reference reset it every batch, silently disabling the schedule).
    prof = dataclasses.replace(FAST, max_epochs=7, patience=10)
    result = _train(prepared_root, "covid_linear", prof, lr=1e-6)
    lrs = [h["lr"] for h in result.history]
    assert lrs[:4] == [pytest.approx(1e-6)] * 4
    assert lrs[4:] == [pytest.approx(5e-7)] * 3


def test_nan_loss_is_recorded_as_failed_and_others_continue(prepared_root, tmp_path, monkeypatch):
    import cxrbench.protocol.heads.segmentation as segmentation

    real = segmentation.soft_dice_loss
    monkeypatch.setattr(
        segmentation, "soft_dice_loss", lambda logits, target: real(logits, target) * float("nan")
    )
    outcomes = evaluate_checkpoint(
        "random", select_tasks("covid_linear,rsna_yolo_frozen_10"), _options(prepared_root, tmp_path)
    )
    by_task = {o.task.task_id: o.records[-1] for o in outcomes}
    assert (
        by_task["covid_linear"]["status"] == "failed"
        and "loss became nan" in by_task["covid_linear"]["error"]
    )
    assert by_task["rsna_yolo_frozen_10"]["status"] == "ok"
    monkeypatch.setattr(segmentation, "soft_dice_loss", real)
    again = evaluate_checkpoint("random", select_tasks("covid_linear"), _options(prepared_root, tmp_path))
    assert again[0].records[-1]["status"] == "ok"  # failed runs are retried, replacing the failed record
    assert len(list((tmp_path / "random" / "covid_linear").glob("*.json"))) == 1


def test_lr_grid_search_then_seeds(prepared_root, tmp_path):
    prof = dataclasses.replace(FAST, max_lrs=None, max_epochs=2)
    outcome = evaluate_checkpoint(
        "random", select_tasks("covid_linear"), _options(prepared_root, tmp_path, profile=prof, seeds=2)
    )[0]
    phases = [(r["phase"], r["lr"], r["seed"]) for r in outcome.records]
    assert phases[:4] == [("lr_search", lr, 0) for lr in (3e-2, 1e-2, 3e-3, 1e-3)]
    best = max(outcome.records[:4], key=lambda r: r["val"]["dice"])["lr"]  # first of equals wins
    assert outcome.lr == best and phases[4:] == [("final", best, 0), ("final", best, 1)]
    assert len({r["run_id"] for r in outcome.records}) == 6


def test_rerun_skips_finished_runs(prepared_root, tmp_path):
    opts = _options(prepared_root, tmp_path, seeds=2)
    first = evaluate_checkpoint("random", select_tasks("covid_linear"), opts)[0].records
    second = evaluate_checkpoint("random", select_tasks("covid_linear"), opts)[0].records
    assert [r["run_id"] for r in first] == [r["run_id"] for r in second]


def test_kill_and_resume_evaluation(prepared_root, tmp_path):
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "cxrbench.cli",
        "evaluate",
        "random",
        "--data",
        str(prepared_root),
        "--tasks",
        "covid_linear,rsna_seg_linear_10",
        "--profile",
        "demo",
        "--seeds",
        "2",
        "--runs-dir",
        str(runs),
        "--arch",
        "resnet18",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(runs.glob("random/*/*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "evaluation exited before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: json.loads(p.read_text())["run_id"] for p in runs.glob("random/*/*.json")}
    assert 1 <= len(before) < 4
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    after = {p: json.loads(p.read_text()) for p in runs.glob("random/*/*.json")}
    assert len(after) == 4 and all(r["status"] == "ok" for r in after.values())
    assert all(after[p]["run_id"] == run_id for p, run_id in before.items())  # finished runs untouched
    assert not list(runs.rglob("*.tmp"))


def test_cli_bad_checkpoint_is_one_clear_error(tmp_path, prepared_root):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    result = CliRunner().invoke(
        app, ["evaluate", str(bad), "--data", str(prepared_root), "--profile", "demo"]
    )
    assert result.exit_code == 2
    assert "error" in result.output and "Traceback" not in result.output


def test_cli_missing_prepared_dataset_names_prepare_command(tmp_path):
    result = CliRunner().invoke(
        app,
        ["evaluate", "random", "--data", str(tmp_path), "--tasks", "siim_unet_frozen", "--arch", "resnet18"],
    )
    assert result.exit_code == 2
    assert "cxrbench prepare siim" in result.output


def test_cli_tasks_json():
    result = CliRunner().invoke(app, ["tasks", "--json"])
    payload = json.loads(result.output)
    assert len(payload["tasks"]) == 18 and payload["protocol_hash"] == protocol_hash(PROFILES["full"])


def test_cli_error_keeps_bracketed_paths_readable(tmp_path):
    data = tmp_path / "data [v2]"
    result = CliRunner().invoke(
        app, ["evaluate", "random", "--data", str(data), "--tasks", "covid_linear", "--arch", "resnet18"]
    )
    assert result.exit_code == 2
    assert "data [v2]" in result.output.replace("\n", "")


def test_records_written_before_schema_2_are_skipped_read_and_upgraded(prepared_root, tmp_path):
    from cxrbench.protocol.record_schema import RunRecord
    from cxrbench.protocol.records import scan_records
    from cxrbench.protocol.rescore import rescore_runs

    opts = _options(prepared_root, tmp_path)
    (first,) = evaluate_checkpoint("random", select_tasks("covid_linear"), opts)[0].records
    assert first["checkpoint"]["identity"] == "random:resnet18" and first["checkpoint"]["sha256"] is None
    every = set(RunRecord.__required_keys__) | set(RunRecord.__optional_keys__) - {"rescored"}
    assert set(first) == every and first["sweep"] is None
    path = tmp_path / "random" / "covid_linear" / f"run-{first['run_key']}.json"  # the final run's record
    old = json.loads(path.read_text())  # rewrite it as version 1 wrote it
    for key in ("traceback", "sweep"):
        del old[key]
    old["checkpoint"]["sha256"] = old["checkpoint"].pop("identity")
    old["schema_version"] = 1
    path.write_text(json.dumps(old))
    (again,) = evaluate_checkpoint("random", select_tasks("covid_linear"), opts)[0].records
    assert again["run_id"] == first["run_id"] and json.loads(path.read_text()) == old  # skipped, untouched
    assert scan_records(tmp_path).upgraded == [path]
    assert rescore_runs(tmp_path) == 1
    upgraded = json.loads(path.read_text())
    assert upgraded["schema_version"] == SCHEMA_VERSION and upgraded["checkpoint"] == first["checkpoint"]
    # rescored with this cxrbench's metric definitions: the same values, the current metrics version
    assert upgraded["test"] == first["test"] and upgraded["metrics_version"] == first["metrics_version"]
    upgraded["schema_version"] = SCHEMA_VERSION + 1  # a newer cxrbench's record is refused, never overwritten
    path.write_text(json.dumps(upgraded))
    with pytest.raises(CxrbenchError, match="newer cxrbench"):
        evaluate_checkpoint("random", select_tasks("covid_linear"), opts)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION + 1
