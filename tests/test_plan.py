"""`cxrbench plan`: run counts, images and worst-case image-steps computed from the prepared data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from typer.testing import CliRunner

from cxrbench.cli.app import app
from cxrbench.encoders import load_encoder
from cxrbench.protocol.plan import job_time_limit_min, plan_costs, probe_throughput, split_sizes
from cxrbench.protocol.task_data import open_task_dataset
from cxrbench.protocol.tasks import TASKS_BY_ID, get_profile


def test_counts_follow_the_task_table_and_the_prepared_splits(prepared_root):
    full = get_profile("full")
    tasks = [TASKS_BY_ID[t] for t in ("rsna_seg_linear_10", "covid_unet_finetune", "object_yolo_frozen")]
    sizes = {t.task_id: split_sizes(prepared_root, t, full) for t in tasks}
    encoder = load_encoder("random", arch="resnet18").encoder
    costs = plan_costs(tasks, full, 5, sizes, encoder.feature_info)
    for task, cost in zip(tasks, costs, strict=True):
        dataset = open_task_dataset(prepared_root, task.dataset)
        assert cost.images["train"] == len(dataset.split("train", task.percent))
        assert cost.images["test"] == len(dataset.split("test"))
        assert cost.lr_search_runs == len(task.lr_grid) and cost.final_runs == 5
        assert cost.epoch_cap == task.max_epochs
        assert cost.image_steps == cost.runs * task.max_epochs * cost.images["train"]
        assert cost.seconds is None
    assert [c.feature_cache for c in costs] == ["memory", "-", "memory"]
    tight = plan_costs(tasks, full, 5, sizes, encoder.feature_info, memory_budget_bytes=1)
    assert [c.feature_cache for c in tight] == ["disk", "-", "disk"]  # the default disk budget
    none = plan_costs(tasks, full, 5, sizes, encoder.feature_info, memory_budget_bytes=1, disk_budget_bytes=1)
    assert [c.feature_cache for c in none] == ["none", "-", "none"]
    demo = get_profile("demo")  # the profile's caps apply
    small = plan_costs(
        tasks[:1],
        demo,
        2,
        {tasks[0].task_id: split_sizes(prepared_root, tasks[0], demo)},
        encoder.feature_info,
    )
    assert small[0].lr_search_runs == 0 and small[0].epoch_cap == demo.max_epochs


def test_probe_turns_counts_into_seconds(prepared_root):
    demo = get_profile("demo")
    tasks = [TASKS_BY_ID["covid_linear"], TASKS_BY_ID["covid_unet_finetune"]]
    encoder = load_encoder("random", arch="resnet18").encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    kinds = [(t.head, t.mode) for t in tasks]
    throughput = probe_throughput(encoder, kinds, 64, torch.device("cpu"), batch_size=2, steps=1)
    assert all(
        torch.equal(before[k], v) for k, v in encoder.state_dict().items()
    )  # the probe changes nothing
    assert set(throughput.train_s) == set(kinds) and throughput.encode_s > 0
    sizes = {t.task_id: split_sizes(prepared_root, t, demo) for t in tasks}
    costs = plan_costs(tasks, demo, 2, sizes, encoder.feature_info, throughput)
    for cost in costs:
        assert math.isfinite(cost.seconds) and cost.seconds > 0
    # a one-run job encodes its own cache: the task's one-time encoding is not shared there
    longest = max((c.seconds - c.cache_seconds) / c.runs + c.cache_seconds for c in costs)
    assert any(c.cache_seconds > 0 for c in costs)
    assert job_time_limit_min(costs, margin=2.0, floor_min=1) == max(1, math.ceil(longest * 2 / 60))
    slower = dataclasses.replace(throughput, encode_s=throughput.encode_s * 10)
    assert plan_costs(tasks[:1], demo, 2, sizes, encoder.feature_info, slower)[0].seconds > costs[0].seconds


def test_plan_and_dry_run_print_every_task_and_the_total(prepared_root, tmp_path):
    args = ["--data", str(prepared_root), "--tasks", "covid_rural", "--arch", "resnet18"]
    result = CliRunner().invoke(app, ["plan", "random", *args, "--no-probe"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for task_id in ("covid_unet_finetune", "covid_unet_frozen", "covid_linear"):
        assert task_id in result.output
    assert "total: 24 runs" in result.output and "largest:" in result.output and "6.0 GiB" in result.output
    dry = CliRunner().invoke(
        app,
        ["evaluate", "random", *args, "--profile", "demo", "--dry-run", "--runs-dir", str(tmp_path / "r")],
        terminal_width=200,
    )
    assert dry.exit_code == 0, dry.output
    assert "about" in dry.output and not (tmp_path / "r").exists()  # probed, nothing trained


def test_sweep_time_limit_comes_from_the_plan_estimate(prepared_root, tmp_path, monkeypatch):
    from cxrbench.protocol import plan
    from cxrbench.sweep.config import CheckpointSpec, SweepConfig
    from cxrbench.sweep.planning import estimated_time_min

    def fixed_probe(encoder, kinds, resolution, device, **kw):  # a known device: 10 ms per image and step
        kinds = list(dict.fromkeys(kinds))
        return plan.Throughput(0.01, dict.fromkeys(kinds, 0.01), dict.fromkeys(kinds, 0.01), "cpu", 8)

    monkeypatch.setattr(plan, "probe_throughput", fixed_probe)
    ckpt = CheckpointSpec("random", arch="resnet18")
    config = SweepConfig([ckpt], prepared_root, tmp_path / "runs", "covid_linear", "full", seeds=5)
    task = TASKS_BY_ID["covid_linear"]
    n = split_sizes(prepared_root, task, get_profile("full"))
    per_run = task.max_epochs * (n["train"] + n["val"]) * 0.01 + n["test"] * 0.01 + sum(n.values()) * 0.01
    assert per_run * 100 / 60 > 10  # above the floor, so the estimate decides
    assert estimated_time_min(config, margin=100) == math.ceil(per_run * 100 / 60)


@pytest.mark.parametrize("folder", ["exp[lr=0.1]", "run[/b]"])
def test_paths_with_brackets_are_printed_as_they_are(prepared_root, tmp_path, folder):
    """Rich markup in a path: `[lr=0.1]` was dropped from the printed path (another path shown) and
    `[/b]` was a MarkupError traceback; plan and evaluate print user paths literally."""
    import torchvision

    checkpoint = tmp_path / folder / "enc.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    args = ["--data", str(prepared_root), "--tasks", "covid_linear", "--profile", "demo"]
    result = CliRunner().invoke(app, ["plan", str(checkpoint), *args, "--no-probe"], terminal_width=400)
    assert result.exit_code == 0 and result.exception is None, result.output
    assert f"plan:{checkpoint}(" in "".join(result.output.split())  # the table title wraps
    runs = tmp_path / "runs"
    evaluated = CliRunner().invoke(
        app,
        ["evaluate", str(checkpoint), *args, "--name", "enc[bold]", "--seeds", "1", "--runs-dir", str(runs)],
        terminal_width=400,
    )
    assert evaluated.exit_code == 0 and evaluated.exception is None, evaluated.output
    printed = "".join(evaluated.output.split())
    assert f"from{checkpoint}({checkpoint}" in printed
    assert "enc[bold]:testmetric" in printed and f"runrecords:{runs / 'enc[bold]'}" in printed
