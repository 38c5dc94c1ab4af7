"""Fault class: settings and strictness. A cache or partial work is reused only when it is exactly what
this call would produce; worker errors travel back intact."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import pickle
import signal
import warnings

import pytest

import cxrbench.datasets.prepare as prep
from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.errors import (
    CheckpointError,
    CxrbenchError,
    DamagedCacheError,
    DataError,
    OutputDirError,
)

from .helpers import assert_one_line_error, copy_tree, folder_digest, run_cli

LABELS = "stage_2_train_labels.csv"


def _add_bad_row(raw) -> int:
    path = raw / LABELS
    rows = list(csv.reader(open(path)))
    rows.append([rows[1][0], "abc", "1", "2", "3", "1"])
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return len(rows)


def _quiet_prepare(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prep.prepare(*args, **kwargs)


def test_strict_refuses_a_cache_built_with_skipped_rows(rsna_small, tmp_path):
    raw = copy_tree(rsna_small, tmp_path / "raw")
    bad_row = _add_bad_row(raw)
    out = tmp_path / "out"
    _quiet_prepare(get_adapter("rsna"), raw, out, size=64)
    before = folder_digest(out)
    result = run_cli("prepare", "rsna", raw, out, "--size", "64", "--strict")
    assert_one_line_error(result, "--strict refuses", f"row {bad_row}", "--force")
    assert folder_digest(out) == before
    # the same call without --strict is honestly "nothing to do"
    assert _quiet_prepare(get_adapter("rsna"), raw, out, size=64).reused


def _killed_after_first_chunk(raw: str, out: str) -> None:
    prep.CHUNK_SIZE = 4
    original = prep._process_chunk

    def process_then_die(*args):
        original(*args)
        os.kill(os.getpid(), signal.SIGKILL)

    prep._process_chunk = process_then_die
    _quiet_prepare(get_adapter("rsna"), raw, out, size=64)


def test_strict_never_reuses_chunks_of_a_killed_lenient_prepare(rsna_small, tmp_path, monkeypatch):
    raw = copy_tree(rsna_small, tmp_path / "raw")
    dicoms = sorted((raw / "stage_2_train_images").glob("*.dcm"))
    for path in dicoms[::2]:  # every chunk of 4 meets a broken image, so the first one written holds one
        path.write_bytes(path.read_bytes()[:300])
    out = tmp_path / "out"
    child = mp.get_context("fork").Process(target=_killed_after_first_chunk, args=(str(raw), str(out)))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert list((tmp_path / "out.partial" / "chunks").glob("*.npz"))
    monkeypatch.setattr(prep, "CHUNK_SIZE", 4)
    with pytest.raises(DataError, match=r"stage_2_train_images/.*\.dcm"):
        prep.prepare(get_adapter("rsna"), raw, out, size=64, strict=True)
    with pytest.raises(CxrbenchError, match="not a prepared dataset"):
        open_prepared(out)


def test_changed_raw_files_are_not_silently_reused(rsna_small, tmp_path):
    raw = copy_tree(rsna_small, tmp_path / "raw")
    out = tmp_path / "out"
    first = _quiet_prepare(get_adapter("rsna"), raw, out, size=64)
    next((raw / "stage_2_train_images").glob("*.dcm")).unlink()  # the user removes a bad image
    before = folder_digest(out)
    result = run_cli("prepare", "rsna", raw, out, "--size", "64")
    assert_one_line_error(result, "changed since", "--force")
    assert folder_digest(out) == before
    assert run_cli("prepare", "rsna", raw, out, "--size", "64", "--force").exit_code == 0
    assert sum(open_prepared(out).meta["counts"].values()) == sum(first.counts.values()) - 1


def test_other_settings_are_refused_with_the_difference(rsna_small, tmp_path):
    out = tmp_path / "out"
    _quiet_prepare(get_adapter("rsna"), rsna_small, out, size=64)
    assert_one_line_error(
        run_cli("prepare", "rsna", rsna_small, out, "--size", "96"), "size 64 there, 96 here"
    )


def test_every_error_class_survives_pickling():
    errors = [
        CxrbenchError("plain"),
        DataError("a.csv", "bad value", row=7, expected="a number"),
        DataError("b.dcm", "cannot decode"),
        DamagedCacheError("x.npy: truncated"),
        OutputDirError("refused"),
        CheckpointError("bad checkpoint"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.__dict__ == error.__dict__


def test_strict_with_workers_reports_the_broken_file(rsna_small, tmp_path, monkeypatch):
    raw = copy_tree(rsna_small, tmp_path / "raw")
    broken = sorted((raw / "stage_2_train_images").glob("*.dcm"))[3]
    broken.write_bytes(broken.read_bytes()[:300])
    monkeypatch.setattr(prep, "CHUNK_SIZE", 2)  # several chunks, so the worker pool is used
    with pytest.raises(DataError) as err:
        prep.prepare(get_adapter("rsna"), raw, tmp_path / "lib", size=64, strict=True, workers=2)
    assert err.value.file == str(broken)
    result = run_cli("prepare", "rsna", raw, tmp_path / "cli", "--size", "64", "--strict", "--workers", "2")
    assert_one_line_error(result, broken.name)
