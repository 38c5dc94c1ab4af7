"""`cxrbench evaluate`: one checkpoint over a set of tasks -> one run record per training run.

Per task: one run per lr of the grid (phase "lr_search", seed 0; skipped when the grid has a
single lr), the best validation metric picks the lr, then `seeds` runs at that lr (phase
"final", seeds 0..N-1). Finished runs are found by their run key and skipped, so an interrupted
evaluation resumes without losing or duplicating anything. A run that fails (e.g. NaN loss) is
recorded as failed with its error and the others continue; it is retried on the next invocation.
"""

from __future__ import annotations

import copy
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrbench.encoders import LoadedEncoder, is_builtin, load_encoder
from cxrbench.protocol.feature_cache import DEFAULT_BUDGET_BYTES
from cxrbench.protocol.records import new_run_id, read_record, record_path, run_key, write_record
from cxrbench.protocol.task_data import TaskSplit, load_task_split, open_task_dataset
from cxrbench.protocol.tasks import Profile, Task, protocol_hash
from cxrbench.protocol.training import train_run
from cxrbench.provenance import provenance
from cxrbench.runtime import resolve_device


@dataclass
class EvaluateOptions:
    data_root: Path
    runs_dir: Path
    name: str
    profile: Profile
    seeds: int | None = None
    device: str = "auto"
    amp: bool = True
    use_feature_cache: bool = True
    cache_budget_bytes: int = DEFAULT_BUDGET_BYTES
    prefix: str | None = None
    arch: str | None = None


class Reporter:
    """Progress callbacks; the CLI subclasses this with a rich display. All no-ops here."""

    def planned(self, n_tasks: int) -> None: ...
    def task_started(self, task: Task, n_runs: int) -> None: ...
    def run_started(self, task: Task, phase: str, lr: float, seed: int) -> None: ...
    def epoch(self, task: Task, entry: dict) -> None: ...
    def run_finished(self, task: Task, record: dict, skipped: bool) -> None: ...
    def finished(self) -> None: ...


@dataclass
class TaskOutcome:
    task: Task
    lr: float
    records: list[dict] = field(default_factory=list)


def checkpoint_identity(spec: str | Path, loaded: LoadedEncoder) -> str:
    """What identifies the encoder weights: the file's sha256, or the name and arch (random/imagenet)."""
    return loaded.report.sha256 or f"{spec}:{loaded.report.arch}"


def evaluate_checkpoint(
    checkpoint: str | Path, tasks: Sequence[Task], options: EvaluateOptions, reporter: Reporter | None = None
) -> list[TaskOutcome]:
    """Run the protocol for `tasks` on one checkpoint; returns the records per task."""
    reporter = reporter or Reporter()
    device = resolve_device(options.device)
    profile = options.profile
    datasets = {t.dataset: open_task_dataset(options.data_root, t.dataset) for t in tasks}  # fail early
    loaded = load_encoder(checkpoint, arch=options.arch, prefix=options.prefix)
    base_state = copy.deepcopy(loaded.encoder.state_dict())
    identity = checkpoint_identity(checkpoint, loaded)
    p_hash = protocol_hash(profile)
    seeds = options.seeds if options.seeds is not None else profile.default_seeds
    reporter.planned(len(tasks))
    outcomes = []
    for protocol_task in tasks:
        task = profile.apply(protocol_task)
        dataset = datasets[task.dataset]
        data = {split: load_task_split(dataset, task, split, profile) for split in ("train", "val", "test")}
        n_grid = len(task.lr_grid) if len(task.lr_grid) > 1 else 0
        reporter.task_started(task, n_grid + seeds)

        def run(phase: str, lr: float, seed: int, task=task, data=data, dataset=dataset) -> dict:
            key = run_key(options.name, identity, task.task_id, profile.name, p_hash, phase, lr, seed)
            path = record_path(options.runs_dir, options.name, task.task_id, key)
            existing = read_record(path)
            if existing is not None and existing.get("status") == "ok":
                reporter.run_finished(task, existing, skipped=True)
                return existing
            reporter.run_started(task, phase, lr, seed)
            loaded.encoder.load_state_dict(base_state)
            record = new_run_record(
                options, task, dataset.name, key, identity, checkpoint, phase, lr, seed, p_hash, device
            )
            record["encoder_load"] = {
                "arch": loaded.report.arch,
                "prefix": loaded.report.prefix,
                "fraction_loaded": loaded.report.fraction_loaded,
            }
            predictions = execute_run(
                record, task, loaded, len(dataset.classes), data, lr, seed, profile, device, options, reporter
            )
            write_record(path, record, predictions)
            reporter.run_finished(task, record, skipped=False)
            return record

        outcome = TaskOutcome(task, task.default_lr)
        if n_grid:
            search = [run("lr_search", lr, 0) for lr in task.lr_grid]
            outcome.records += search
            outcome.lr = best_lr(task, search)
        else:
            outcome.lr = task.lr_grid[0]
        outcome.records += [run("final", outcome.lr, seed) for seed in range(seeds)]
        outcomes.append(outcome)
    reporter.finished()
    return outcomes


def best_lr(task: Task, records: list[dict]) -> float:
    """The lr with the highest validation metric among successful runs; ties go to the earlier lr of
    the grid; the default lr when no run succeeded."""
    scored = [(r["val"].get(task.metric, float("nan")), r["lr"]) for r in records if r.get("status") == "ok"]
    scored = [(v, lr) for v, lr in scored if np.isfinite(v)]
    return max(scored, key=lambda pair: pair[0])[1] if scored else task.default_lr


def new_run_record(
    options, task, dataset_name, key, identity, checkpoint, phase, lr, seed, p_hash, device
) -> dict:
    ckpt_path = None if is_builtin(checkpoint) else str(Path(checkpoint).resolve())
    return {
        "run_id": new_run_id(),
        "run_key": key,
        "encoder": options.name,
        "checkpoint": {"path": ckpt_path, "spec": str(checkpoint), "sha256": identity},
        "task_id": task.task_id,
        "dataset": dataset_name,
        "metric": task.metric,
        "phase": phase,
        "seed": seed,
        "lr": lr,
        "protocol_hash": p_hash,
        "profile": options.profile.name,
        "resolution": options.profile.resolution,
        "task_settings": {
            k: getattr(task, k)
            for k in ("batch_size", "max_epochs", "patience", "warmup_steps", "mode", "head", "percent")
        },
        "device": str(device),
        "feature_cache": None,
        **provenance(),
    }


def record_failure(record: dict, exc: BaseException, start: float) -> None:
    """Mark `record` as a failed run with its error (call inside the `except` block)."""
    record.update(
        status="failed",
        error=f"{type(exc).__name__}: {exc}",
        traceback=traceback.format_exc(limit=8),
        val={},
        test={},
        test_per_image=None,
        history=[],
        best_epoch=None,
        wall_time_s=time.perf_counter() - start,
    )


def execute_run(
    record, task, loaded, n_classes, data: dict[str, TaskSplit], lr, seed, profile, device, options, reporter
):
    """Train one run, filling `record`; failures are recorded, not raised (KeyboardInterrupt is).

    Returns the predictions arrays to store beside the record (None for a failed run)."""
    start = time.perf_counter()
    try:
        result = train_run(
            task,
            loaded.encoder,
            n_classes,
            data,
            lr,
            seed,
            profile.resolution,
            device,
            amp=options.amp,
            use_feature_cache=options.use_feature_cache,
            cache_budget_bytes=options.cache_budget_bytes,
            on_epoch=lambda e: reporter.epoch(task, e),
        )
    except Exception as exc:  # a failing run must not stop the others
        record_failure(record, exc, start)
        return None
    record.update(
        status="ok",
        error=None,
        val=result.val,
        test=result.test,
        test_per_image=result.test_per_image,
        history=result.history,
        best_epoch=result.best_epoch,
        feature_cache=result.used_feature_cache,
        timings=result.timings,
        wall_time_s=time.perf_counter() - start,
        n_images={name: len(split) for name, split in data.items()},
    )
    return result.predictions
