"""The embedded default end to end, in a reduced form (few images, two tasks, one short pre-training)."""

from __future__ import annotations

import dataclasses

from cxrbench.demo import run_demo
from cxrbench.protocol.tasks import get_profile, select_tasks

TINY = dataclasses.replace(
    get_profile("demo"),
    name="test-demo",
    resolution=64,
    max_epochs=2,
    warmup_steps=2,
    default_seeds=2,
    max_train_images=16,
    max_eval_images=12,
)
SIZES = {"covid_rural": 30, "rsna": 40, "mimic_cxr": 60}


def test_demo_runs_end_to_end_and_reuses_work(tmp_path):
    tasks = select_tasks("covid_linear,rsna_seg_linear_10")
    kwargs = dict(
        profile=TINY,
        tasks=tasks,
        methods=("convirt",),
        phantom_sizes=SIZES,
        pretrain_epochs=1,
        log=lambda m: None,
    )
    result = run_demo(tmp_path, **kwargs)
    board = tmp_path / "leaderboard"
    for name in ("markdown", "csv", "html"):
        assert result.paths[name].exists() and result.paths[name].parent == board
    assert "random" in result.markdown and "convirt" in result.markdown
    records = sorted((tmp_path / "runs").rglob("run-*.json"))
    assert len(records) == 2 * 2 * 2  # encoders x tasks x seeds
    stamps = {p: p.stat().st_mtime_ns for p in records}

    messages = []
    run_demo(tmp_path, **{**kwargs, "log": messages.append})
    assert any("reusing" in m for m in messages)  # pre-training reused
    assert not any(m.startswith(("writing", "preparing")) for m in messages)  # data reused
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "runs").rglob("run-*.json"))} == stamps
