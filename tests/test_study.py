"""`cxrbench study uniformity` reduced: two methods, two tasks, tiny pre-training, on phantom data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tiny_profiles import TINY_PRETRAIN, runs_test_metrics

from cxrbench.demo import DemoPaths, ensure_data
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.tasks import get_profile, select_tasks
from cxrbench.study import CONTROL, DEMO_SKIPPED_TASKS, default_tasks, run_uniformity_study, tasks_note

TINY_EVAL = dataclasses.replace(
    get_profile("demo"),
    name="test-study",
    resolution=64,
    max_epochs=2,
    warmup_steps=2,
    default_seeds=2,
    max_train_images=16,
    max_eval_images=12,
)
SIZES = {"covid_rural": 30, "rsna": 40, "mimic_cxr": 60}
N_BOOT = 200


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    paths = DemoPaths(tmp_path_factory.mktemp("study_data"))
    ensure_data(paths, tuple(SIZES), SIZES, log=lambda m: None)
    return paths.prepared


def _independent_counts(runs_dir, methods, alpha=0.05):
    """k of N per method from the run records: means and paired bootstrap replicates, counted here."""
    from cxrbench.leaderboard.aggregate import summarize_records
    from cxrbench.protocol.records import scan_records

    summary = summarize_records(scan_records([runs_dir]).records, n_boot=N_BOOT, n_boot_detection=N_BOOT)
    means = {(r.encoder, r.task_id): float(r.mean) for r in summary.table.itertuples()}
    tasks = sorted({t for _, t in means})
    counts = {}
    for method in methods:
        k = n = 0
        for task in tasks:
            mine, theirs = means.get((method, task), np.nan), means.get((CONTROL, task), np.nan)
            if not (np.isfinite(mine) and np.isfinite(theirs)):
                continue
            n += 1
            diff = summary.replicates[(method, task)] - summary.replicates[(CONTROL, task)]
            diff = diff[np.isfinite(diff)]
            p = (1 + np.sum(diff <= 0)) / (1 + diff.size)
            k += int(mine > theirs and p < alpha)
        counts[method] = (k, n)
    return counts


@pytest.fixture(scope="module")
def two_workers(prepared, tmp_path_factory):
    """The tiny study with two evaluating processes (this one and a spawned worker)."""
    out = tmp_path_factory.mktemp("two_workers") / "study"
    kwargs = dict(
        methods=(CONTROL, "uniformity_prior"),
        tasks=select_tasks("covid_linear,rsna_seg_linear_10"),
        pretrain_profile=dataclasses.replace(TINY_PRETRAIN, max_epochs=1),
        eval_profile=TINY_EVAL,
        analysis_dataset="covid_rural",
        analysis_images=8,
        n_boot=N_BOOT,
        log=lambda m: None,
    )
    return out, kwargs, run_uniformity_study(prepared, out, workers=2, **kwargs)


def test_study_counts_match_records_and_rerun_reuses_work(prepared, two_workers):
    out, kwargs, result = two_workers
    text = result.report.read_text()
    assert "NOT medical results" in text
    k, n = result.counts["uniformity_prior"]
    assert n == 2
    assert f"| uniformity_prior | {k} of {n} |" in text
    assert result.counts == _independent_counts(out / "runs", ["uniformity_prior"])
    assert (out / "leaderboard" / "leaderboard.md").exists() and result.correlation.exists()
    records = sorted((out / "runs").rglob("run-*.json"))
    assert len(records) == 2 * 2 * 2  # methods x tasks x seeds
    stamps = {p: p.stat().st_mtime_ns for p in [*records, *(out / "pretrained").rglob("encoder.safetensors")]}

    messages = []
    again = run_uniformity_study(prepared, out, workers=1, **{**kwargs, "log": messages.append})
    assert sum("reusing" in m for m in messages) == 4  # 2 pre-trainings + 2 analyses reused
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again.counts == result.counts


def test_one_worker_gives_the_records_of_two(prepared, two_workers, tmp_path):
    """Every run seeds itself and every process runs one torch thread: the split changes no number."""
    out, kwargs, result = two_workers
    alone = run_uniformity_study(prepared, tmp_path / "study", workers=1, **kwargs)
    two = runs_test_metrics(out)
    assert len(two) == 8 and runs_test_metrics(tmp_path / "study") == two
    assert alone.counts == result.counts


def test_demo_profile_skips_the_100_percent_rsna_tasks_by_default():
    demo, full = default_tasks("demo"), default_tasks("full")
    assert len(full) == 18 and len(demo) == 15
    assert {t.task_id for t in full} - {t.task_id for t in demo} == set(DEMO_SKIPPED_TASKS)
    assert tasks_note(demo) == (
        "Tasks: 15 of 18; not evaluated: rsna_yolo_finetune_100, rsna_yolo_frozen_100, rsna_seg_linear_100."
    )
    assert tasks_note(full) == "Tasks: all 18."


def test_study_refuses_a_foreign_folder_and_a_missing_control(prepared, tmp_path):
    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(CxrbenchError, match="not a cxrbench study folder"):
        run_uniformity_study(prepared, tmp_path, methods=(CONTROL, "uniformity_prior"), log=lambda m: None)
    with pytest.raises(CxrbenchError, match="global_attention"):
        run_uniformity_study(prepared, tmp_path / "new", methods=("uniformity_prior",), log=lambda m: None)
    assert not (tmp_path / "new").exists()
