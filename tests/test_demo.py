"""The embedded default end to end, in a reduced form (few images, two tasks, one short pre-training)."""

from __future__ import annotations

import dataclasses

import pytest
from tiny_profiles import runs_test_metrics

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


@pytest.fixture(scope="module")
def parallel_demo(tmp_path_factory):
    """The tiny demo with `random` evaluated in the second process (as on any machine with 2+ cores)."""
    root = tmp_path_factory.mktemp("parallel")
    kwargs = dict(
        profile=TINY,
        tasks=select_tasks("covid_linear,rsna_seg_linear_10"),
        methods=("convirt",),
        phantom_sizes=SIZES,
        pretrain_epochs=1,
        log=lambda m: None,
    )
    messages: list[str] = []
    result = run_demo(root, parallel=True, **{**kwargs, "log": messages.append})
    # the second process's progress reaches the main process's log (its last count: all of it)
    assert messages[-2:] == [
        "done: random (2nd process): task 2 of 2 started, 4 of 4 runs finished",
        "4/4 leaderboard",
    ]
    return root, kwargs, result


def test_demo_runs_end_to_end_and_reuses_work(parallel_demo):
    tmp_path, kwargs, result = parallel_demo
    board = tmp_path / "leaderboard"
    for name in ("markdown", "csv", "html"):
        assert result.paths[name].exists() and result.paths[name].parent == board
    assert "random" in result.markdown and "convirt" in result.markdown
    records = sorted((tmp_path / "runs").rglob("run-*.json"))
    assert len(records) == 2 * 2 * 2  # encoders x tasks x seeds
    stamps = {p: p.stat().st_mtime_ns for p in records}

    messages = []
    run_demo(tmp_path, **{**kwargs, "log": messages.append}, parallel=False)  # logs all the data steps
    assert any("reusing" in m for m in messages)  # pre-training reused
    assert not any(m.startswith(("writing", "preparing")) for m in messages)  # data reused
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "runs").rglob("run-*.json"))} == stamps


def test_one_process_gives_the_numbers_of_two(parallel_demo, tmp_path):
    """One torch thread per process: the split over processes changes no number."""
    root, kwargs, _ = parallel_demo
    run_demo(tmp_path, parallel=False, **kwargs)
    parallel, sequential = runs_test_metrics(root), runs_test_metrics(tmp_path)
    assert len(parallel) == 8 and parallel == sequential
