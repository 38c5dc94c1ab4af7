"""Run keys, the run record schema (versions, validation, upgrade) and the predictions file format."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_write_json
from cxrbench.protocol import metrics
from cxrbench.protocol.predictions import (
    PredictionsError,
    encode_predictions,
    read_predictions,
    write_predictions,
)
from cxrbench.protocol.record_schema import (
    SCHEMA_VERSION,
    RecordError,
    RunRecord,
    UnsupportedVersion,
    checkpoint_info,
    make_record,
    parse_record,
    stale_metrics,
    usable_runs,
    validate_record,
)
from cxrbench.protocol.records import (
    RunSpec,
    check_records,
    read_record,
    record_path,
    run_key,
    scan_records,
    write_record,
)
from cxrbench.protocol.rescore import rescore_predictions, rescore_runs
from cxrbench.protocol.tasks import METRICS_VERSION, get_profile, protocol_hash

FULL = get_profile("full")
SHA = "ab" * 32


def test_run_spec_key_and_path_are_the_ones_written_before_run_spec():
    # Keys computed by the code before RunSpec existed: existing runs directories stay recognised.
    assert (
        run_key(
            "my enc/1", "random:resnet50", "covid_linear", "full", "ce769d85d3bd15ed", "lr_search", 0.01, 0
        )
        == "fc0818479c7b700c0e7482c9"
    )
    assert run_key("convirt", SHA, "rsna_yolo_frozen_10", "full", "ce769d85d3bd15ed", "final", 1e-3, 3) == (
        "a615cf56b58a41db1115ffe1"
    )
    spec = RunSpec("my enc/1", "random:resnet50", "covid_linear", "lr_search", 0.01, 0, FULL)
    p_hash = protocol_hash(FULL)
    assert spec.key == run_key(
        "my enc/1", "random:resnet50", "covid_linear", "full", p_hash, "lr_search", 0.01, 0
    )
    assert spec.record_path(Path("runs")) == Path("runs/my_enc_1/covid_linear") / f"run-{spec.key}.json"
    assert spec.record_path(Path("runs")) == record_path(Path("runs"), "my enc/1", "covid_linear", spec.key)
    assert pickle.loads(pickle.dumps(spec)) == spec and spec.task.task_id == "covid_linear"
    with pytest.raises(ValueError, match="phase"):
        RunSpec("e", SHA, "covid_linear", "search", 0.01, 0, FULL)


def _failed_record() -> RunRecord:
    spec = RunSpec("enc", "random:resnet18", "covid_linear", "final", 0.01, 1, FULL)
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError as exc:
        error = exc
    return make_record(
        spec, checkpoint_info("random", None, spec.identity), device="cpu", outcome=error, wall_time_s=0.5
    )


def test_make_record_fills_every_field_and_identity_is_explicit():
    record = _failed_record()
    # every field, including the preset and cost fields older records lack; `rescored` only after rescore
    assert set(record) == set(RunRecord.__required_keys__) | set(RunRecord.__optional_keys__) - {"rescored"}
    assert record["preprocessing"] is None and record["encoder_parameters"] is None
    assert record["status"] == "failed" and record["error"] == "RuntimeError: CUDA out of memory"
    assert "CUDA out of memory" in record["traceback"] and record["predictions"] is None
    assert record["checkpoint"] == {
        "spec": "random",
        "path": None,
        "identity": "random:resnet18",
        "sha256": None,
    }
    assert checkpoint_info("/c.pt", "/c.pt", SHA)["sha256"] == SHA
    assert validate_record(record) is record


@pytest.mark.parametrize(
    "change, message",
    [
        ({"phase": "search"}, "phase 'search'"),
        ({"status": "done"}, "status 'done'"),
        ({"lr": "0.01"}, "field 'lr'"),
        ({"seed": True}, "field 'seed'"),
        ({"run_id": None}, "field 'run_id'"),
    ],
)
def test_validation_names_the_bad_field(change, message):
    with pytest.raises(RecordError, match=re.escape(message)):
        validate_record({**_failed_record(), **change}, "x.json")
    record = dict(_failed_record())
    del record["encoder"]
    with pytest.raises(RecordError, match=re.escape("x.json: run record without encoder")):
        validate_record(record, "x.json")


def _v1_record(**overrides) -> dict:
    """A record exactly as cxrbench wrote them before schema version 2."""
    record = dict(_failed_record())
    for key in ("traceback", "sweep", "encoder_load", "n_images"):
        record.pop(key)
    record.update(schema_version=1, checkpoint={"path": None, "spec": "random", "sha256": "random:resnet18"})
    record.update(overrides)
    return record


def test_version_1_records_are_read_upgraded_and_rescore_rewrites_them(tmp_path):
    old = tmp_path / "enc" / "covid_linear" / "run-a.json"
    atomic_write_json(old, _v1_record(phase="lr_search"))
    with_file = tmp_path / "enc" / "covid_linear" / "run-b.json"
    atomic_write_json(with_file, _v1_record(checkpoint={"path": "/c.pt", "spec": "c.pt", "sha256": SHA}))
    scan = scan_records(tmp_path)
    by_path = {Path(r["_source"]): r for r in scan.records}
    assert sorted(scan.upgraded) == [old, with_file] and not scan.skipped
    assert by_path[old]["checkpoint"] == {
        "path": None,
        "spec": "random",
        "identity": "random:resnet18",
        "sha256": None,
    }
    assert by_path[with_file]["checkpoint"]["identity"] == by_path[with_file]["checkpoint"]["sha256"] == SHA
    assert by_path[old]["schema_version"] == SCHEMA_VERSION and by_path[old]["traceback"] is None
    assert read_record(old)["checkpoint"]["identity"] == "random:resnet18"
    assert rescore_runs(tmp_path) == 2  # both rewritten in the current version
    rewritten = json.loads(old.read_text())
    assert (
        rewritten["schema_version"] == SCHEMA_VERSION
        and rewritten["checkpoint"]["identity"] == "random:resnet18"
    )
    assert "_source" not in rewritten and rewritten["run_id"] == by_path[old]["run_id"]
    assert scan_records(tmp_path).upgraded == [] and rescore_runs(tmp_path) == 0


def test_version_2_records_carry_the_first_metric_definitions_and_are_refused_when_final():
    current = {**_failed_record(), "status": "ok"}
    assert current["metrics_version"] == METRICS_VERSION and not stale_metrics(current)
    old = {k: v for k, v in current.items() if k != "metrics_version"}
    old["schema_version"] = 2
    upgraded, was_upgraded = parse_record(old)
    assert was_upgraded and upgraded["schema_version"] == SCHEMA_VERSION and upgraded["metrics_version"] == 1
    assert stale_metrics(upgraded) and not stale_metrics({**upgraded, "status": "failed"})
    with pytest.raises(CxrbenchError, match=r"cxrbench rescore RUNS_DIR"):
        check_records([upgraded])
    check_records([{**upgraded, "phase": "lr_search"}])  # only final runs enter a leaderboard
    check_records([{**upgraded, "status": "failed"}])  # a failed run has no values to be stale
    newer = {**current, "metrics_version": METRICS_VERSION + 1}
    with pytest.raises(CxrbenchError, match="newer cxrbench") as info:
        check_records([newer])
    assert "rescore" not in str(info.value)


def test_head_parameters_is_checked_and_older_records_read_it_as_null():
    record = _failed_record()
    assert record["head_parameters"] is None  # the run failed
    older = {k: v for k, v in record.items() if k != "head_parameters"}  # written before the field
    parsed, upgraded = parse_record(older)
    assert parsed["head_parameters"] is None and not upgraded
    assert parse_record({**record, "head_parameters": 86_699_329})[0]["head_parameters"] == 86_699_329
    for bad in (1.5, True, "12"):
        with pytest.raises(RecordError, match="field 'head_parameters'"):
            validate_record({**record, "head_parameters": bad})


@pytest.mark.parametrize(
    "version, message", [(0, "cxrbench evaluate"), (SCHEMA_VERSION + 1, "newer cxrbench"), ("2", "'2'")]
)
def test_unknown_schema_versions_are_refused(tmp_path, version, message):
    path = tmp_path / "enc" / "covid_linear" / "run-a.json"
    atomic_write_json(path, {**_failed_record(), "schema_version": version})
    with pytest.raises(UnsupportedVersion, match=re.escape(str(path))) as info:
        scan_records(tmp_path)
    # No upgrade exists for an unknown version, so the message must not send the user to rescore.
    assert message in str(info.value) and "rescore" not in str(info.value)
    with pytest.raises(UnsupportedVersion, match=message):
        read_record(path)  # evaluate/sweep refuse to overwrite it
    with pytest.raises(UnsupportedVersion):
        parse_record({**_failed_record(), "schema_version": version})


def test_unusable_record_at_a_run_path_is_rerun_not_refused(tmp_path):
    path = tmp_path / "run-a.json"
    path.write_text('{"run_id": "x", "schema_version": 2}')
    assert read_record(path) is None
    assert read_record(tmp_path / "absent.json") is None


def test_usable_runs_is_ok_phase_and_finite():
    def rec(status="ok", phase="final", test=0.5, val=0.5):
        return {
            "status": status,
            "phase": phase,
            "metric": "dice",
            "test": {"dice": test},
            "val": {"dice": val},
        }

    good = rec()
    records = [good, rec(test=math.nan), rec(status="failed"), rec(phase="lr_search"), rec(test=None), None]
    assert usable_runs(records) == [good]
    search = [rec(phase="lr_search", val=0.1), rec(phase="lr_search", val=math.nan), rec(val=0.2)]
    assert usable_runs(search, phase=None, split="val") == [search[0], search[2]]


def test_write_record_refuses_an_invalid_record(tmp_path):
    with pytest.raises(RecordError, match="phase"):
        write_record(tmp_path / "r.json", {**_failed_record(), "phase": "x"})
    assert not (tmp_path / "r.json").exists()


def _seg_batches(rng):
    return [(rng.random((n, 2, 9, 13)) > 0.5, rng.random((n, 2, 9, 13)) > 0.6) for n in (4, 3)]


def _det_batches(rng):
    def boxes(k):
        xy = rng.uniform(0, 50, (k, 2))
        return np.concatenate([xy, xy + 10], axis=1).astype(np.float32)

    batches = []
    for n in (3, 2):
        preds = [(boxes(k), rng.random(k).astype(np.float32)) for k in rng.integers(0, 4, n)]
        batches.append((preds, [boxes(k) for k in rng.integers(0, 3, n)]))
    return batches


@pytest.mark.parametrize("kind", ["dice", "map", "froc"])
def test_predictions_round_trip_and_rescore(tmp_path, kind):
    rng = np.random.default_rng(0)
    batches = _seg_batches(rng) if kind == "dice" else _det_batches(rng)
    n = sum(len(p) for p, _ in batches)
    ids = [f"img{i}" for i in range(n)]
    images = rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)
    arrays = encode_predictions(kind, ids, batches, lambda at: images[at])
    path = tmp_path / "run-a.npz"
    write_predictions(path, arrays)
    back = read_predictions(path, kind)
    assert back.kind == kind and back.image_ids == ids and back.has_overlays
    np.testing.assert_array_equal(back.arrays["overlay_images"], images[back.arrays["overlay_index"]])
    chunks = list(back.chunks(2))
    direct = metrics.merge_per_image([metrics.per_image_stats(kind, p, t) for p, t in batches])
    if kind == "dice":
        np.testing.assert_array_equal(
            np.concatenate([p for p, _ in chunks]), np.concatenate([p for p, _ in batches])
        )
        np.testing.assert_array_equal(
            np.concatenate([t for _, t in chunks]), np.concatenate([t for _, t in batches])
        )
    else:
        flat = [p for batch, _ in batches for p in batch]
        for (boxes, scores), (want_boxes, want_scores) in zip(
            [p for c, _ in chunks for p in c], flat, strict=True
        ):
            np.testing.assert_array_equal(boxes, want_boxes.reshape(-1, 4))
            np.testing.assert_array_equal(scores, want_scores)
    test, per_image = rescore_predictions(path, kind)
    assert test == metrics.aggregate(kind, direct) and per_image["image_ids"] == ids
    # A file written before format_version existed reads the same.
    old = {k: v for k, v in arrays.items() if k != "format_version"}
    np.savez_compressed(tmp_path / "old.npz", **old)
    assert rescore_predictions(tmp_path / "old.npz", kind)[0] == test


def test_unreadable_predictions_are_one_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    arrays = encode_predictions(
        "dice", ["a"] * 7, _seg_batches(rng), lambda at: np.zeros((len(at), 4, 4), np.uint8)
    )
    write_predictions(tmp_path / "p.npz", arrays)
    with pytest.raises(PredictionsError, match="for metric 'dice', the record's metric is 'map'"):
        read_predictions(tmp_path / "p.npz", "map")
    write_predictions(tmp_path / "future.npz", {**arrays, "format_version": np.array(2)})
    with pytest.raises(PredictionsError, match="format_version 2"):
        read_predictions(tmp_path / "future.npz")
    write_predictions(tmp_path / "partial.npz", {k: v for k, v in arrays.items() if k != "gt_masks"})
    with pytest.raises(PredictionsError, match="lacks gt_masks"):
        read_predictions(tmp_path / "partial.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(PredictionsError, match="cannot read predictions file"):
        read_predictions(tmp_path / "bad.npz")
    with pytest.raises(PredictionsError, match="is missing"):
        read_predictions(tmp_path / "absent.npz")


def test_rescore_leaves_records_of_newer_metric_definitions_alone(tmp_path):
    path = tmp_path / "enc" / "covid_linear" / "run-a.json"
    record = {**_failed_record(), "status": "ok", "metrics_version": METRICS_VERSION + 1}
    atomic_write_json(path, record)
    before = path.read_bytes()
    with pytest.warns(UserWarning, match="newer metric definitions"):
        assert rescore_runs(tmp_path) == 0
    assert path.read_bytes() == before
