"""The leaderboard on records written by real `evaluate` runs (demo-like profile, phantom data)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from scipy import stats

from cxrbench.leaderboard.report.build import build_leaderboard
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.tasks import get_profile, select_tasks

TINY = dataclasses.replace(
    get_profile("demo"),
    name="test-lb",
    resolution=64,
    max_epochs=2,
    default_seeds=3,
    max_train_images=16,
    max_eval_images=12,
)


@pytest.fixture(scope="module")
def runs(prepared_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("lb_runs")
    torch.manual_seed(123)
    other = root / "tv_resnet18.pt"
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save(state, other)
    tasks = select_tasks("covid_linear,rsna_seg_linear_10,rsna_yolo_frozen_10")  # a detection task too
    for name, spec in (("random", "random"), ("tv18", str(other))):
        options = EvaluateOptions(prepared_root, root / "runs", name, TINY, arch="resnet18")
        evaluate_checkpoint(spec, tasks, options)
    return root


def test_leaderboard_numbers_match_the_records(runs, tmp_path):
    result = build_leaderboard(
        [runs / "runs"], tmp_path / "board", baselines=["random"], n_boot=200, n_boot_detection=50
    )
    table = pd.read_csv(result.paths["csv"])
    measured = table[table["source"] != "published"]
    assert set(measured["encoder"]) == {"random", "tv18"}
    for path in (runs / "runs").glob("*/*"):
        records = [json.loads(p.read_text()) for p in path.glob("run-*.json")]
        values = np.array([r["test"][r["metric"]] for r in records])
        assert len(values) == 3 and len({r["run_id"] for r in records}) == 3
        row = measured[
            (measured["encoder"] == records[0]["encoder"]) & (measured["task_id"] == records[0]["task_id"])
        ].iloc[0]
        half = stats.t.ppf(0.975, df=2) * values.std(ddof=1) / np.sqrt(3)
        assert row["n_runs"] == 3
        assert row["mean"] == pytest.approx(values.mean(), abs=1e-9)
        assert row["ci95_low"] == pytest.approx(values.mean() - half, abs=1e-9)
        assert row["ci95_high"] == pytest.approx(values.mean() + half, abs=1e-9)
        assert row["boot_low"] <= row["boot_high"]
    assert "random" in result.markdown and "tv18" in result.markdown
    assert "published" in result.markdown  # reference rows beside measured ones for the measured tasks
