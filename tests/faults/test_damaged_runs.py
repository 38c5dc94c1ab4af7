"""Fault classes: damaged predictions files and damaged or old run records in a runs dir, and the exit
codes of runs that fail (1) next to refused input (2)."""

from __future__ import annotations

import json
import shutil

import pytest

from cxrbench.protocol.record_schema import SCHEMA_VERSION
from cxrbench.protocol.records import read_record, scan_records

from .helpers import folder_digest, run_cli, write_seg_run

DAMAGES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "random bytes": lambda p: p.write_bytes(bytes(range(256)) * 8),
    "empty": lambda p: p.write_bytes(b""),
    "missing": lambda p: p.unlink(),
}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_rescore_reports_each_damaged_predictions_file_and_continues(tmp_path, damage):
    runs = tmp_path / "runs"
    paths = [write_seg_run(runs, "enc", seed) for seed in range(3)]
    broken = paths[1].with_suffix(".npz")
    DAMAGES[damage](broken)
    for path in (paths[0], paths[2]):  # values to restore: rescore must still reach these runs
        record = json.loads(path.read_text())
        record["test"]["dice"] = 0.123
        path.write_text(json.dumps(record))
    broken_record = paths[1].read_bytes()
    result = run_cli("rescore", runs)
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(
        result.exception, SystemExit
    )
    named = [line for line in _lines(result.output) if broken.name in line]
    assert len(named) == 1, result.output
    if damage == "missing":
        assert result.exit_code == 0 and named[0].startswith("warning:")  # nothing to read: skipped
    else:
        assert result.exit_code == 1 and named[0].startswith("damaged"), result.output
        assert "1 run(s) not re-scored" in result.output
    assert "2 record(s) re-scored" in result.output
    assert paths[1].read_bytes() == broken_record  # the damaged run's record is left as it was
    restored = [json.loads(p.read_text())["test"]["dice"] for p in (paths[0], paths[2])]
    assert 0.123 not in restored
    assert len(scan_records(runs).records) == 3  # no record lost or duplicated


def test_damaged_and_old_records_are_one_line_each_in_leaderboard_and_rescore(tmp_path):
    runs = tmp_path / "runs"
    good = [write_seg_run(runs, "enc", seed) for seed in range(2)]
    not_json = runs / "enc" / "rsna_seg_linear_1" / "run-notjson.json"
    not_json.write_text('{"run_id": "abc", "schema_')
    missing_keys = runs / "enc" / "rsna_seg_linear_1" / "run-missing.json"
    missing_keys.write_text(json.dumps({"run_id": "x", "schema_version": 2}))
    old = json.loads(good[1].read_text())  # a record as schema version 1 wrote it
    for key in ("traceback", "sweep"):
        del old[key]
    old["checkpoint"]["sha256"] = old["checkpoint"].pop("identity")
    old["schema_version"] = 1
    good[1].write_text(json.dumps(old))
    shutil.copytree(runs, tmp_path / "runs_copy")
    before = folder_digest(runs)

    def board(folder):
        return run_cli("leaderboard", "--runs-dir", folder, "--out", tmp_path / "board", "--no-plots",
                       "--no-overlays", "--n-boot", "0", "--n-boot-detection", "0")  # fmt: skip

    # the old record was scored with older metric definitions: refused, naming the command that fixes it
    refused = board(runs)
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert "cxrbench rescore" in refused.output and good[1].name in refused.output
    assert folder_digest(runs) == before  # the leaderboard reads; it never rewrites a record

    copy = tmp_path / "runs_copy"
    rescore = run_cli("rescore", copy)
    assert rescore.exit_code == 0 and "Traceback" not in rescore.output, rescore.output
    for bad in (not_json, missing_keys):
        assert len([line for line in _lines(rescore.output) if bad.name in line]) == 1, rescore.output
    assert "1 record(s) re-scored" in rescore.output  # the old record, rewritten in the current version
    assert json.loads((copy / good[1].relative_to(runs)).read_text())["schema_version"] == SCHEMA_VERSION
    with pytest.warns(UserWarning, match="skipping"):
        assert len(scan_records(copy).records) == 2
    accepted = board(copy)
    assert accepted.exit_code == 0 and "Traceback" not in accepted.output, accepted.output
    for bad in (not_json, missing_keys):
        assert len([line for line in _lines(accepted.output) if bad.name in line]) == 1, accepted.output


@pytest.mark.parametrize("checkpoint", ["resnet50.pt", 7, ["a", "b"]])
def test_an_old_record_with_a_mistyped_checkpoint_is_one_line_not_a_traceback(tmp_path, checkpoint):
    """Version 1 records are upgraded on read; one whose `checkpoint` is not an object is skipped with
    one line naming it (in `leaderboard`, `rescore` and the evaluate-side reader), like any damaged one."""
    runs = tmp_path / "runs"
    good = write_seg_run(runs, "enc", 0)
    old = json.loads(good.read_text())
    old.update(schema_version=1, checkpoint=checkpoint)
    bad = good.with_name("run-old.json")
    bad.write_text(json.dumps(old))
    before = folder_digest(runs)
    with pytest.warns(UserWarning, match=r"run-old\.json: run record field 'checkpoint'"):
        assert len(scan_records(runs).records) == 1
    assert read_record(bad) is None  # evaluate re-runs it instead of crashing
    rescore = run_cli("rescore", runs)
    assert rescore.exit_code == 0 and rescore.exception is None, rescore.output
    assert len([line for line in _lines(rescore.output) if bad.name in line]) == 1, rescore.output
    assert bad.read_bytes() == json.dumps(old).encode() and folder_digest(runs).keys() == before.keys()


def test_records_of_a_newer_cxrbench_are_refused_not_overwritten(tmp_path):
    runs = tmp_path / "runs"
    path = write_seg_run(runs, "enc", 0)
    record = json.loads(path.read_text())
    record["schema_version"] = 99
    path.write_text(json.dumps(record))
    before = folder_digest(runs)
    for args in (["rescore", runs], ["leaderboard", "--runs-dir", runs, "--out", tmp_path / "board"]):
        result = run_cli(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "newer cxrbench" in result.output and str(path) in result.output
    assert folder_digest(runs) == before


def test_evaluate_exits_1_when_a_run_failed_and_0_when_all_are_ok(prepared_root, tmp_path, monkeypatch):
    import cxrbench.protocol.runner as runner
    from cxrbench.protocol.tasks import TASKS_BY_ID

    status = {"value": "failed"}

    def fake_evaluate(checkpoint, tasks, options, reporter=None):
        record = json.loads(write_seg_run(options.runs_dir, options.encoder, 0).read_text())
        record["status"] = status["value"]
        return [runner.TaskOutcome(TASKS_BY_ID["covid_linear"], 1e-3, [record])]

    monkeypatch.setattr(runner, "evaluate_checkpoint", fake_evaluate)
    args = ["evaluate", "random", "--data", prepared_root, "--tasks", "covid_linear", "--arch", "resnet18",
            "--runs-dir", tmp_path / "runs"]  # fmt: skip
    failed = run_cli(*args)
    assert failed.exit_code == 1 and "1 run(s) failed" in failed.output, failed.output
    status["value"] = "ok"
    assert run_cli(*args).exit_code == 0


def test_pretrain_whose_loss_diverges_exits_1(prepared_root, tmp_path, monkeypatch):
    import cxrbench.baselines.training as training
    from cxrbench.errors import RunFailedError

    def diverges(*args, **kwargs):
        raise RunFailedError("convirt: the training loss became nan in epoch 1")

    monkeypatch.setattr(training, "pretrain", diverges)
    result = run_cli("pretrain", "convirt", "--data", prepared_root / "mimic_cxr", "--out", tmp_path / "pt")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = _lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and "became nan" in lines[0]
