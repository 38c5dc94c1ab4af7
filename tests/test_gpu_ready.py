"""GPU-ready loops, checked on the CPU: loader and memory-format policy, evaluation batch sizing under
out-of-memory, loss values read once per pass, `--compile` recorded outside the protocol hash."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tiny_profiles import FAST_EVAL

import cxrbench.protocol.training as training
from cxrbench.encoders import ResNetEncoder
from cxrbench.protocol.batch_loader import SplitLoader
from cxrbench.protocol.eval_batch import CPU_EVAL_BATCH, CUDA_EVAL_BATCH, BatchSizer
from cxrbench.protocol.records import read_record
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.task_data import TaskSplit, load_task_split, open_task_dataset
from cxrbench.protocol.tasks import TASKS_BY_ID, select_tasks
from cxrbench.protocol.training import TrainingDiverged, train_run
from cxrbench.runtime import LoaderSettings, loader_settings, memory_format
from cxrbench.sweep.config import config_from_mapping
from cxrbench.sweep.planning import plan_sweep, stage1_jobs

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a device object only: nothing here runs on a GPU
FAST = FAST_EVAL


def test_loader_settings_keep_the_cpu_as_it_was_and_size_cuda_from_the_cores():
    assert loader_settings(CPU) == LoaderSettings(0, False)
    assert loader_settings(CPU, cpu_count=64) == LoaderSettings(0, False)
    assert loader_settings(CUDA, cpu_count=16) == LoaderSettings(4, True)
    assert loader_settings(CUDA, cpu_count=3) == LoaderSettings(2, True)  # one core left to training
    assert loader_settings(CUDA, cpu_count=1) == LoaderSettings(0, True)
    assert memory_format(CPU) == torch.contiguous_format
    assert memory_format(CUDA) == torch.channels_last


def _fake_oom_work(limit: int, seen: list[tuple[int, int]]):
    def work(part: slice) -> list[int]:
        if part.stop - part.start > limit:
            raise torch.OutOfMemoryError(f"fake: {part.stop - part.start} images do not fit")
        seen.append((part.start, part.stop))
        return list(range(part.start, part.stop))

    return work


def test_batch_sizer_halves_on_out_of_memory_and_keeps_the_size_that_fitted():
    sizer = BatchSizer(64, adaptive=True)
    seen: list[tuple[int, int]] = []
    results = sizer.run(50, _fake_oom_work(10, seen))
    assert [i for part in results for i in part] == list(range(50))  # every item once, in order
    assert sizer.size == 8  # 64 -> 32 -> 16 -> 8 fits
    assert all(stop - start <= 8 for start, stop in seen)
    again: list[tuple[int, int]] = []
    sizer.run(20, _fake_oom_work(10, again))
    assert again[0] == (0, 8)  # the next pass starts at the size that fitted, no retry


def test_batch_sizer_off_cuda_never_retries_and_a_single_image_that_does_not_fit_fails():
    assert (BatchSizer.for_device(CPU).size, BatchSizer.for_device(CPU).adaptive) == (CPU_EVAL_BATCH, False)
    assert (BatchSizer.for_device(CUDA).size, BatchSizer.for_device(CUDA).adaptive) == (CUDA_EVAL_BATCH, True)
    with pytest.raises(torch.OutOfMemoryError):
        BatchSizer(64, adaptive=False).run(50, _fake_oom_work(10, []))
    with pytest.raises(torch.OutOfMemoryError):
        BatchSizer(4, adaptive=True).run(3, _fake_oom_work(0, []))


def _split(n: int = 23, size: int = 8) -> TaskSplit:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=gen)
    masks = torch.rand(n, 1, size, size, generator=gen) > 0.5
    return TaskSplit(images, masks, None, [str(i) for i in range(n)], 100.0, 50.0)


def _batches(loader: SplitLoader, split: TaskSplit, seed: int) -> list:
    order = split.batches(5, shuffle=True, generator=torch.Generator().manual_seed(seed), drop_last=True)
    return [(b.index.tolist(), b.images.clone(), b.targets.clone()) for b in loader(order)]


def test_worker_loader_gives_the_batches_of_the_inline_loader_pass_after_pass():
    split = _split()
    inline = SplitLoader(split, LoaderSettings(0, False))
    workers = SplitLoader(split, LoaderSettings(2, False))
    for seed in (0, 1):  # persistent workers read the next pass's plan
        expected, got = _batches(inline, split, seed), _batches(workers, split, seed)
        assert [b[0] for b in got] == [b[0] for b in expected] and len(got) == 4
        for (_, images, masks), (index, want_images, want_masks) in zip(got, expected, strict=True):
            assert torch.equal(images, want_images) and torch.equal(images, split.images[index])
            assert torch.equal(masks, want_masks)
    partial = workers(split.batches(5))  # a pass left early (the warm-up's step limit)
    next(partial)
    assert len(_batches(workers, split, 0)) == 4


def _data(prepared_root, task_id: str, profile=FAST):
    task = profile.apply(TASKS_BY_ID[task_id])
    dataset = open_task_dataset(prepared_root, task.dataset)
    return task, {s: load_task_split(dataset, task, s, profile) for s in ("train", "val", "test")}


def _run(task, data, **kw):
    torch.manual_seed(0)
    return train_run(task, ResNetEncoder("resnet18"), 1, data, task.default_lr, 0, FAST.resolution, CPU, **kw)


def test_worker_loaders_give_the_same_numbers_as_the_cpu_default(prepared_root):
    task, data = _data(prepared_root, "covid_linear", dataclasses.replace(FAST, batch_size=4))
    plain = _run(task, data, use_feature_cache=False)
    loaded = _run(task, data, use_feature_cache=False, loader=LoaderSettings(1, False))
    assert plain.history == loaded.history and plain.test == loaded.test
    for key in ("intersection", "pred_sum", "gt_sum"):
        assert plain.test_per_image[key] == loaded.test_per_image[key]


def _dice_loss_sequence(monkeypatch, outcomes):
    """Training losses follow `outcomes` per call ("nan", "raise", then the real loss)."""
    import cxrbench.protocol.heads.segmentation as segmentation

    real, calls = segmentation.soft_dice_loss, []

    def loss(logits, target):
        calls.append(1)
        what = outcomes[len(calls) - 1] if len(calls) <= len(outcomes) else "real"
        if what == "raise":
            raise ValueError("a step that cannot run on NaN weights")
        value = real(logits, target)
        return value * float("nan") if what == "nan" else value

    monkeypatch.setattr(segmentation, "soft_dice_loss", loss)
    return calls


def test_a_non_finite_loss_fails_the_run_at_the_end_of_its_epoch(prepared_root, monkeypatch):
    task, data = _data(prepared_root, "covid_linear", dataclasses.replace(FAST, batch_size=4))
    calls = _dice_loss_sequence(monkeypatch, ["real", "nan"])
    with pytest.raises(TrainingDiverged, match=r"covid_linear: loss became nan \(lr"):
        _run(task, data)
    assert len(calls) == 4  # the epoch's 4 steps ran; the check came once, before validation


def test_a_step_failing_after_a_non_finite_loss_is_reported_as_the_divergence(prepared_root, monkeypatch):
    task, data = _data(prepared_root, "covid_linear", dataclasses.replace(FAST, batch_size=4))
    _dice_loss_sequence(monkeypatch, ["nan", "raise"])
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        _run(task, data)
    _dice_loss_sequence(monkeypatch, ["real", "raise"])  # without a NaN before it, the error is its own
    with pytest.raises(ValueError, match="cannot run"):
        _run(task, data)


def _options(prepared_root, runs, **kw) -> EvaluateOptions:
    return EvaluateOptions(prepared_root, runs, "random", FAST, seeds=1, arch="resnet18", **kw)


def test_compile_flag_reaches_the_record_but_not_the_run_key(prepared_root, tmp_path, monkeypatch):
    compiled: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        training, "compile_modules", lambda *mods: compiled.append(tuple(type(m).__name__ for m in mods))
    )
    tasks = select_tasks("covid_linear")
    plain = evaluate_checkpoint("random", tasks, _options(prepared_root, tmp_path / "a"))[0].records[0]
    flagged = evaluate_checkpoint("random", tasks, _options(prepared_root, tmp_path / "b", compile=True))[0]
    record = flagged.records[0]
    assert compiled == [("ResNetEncoder", "HeadWithNeck")]  # only the --compile run compiled
    assert plain["compiled"] is False and record["compiled"] is True
    assert (plain["run_key"], plain["protocol_hash"]) == (record["run_key"], record["protocol_hash"])
    assert plain["test"] == record["test"]  # the stand-in compiles nothing: the same numbers
    path = next((tmp_path / "a").rglob("run-*.json"))
    old = json.loads(path.read_text())
    del old["compiled"]  # a record written before the field existed
    path.write_text(json.dumps(old))
    assert read_record(path)["compiled"] is None


def test_the_record_says_where_frozen_features_were_kept(prepared_root, tmp_path):
    """memory under the budget, disk past it (with disk room), none when caching is off; null for
    a record written before the field existed. The numbers are the same whichever."""
    tasks = select_tasks("covid_linear")
    records = {
        kind: evaluate_checkpoint("random", tasks, _options(prepared_root, tmp_path / kind, **options))[
            0
        ].records[0]
        for kind, options in {
            "memory": {},
            "disk": {"cache_budget_bytes": 1},
            "none": {"use_feature_cache": False},
        }.items()
    }
    assert {kind: r["feature_cache_kind"] for kind, r in records.items()} == {k: k for k in records}
    assert [r["feature_cache"] for r in records.values()] == [True, True, False]
    assert records["memory"]["test"] == records["disk"]["test"]
    path = next((tmp_path / "disk").rglob("run-*.json"))
    old = json.loads(path.read_text())
    del old["feature_cache_kind"]
    path.write_text(json.dumps(old))
    assert read_record(path)["feature_cache_kind"] is None


@pytest.mark.slow
def test_torch_compile_on_the_cpu_trains_to_the_same_numbers(prepared_root):
    task, data = _data(prepared_root, "covid_linear", dataclasses.replace(FAST, max_epochs=1))
    eager = _run(task, data, use_feature_cache=False)
    compiled = _run(task, data, use_feature_cache=False, compile=True)
    assert compiled.cost["compiled"] is True and eager.cost["compiled"] is False
    np.testing.assert_allclose(
        [h["val_loss"] for h in compiled.history], [h["val_loss"] for h in eager.history], rtol=1e-3
    )


def test_sweep_compile_setting_reaches_its_jobs_but_not_their_run_keys(prepared_root, tmp_path):
    base = {"checkpoints": [{"spec": "random", "arch": "resnet18"}], "data": str(prepared_root)}
    base |= {"runs_dir": str(tmp_path / "runs"), "tasks": ["covid_linear"], "profile": "demo"}
    plain = stage1_jobs(plan_sweep(config_from_mapping(base)))
    compiled = stage1_jobs(plan_sweep(config_from_mapping({**base, "compile": True})))
    assert [j.compile for j in plain] == [False] * len(plain) and all(j.compile for j in compiled)
    assert [j.run.key for j in plain] == [j.run.key for j in compiled]
