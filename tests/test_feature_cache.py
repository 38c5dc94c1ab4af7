"""The frozen-feature cache: in memory, memmapped on disk, or none, a frozen task gives the same
predictions and metrics; a task's runs share one encoding; the disk cache lives in a marked folder
cxrbench created and removes; the budgets are options the plan prints."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrbench.cli.app import app
from cxrbench.encoders import ResNetEncoder
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.feature_cache import (
    DISK,
    MEMORY,
    NONE,
    FeatureStore,
    budget_bytes,
    cache_kind,
    encode_all,
)
from cxrbench.protocol.feature_disk import MARKER, PREFIX, OwnedFolder, remove_stale
from cxrbench.protocol.heads import UNetHead, register_head, unregister_head
from cxrbench.protocol.plan import plan_costs, split_sizes
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import PROFILES, TASKS_BY_ID, get_profile
from cxrbench.protocol.training import train_run

TINY = dataclasses.replace(
    PROFILES["demo"], name="test", resolution=64, max_epochs=2, max_train_images=8, max_eval_images=6
)
BUDGETS = {  # (memory budget, disk budget) that force each kind for these tiny splits
    MEMORY: (2**40, 0),
    DISK: (0, 2**40),
    NONE: (0, 0),
}


class SmallUNet(UNetHead):
    """The ResUNet (every encoder stage and the input image) at small widths, for speed."""

    name = "small_unet_cache_test"

    @classmethod
    def build(cls, feature_info, n_classes, image_size):
        return cls(feature_info, n_classes, bridge_width=16, up_widths=(16, 12, 8, 8, 8))


@pytest.fixture(scope="module")
def small_unet():
    register_head(SmallUNet, replace=True)
    yield SmallUNet.name
    unregister_head(SmallUNet.name)


def _task_data(prepared_root, task_id: str, head: str | None = None):
    task = TINY.apply(TASKS_BY_ID[task_id])
    if head is not None:
        task = dataclasses.replace(task, head=head)
    dataset = open_task_dataset(prepared_root, task.dataset)
    return task, {s: load_task_split(dataset, task, s, TINY) for s in ("train", "val", "test")}


def _run(task, data, kind, store, encoder=None, seed=0):
    memory, disk = BUDGETS[kind]
    torch.manual_seed(0)
    return train_run(
        task,
        encoder if encoder is not None else ResNetEncoder("resnet18"),
        1,
        data,
        1e-3,
        seed,
        TINY.resolution,
        torch.device("cpu"),
        cache_budget_bytes=memory,
        cache_disk_budget_bytes=disk,
        feature_store=store,
    )


@pytest.mark.parametrize("task_id", ["covid_linear", "covid_unet_frozen"])
def test_memory_disk_and_no_cache_give_the_same_results(prepared_root, tmp_path, small_unet, task_id):
    head = small_unet if task_id == "covid_unet_frozen" else None
    task, data = _task_data(prepared_root, task_id, head)
    results = {}
    for kind in (MEMORY, DISK, NONE):
        with FeatureStore(tmp_path) as store:
            results[kind] = _run(task, data, kind, store)
        assert results[kind].feature_cache_kind == kind
        assert results[kind].used_feature_cache is (kind != NONE)
    memory, disk, none = results[MEMORY], results[DISK], results[NONE]
    # memory and disk hold the same float32 values: bit-identical training
    assert memory.history == disk.history and memory.test == disk.test and memory.val == disk.val
    assert memory.predictions.keys() == disk.predictions.keys()
    for key, value in memory.predictions.items():
        np.testing.assert_array_equal(value, disk.predictions[key])
    # encoding per step batches the images differently (float rounding only): same predictions
    for key in ("intersection", "pred_sum", "gt_sum"):
        assert memory.test_per_image[key] == none.test_per_image[key]
    for key, value in memory.predictions.items():
        np.testing.assert_array_equal(value, none.predictions[key])
    np.testing.assert_allclose(
        [h["val_loss"] for h in memory.history], [h["val_loss"] for h in none.history], rtol=1e-4
    )
    assert not list(tmp_path.iterdir())  # every store's folder removed


def test_a_task_store_encodes_once_for_all_runs_and_follows_the_weights(prepared_root, tmp_path):
    task, data = _task_data(prepared_root, "covid_linear")
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18")  # the weights `_run` gives a fresh encoder
    calls = []
    encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with FeatureStore(tmp_path) as store:
        first = _run(task, data, DISK, store, encoder)
        encoded = len(calls)
        assert sum(calls) == sum(len(s) for s in data.values())  # each image once
        folder = store.folder
        assert folder.parent == tmp_path and folder.name.startswith(PREFIX)
        assert json.loads((folder / MARKER).read_text())["pid"] == os.getpid()
        again = _run(task, data, DISK, store, encoder)
        assert len(calls) == encoded  # the second run reused the first's features
        assert again.history == first.history and again.test == first.test
        with torch.no_grad():  # other weights: the store encodes again
            next(encoder.parameters()).mul_(0.5)
        _run(task, data, DISK, store, encoder)
        assert len(calls) == 2 * encoded
        assert len(list(folder.glob("*.npy"))) == len(data)  # the first encoding's files are gone
    assert not folder.exists()
    # a fresh store gives the reused features' results
    with FeatureStore(tmp_path) as fresh:
        assert _run(task, data, MEMORY, fresh).test == first.test


def test_a_run_without_a_store_removes_its_folder_even_when_it_fails(prepared_root, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a run's own store writes
    task, data = _task_data(prepared_root, "covid_linear")
    seen = []

    def look(entry):
        (folder,) = tmp_path.glob(PREFIX + "*")
        seen.append((folder / MARKER).exists() and sorted(p.suffix for p in folder.iterdir()))
        raise RuntimeError("interrupted")

    memory, disk = BUDGETS[DISK]
    with pytest.raises(RuntimeError, match="interrupted"):
        train_run(
            task,
            ResNetEncoder("resnet18"),
            1,
            data,
            1e-3,
            0,
            TINY.resolution,
            torch.device("cpu"),
            cache_budget_bytes=memory,
            cache_disk_budget_bytes=disk,
            on_epoch=look,
        )
    assert seen == [[".json", ".npy", ".npy", ".npy"]]  # the marker and one array per split, no .partial
    assert not list(tmp_path.iterdir())


def test_stale_folders_of_ended_processes_are_removed_and_nothing_else(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(ended.stdout)
    stale = OwnedFolder(tmp_path)
    marker = json.loads((stale.path / MARKER).read_text())
    (stale.path / MARKER).write_text(json.dumps({**marker, "pid": dead_pid}))
    unmarked = tmp_path / (PREFIX + "not-ours")
    unmarked.mkdir()
    other_host = tmp_path / (PREFIX + "other-host")
    other_host.mkdir()
    (other_host / MARKER).write_text(json.dumps({**marker, "pid": dead_pid, "host": "elsewhere"}))
    live = OwnedFolder(tmp_path)  # this process: kept
    assert remove_stale(tmp_path) == []  # creating `live` already removed the stale one
    assert not stale.path.exists() and unmarked.exists() and other_host.exists() and live.path.exists()
    live.remove()
    assert not live.path.exists()
    foreign = OwnedFolder.__new__(OwnedFolder)  # a folder without our marker is never removed
    foreign.path = unmarked
    foreign.remove()
    assert unmarked.exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_disk_cache_keeps_the_encoders_dtype_bit_for_bit(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(10, 3, 4, 4, generator=g)

    def encoder(x):
        return {"conv5": (x * 3.7).to(dtype), "conv4": (x[:, :1] - 1).to(dtype)}

    encoder.eval = lambda: None
    args = (encoder, 10, lambda i: images[i], ("conv4", "conv5"), 4, torch.device("cpu"), torch.no_grad)
    memory = encode_all(*args)
    folder = OwnedFolder(tmp_path)
    disk = encode_all(*args, folder=folder, prefix="t")
    for s in ("conv4", "conv5"):
        assert memory[s].dtype == disk[s].dtype == dtype
        assert torch.equal(memory[s], disk[s]) and torch.equal(memory[s], encoder(images)[s])
    assert sorted(p.name for p in folder.path.iterdir()) == [MARKER, "t-conv4.npy", "t-conv5.npy"]
    folder.remove()


def test_cache_kind_follows_the_budgets_and_the_free_space():
    assert cache_kind(10, True, 10, 0) == MEMORY
    assert cache_kind(11, True, 10, 11, lambda: 100) == DISK
    assert cache_kind(11, True, 10, 11, lambda: 5) == NONE  # the disk is fuller than the budget
    assert cache_kind(12, True, 10, 11, lambda: 100) == NONE
    assert cache_kind(1, False, 10, 10) == NONE


def test_bad_budgets_are_refused_with_the_option_name(prepared_root, tmp_path):
    assert budget_bytes("--cache-disk-gb", None, 7) == 7
    assert budget_bytes("--cache-disk-gb", 0.5, 7) == 2**29
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(CxrbenchError, match="--cache-memory-gb must be a finite number"):
            budget_bytes("--cache-memory-gb", bad, 7)
    args = ["random", "--data", str(prepared_root), "--tasks", "covid_linear", "--arch", "resnet18"]
    for command in (["plan", *args, "--no-probe"], ["evaluate", *args, "--runs-dir", str(tmp_path / "r")]):
        result = CliRunner().invoke(app, [*command, "--cache-disk-gb", "-2"], terminal_width=200)
        assert result.exit_code == 2, result.output
        assert "--cache-disk-gb must be a finite number of GiB >= 0" in result.output
    assert not (tmp_path / "r").exists()  # refused before anything was created


def test_plan_shows_the_budgets_and_each_tasks_cache(prepared_root):
    full = get_profile("full")
    tasks = [TASKS_BY_ID[t] for t in ("covid_linear", "covid_unet_finetune", "covid_unet_frozen")]
    sizes = {t.task_id: split_sizes(prepared_root, t, full) for t in tasks}
    info = ResNetEncoder("resnet18").feature_info
    costs = plan_costs(tasks, full, 5, sizes, info, memory_budget_bytes=0, disk_budget_bytes=2**40)
    assert [c.feature_cache for c in costs] == [DISK, "-", DISK]
    small_disk = plan_costs(tasks, full, 5, sizes, info, None, 0, 2**40, lambda: 1)
    assert [c.feature_cache for c in small_disk] == [NONE, "-", NONE]
    linear_bytes = costs[0].cache_bytes
    args = ["plan", "random", "--data", str(prepared_root), "--tasks", "covid_rural", "--arch", "resnet18"]
    limits = ["--cache-memory-gb", str(linear_bytes * 1.5 / 1024**3), "--cache-disk-gb", "2000"]
    result = CliRunner().invoke(app, [*args, "--no-probe", *limits], terminal_width=250)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the console wraps at 80 columns here
    assert "budgets: memory 0.0 GiB (--cache-memory-gb), disk 2000.0 GiB (--cache-disk-gb" in text
    rows = [line for line in result.output.splitlines() if "│ covid" in line]
    caches = [line.split("│")[8].strip() for line in rows]  # finetune, unet frozen, linear
    assert caches == ["-", "disk", "memory"], result.output


def test_sweep_config_carries_the_budgets_to_its_jobs():
    from cxrbench.sweep.config import budget_settings, config_from_mapping

    base = {"checkpoints": ["random"], "data": "prepared"}
    config = config_from_mapping({**base, "cache_memory_gb": 0, "cache_disk_gb": 1.5})
    assert budget_settings(config) == (0, 3 * 2**29)
    assert budget_settings(config_from_mapping(base)) == (6 * 2**30, 20 * 2**30)
    for bad, message in [(-1, "must be a finite number of GiB >= 0"), ("lots", "must be a number of GiB")]:
        with pytest.raises(CxrbenchError, match=f"`cache_disk_gb` {message}"):
            config_from_mapping({**base, "cache_disk_gb": bad})
