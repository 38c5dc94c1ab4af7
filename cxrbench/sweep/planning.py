"""What a sweep runs: up-front checks, the resolved plan, and its two stages of jobs.

The final seeds of a task need the lr chosen by its lr search, so stage 1 holds every lr-search
job and stage 2 the final-seed jobs at the best lr read back from the stage-1 records (chosen as
`cxrbench evaluate` chooses it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cxrbench.datasets.split_scheme import SplitIdentity
from cxrbench.encoders import load_encoder
from cxrbench.errors import CxrbenchError
from cxrbench.output_dirs import RUNS, SWEEP_LOGS, check_name, claim_folder, take_folder
from cxrbench.protocol.record_schema import FINAL, LR_SEARCH
from cxrbench.protocol.records import read_record
from cxrbench.protocol.runner import best_lr, checkpoint_identity, checkpoint_path, run_preprocessing
from cxrbench.protocol.task_data import open_task_dataset
from cxrbench.protocol.tasks import Profile, Task, select_tasks
from cxrbench.sweep.config import SUBMITIT_EXECUTORS, CheckpointSpec, SweepConfig, budget_settings
from cxrbench.sweep.job import Job, JobOutcome

STAGE_NAMES = ("lr search", "final seeds")


@dataclass
class SweepPlan:
    """The checked inputs of a sweep: resolved checkpoints with identities, tasks as run, seeds."""

    config: SweepConfig
    profile: Profile
    checkpoints: list[tuple[CheckpointSpec, str]]
    tasks: list[Task]
    seeds: int
    workers: int
    threads: int | None
    splits: dict[str, SplitIdentity] = field(default_factory=dict)  # dataset -> its cache's split


@dataclass
class SweepSummary:
    outcomes: list[JobOutcome] = field(default_factory=list)
    chosen_lr: dict[tuple[str, str], float] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)  # "<encoder> <task>": lr search incomplete

    def count(self, *statuses: str) -> int:
        return sum(o.status in statuses for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return self.count("failed", "error") == 0 and not self.blocked


def visible_gpus() -> list[str]:
    """CUDA device ids as the parent sees them (honouring an inherited CUDA_VISIBLE_DEVICES)."""
    if not torch.cuda.is_available():
        return []
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited:
        return [d.strip() for d in inherited.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_runs_dir(runs_dir: Path) -> None:
    """Claim RUNS_DIR (new, empty or a runs directory of cxrbench), create it, probe-write a file in it
    and mark it, so that an unusable or foreign one fails before any job runs."""
    take_folder(runs_dir, RUNS)


def plan_sweep(config: SweepConfig, check_writable: bool = True) -> SweepPlan:
    """Check everything that can fail up front (runs dir, data, checkpoints) and resolve the sweep."""
    for ckpt in config.checkpoints:
        check_name(ckpt.encoder, "checkpoint name")
    if check_writable:
        check_runs_dir(config.runs_dir)
    else:
        claim_folder(config.runs_dir, RUNS)
    if config.logs_dir is not None and config.executor in SUBMITIT_EXECUTORS:  # its job folders go there
        (take_folder if check_writable else claim_folder)(config.logs_dir, SWEEP_LOGS)
    profile = config.resolved_profile()
    tasks = [profile.apply(t) for t in select_tasks(config.tasks)]
    splits = {
        dataset: open_task_dataset(config.data_root, dataset).split_identity
        for dataset in sorted({t.dataset for t in tasks})
    }
    checkpoints = []
    for ckpt in config.checkpoints:
        loaded = load_encoder(ckpt.spec, arch=ckpt.arch, prefix=ckpt.prefix)
        preprocessing = run_preprocessing(ckpt.spec, loaded, ckpt.preset)
        spec = checkpoint_path(ckpt.spec) or ckpt.spec
        resolved = replace(
            ckpt, spec=spec, arch=ckpt.arch or loaded.report.arch, preprocessing=preprocessing.key
        )
        checkpoints.append((resolved, checkpoint_identity(ckpt.spec, loaded)))
    names = [c.encoder for c, _ in checkpoints]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise CxrbenchError(f"checkpoint name(s) used twice: {', '.join(duplicated)}; give each a `name`")
    workers = 1 if config.executor == "debug" else (config.workers or max(1, len(visible_gpus())))
    threads = {"debug": None, "slurm": config.cluster.cpus_per_job}.get(
        config.executor, max(1, cpu_count() // workers)
    )
    seeds = config.seeds if config.seeds is not None else profile.default_seeds
    return SweepPlan(config, profile, checkpoints, tasks, seeds, workers, threads, splits)


def make_job(
    plan: SweepPlan, ckpt: CheckpointSpec, identity: str, task: Task, phase: str, lr: float, seed: int
) -> Job:
    config = plan.config
    return Job(
        ckpt,
        identity,
        task.task_id,
        phase,
        float(lr),
        seed,
        Path(config.data_root).resolve(),
        Path(config.runs_dir).resolve(),
        plan.profile,
        config.device,
        config.amp,
        config.feature_cache,
        plan.threads,
        config.executor,
        plan.splits.get(task.dataset),
        budget_settings(config),
        compile=config.compile,
    )


def stage1_jobs(plan: SweepPlan) -> list[Job]:
    """Every lr-search run (seed 0, one per lr of a grid with more than one lr)."""
    return [
        make_job(plan, ckpt, identity, task, LR_SEARCH, lr, 0)
        for ckpt, identity in plan.checkpoints
        for task in plan.tasks
        if len(task.lr_grid) > 1
        for lr in task.lr_grid
    ]


def chosen_lr(plan: SweepPlan, ckpt: CheckpointSpec, identity: str, task: Task) -> float | None:
    """The task's lr for the final seeds, as `evaluate` picks it; None while a search run has no record."""
    if len(task.lr_grid) == 1:
        return task.lr_grid[0]
    records = [
        read_record(make_job(plan, ckpt, identity, task, LR_SEARCH, lr, 0).path) for lr in task.lr_grid
    ]
    if any(r is None for r in records):
        return None
    return best_lr(task, records)  # type: ignore[arg-type]


def stage2_jobs(plan: SweepPlan, summary: SweepSummary | None = None) -> list[Job]:
    """Final-seed runs at each task's chosen lr; tasks whose lr search is incomplete are blocked."""
    jobs = []
    for ckpt, identity in plan.checkpoints:
        for task in plan.tasks:
            lr = chosen_lr(plan, ckpt, identity, task)
            if lr is None:
                if summary is not None:
                    summary.blocked.append(f"{ckpt.encoder} {task.task_id}")
                continue
            if summary is not None:
                summary.chosen_lr[(ckpt.encoder, task.task_id)] = lr
            jobs += [make_job(plan, ckpt, identity, task, FINAL, lr, seed) for seed in range(plan.seeds)]
    return jobs


def describe_jobs(plan: SweepPlan) -> list[tuple[Job | None, str, str, str]]:
    """Dry-run listing: (job or None, encoder, task, phase) rows, the final ones only when their lr is known."""
    rows: list[tuple[Job | None, str, str, str]] = [
        (j, j.checkpoint.encoder, j.task_id, j.phase) for j in stage1_jobs(plan)
    ]
    summary = SweepSummary()
    rows += [(j, j.checkpoint.encoder, j.task_id, j.phase) for j in stage2_jobs(plan, summary)]
    for blocked in summary.blocked:
        encoder, task_id = blocked.rsplit(" ", 1)
        rows.append((None, encoder, task_id, FINAL))
    return rows


def estimated_time_min(config: SweepConfig, margin: float = 1.5) -> int | None:
    """A per-job time limit from `cxrbench plan`'s estimate: the throughput of each checkpoint's encoder
    probed on this machine's device (run it where the jobs run), the longest estimated run times
    `margin`; None when no task is selected."""
    from cxrbench.protocol.plan import job_time_limit_min, plan_costs, probe_throughput, split_sizes
    from cxrbench.runtime import resolve_device

    profile = config.resolved_profile()
    tasks = select_tasks(config.tasks)
    sizes = {t.task_id: split_sizes(config.data_root, t, profile) for t in tasks}
    seeds = config.seeds if config.seeds is not None else profile.default_seeds
    device = resolve_device(config.device)
    limits = []
    for ckpt in config.checkpoints:
        encoder = load_encoder(ckpt.spec, arch=ckpt.arch, prefix=ckpt.prefix).encoder
        throughput = probe_throughput(encoder, [(t.head, t.mode) for t in tasks], profile.resolution, device)
        costs = plan_costs(
            tasks, profile, seeds, sizes, encoder.feature_info, throughput, *budget_settings(config)
        )
        limits.append(job_time_limit_min(costs, margin))
    found = [m for m in limits if m is not None]
    return max(found) if found else None
