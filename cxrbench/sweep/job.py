"""One sweep job = one training run: a picklable `Job` and `run_single`, the unit every executor runs.

A job goes through the same `run_one` as `cxrbench evaluate` (same run keys, same record files), so
the two commands share finished runs. It loads its own data and encoder, and records set-up failures
(unreadable data, a changed checkpoint) like training failures, to be retried by the next sweep.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrbench.datasets.split_scheme import SplitIdentity
from cxrbench.encoders import load_encoder
from cxrbench.protocol.record_schema import SweepInfo, is_ok
from cxrbench.protocol.records import RunSpec, read_record
from cxrbench.protocol.runner import (
    RunInputs,
    load_task_data,
    run_one,
    run_preprocessing,
)
from cxrbench.protocol.task_data import open_task_dataset
from cxrbench.protocol.tasks import Profile
from cxrbench.runtime import resolve_device
from cxrbench.sweep.config import CheckpointSpec


@dataclass(frozen=True)
class Job:
    """One training run: picklable, so it crosses process and Slurm boundaries unchanged."""

    checkpoint: CheckpointSpec  # spec resolved to an absolute path, arch resolved
    identity: str  # what identifies the weights (see RunSpec), part of the run key
    task_id: str
    phase: str  # "lr_search" | "final"
    lr: float
    seed: int
    data_root: Path
    runs_dir: Path
    profile: Profile
    device: str = "auto"
    amp: bool = True
    feature_cache: bool = True
    threads: int | None = None
    executor: str = "debug"
    splits: SplitIdentity | None = None  # the split of the task's prepared cache (part of the run key)
    cache_budgets: tuple[int, int] | None = None  # feature cache (memory, disk) bytes; None: defaults
    compile: bool = False  # torch.compile encoder and head (recorded, not part of the run key)

    @property
    def run(self) -> RunSpec:
        return RunSpec(
            self.checkpoint.encoder,
            self.identity,
            self.task_id,
            self.phase,
            self.lr,
            self.seed,
            self.profile,
            preprocessing=self.checkpoint.preprocessing,
            splits=self.splits,
        )

    @property
    def key(self) -> str:
        return self.run.key

    @property
    def path(self) -> Path:
        return self.run.record_path(self.runs_dir)

    def describe(self) -> str:
        return self.run.describe()

    def is_done(self) -> bool:
        return is_ok(read_record(self.path))


@dataclass(frozen=True)
class JobOutcome:
    """What became of a job: 'ok', 'failed' (record says failed), 'skipped' (done before), 'error'
    (no record written: the job crashed outside training, e.g. its worker died or the disk is full)."""

    job: Job
    status: str
    run_id: str | None = None
    error: str | None = None
    wall_time_s: float = 0.0


def run_single(job: Job) -> JobOutcome:
    """Run one training run and write its record (the unit every executor runs); idempotent."""
    start = time.perf_counter()
    spec = job.run

    def inputs() -> RunInputs:
        if job.threads:
            torch.set_num_threads(job.threads)
        device = resolve_device(job.device)
        dataset = open_task_dataset(job.data_root, spec.task.dataset)
        loaded = load_encoder(job.checkpoint.spec, arch=job.checkpoint.arch, prefix=job.checkpoint.prefix)
        preprocessing = run_preprocessing(job.checkpoint.spec, loaded, job.checkpoint.preset)
        data = load_task_data(dataset, spec.task, job.profile, preprocessing)
        return RunInputs(loaded, data, len(dataset.classes), device, preprocessing=preprocessing)

    sweep = SweepInfo(
        executor=job.executor, host=socket.gethostname(), slurm_job_id=os.environ.get("SLURM_JOB_ID")
    )
    budgets = {}
    if job.cache_budgets is not None:
        budgets = dict(zip(("cache_budget_bytes", "cache_disk_budget_bytes"), job.cache_budgets, strict=True))
    outcome = run_one(
        spec,
        job.runs_dir,
        job.checkpoint.spec,
        inputs,
        device=job.device,
        amp=job.amp,
        use_feature_cache=job.feature_cache,
        sweep=sweep,
        **budgets,
        compile=job.compile,
    )
    record = outcome.record
    if outcome.skipped:
        return JobOutcome(job, "skipped", record["run_id"])
    return JobOutcome(job, record["status"], record["run_id"], record["error"], time.perf_counter() - start)


def safe_run_single(job: Job) -> JobOutcome:
    """run_single, with anything it raises (e.g. disk full while writing) turned into an outcome."""
    try:
        return run_single(job)
    except Exception as exc:
        return JobOutcome(job, "error", None, f"{type(exc).__name__}: {exc}")


def group_outcomes(outcomes: Iterable[JobOutcome]) -> dict[tuple[str, str], list[JobOutcome]]:
    """Outcomes per (encoder, task)."""
    groups: dict[tuple[str, str], list[JobOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.job.checkpoint.encoder, outcome.job.task_id), []).append(outcome)
    return groups
