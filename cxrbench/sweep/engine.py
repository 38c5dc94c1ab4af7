"""`cxrbench sweep`: checkpoints x tasks x lr grid x seeds as independent, idempotent jobs.

One job is one training run and writes exactly one run record, through the same code path as
`cxrbench evaluate` (same run keys, same record file names), so the two commands share finished
runs and `cxrbench leaderboard` reads sweep results unchanged. The final seeds of a task need the
lr chosen by its lr search, so a sweep runs in two stages: stage 1 holds every lr-search job, stage
2 the final-seed jobs at the best lr read back from the stage-1 records. Jobs within a stage are
independent and run on a local process pool (one worker per GPU when several are visible), on
submitit's local executor, on Slurm through submitit, or in-process (debug).

Resilience comes from the records: each is written atomically under a name derived from its run
key, so a killed sweep leaves only whole records, a re-run skips them, and no run can have two.
A job that fails is recorded as failed with its error and retried by the next sweep.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from cxrbench.encoders import is_builtin, load_encoder
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.records import read_record, record_path, run_key, write_record
from cxrbench.protocol.runner import (
    EvaluateOptions,
    Reporter,
    best_lr,
    checkpoint_identity,
    execute_run,
    new_run_record,
    record_failure,
)
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import TASKS_BY_ID, Profile, Task, get_profile, protocol_hash, select_tasks
from cxrbench.runtime import resolve_device

EXECUTORS = ("local", "submitit-local", "slurm", "debug")
STAGE_NAMES = ("lr search", "final seeds")
_POLL_S = {"submitit-local": 0.5, "slurm": 20.0}


@dataclass(frozen=True)
class CheckpointSpec:
    """One encoder of the sweep: a file or 'random'/'imagenet', its name in records, overrides."""

    spec: str
    name: str | None = None
    arch: str | None = None
    prefix: str | None = None

    @property
    def label(self) -> str:
        return self.name or (self.spec if is_builtin(self.spec) else Path(self.spec).stem)


@dataclass(frozen=True)
class ClusterOptions:
    """Resources of one job on Slurm (and the time limit of submitit-local jobs)."""

    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int | None = None
    time_min: int = 240
    array_parallelism: int = 64


@dataclass
class SweepConfig:
    """Everything a sweep needs; built from YAML and/or CLI flags by `config_from_mapping`."""

    checkpoints: list[CheckpointSpec]
    data_root: Path
    runs_dir: Path = Path("runs")
    tasks: str | list[str] = "all"
    profile: Profile | str = "full"
    seeds: int | None = None
    executor: str = "local"
    workers: int | None = None
    device: str = "auto"
    amp: bool = True
    feature_cache: bool = True
    logs_dir: Path | None = None  # submitit's job folders; default RUNS_DIR/.submitit
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    def resolved_profile(self) -> Profile:
        return self.profile if isinstance(self.profile, Profile) else get_profile(self.profile)


@dataclass(frozen=True)
class Job:
    """One training run: picklable, so it crosses process and Slurm boundaries unchanged."""

    checkpoint: CheckpointSpec  # name and arch resolved
    identity: str  # checkpoint sha256 (or 'random:<arch>'), part of the run key
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

    @property
    def key(self) -> str:
        return run_key(
            self.checkpoint.label,
            self.identity,
            self.task_id,
            self.profile.name,
            protocol_hash(self.profile),
            self.phase,
            self.lr,
            self.seed,
        )

    @property
    def path(self) -> Path:
        return record_path(self.runs_dir, self.checkpoint.label, self.task_id, self.key)

    def describe(self) -> str:
        return f"{self.checkpoint.label} {self.task_id} {self.phase} lr={self.lr:g} seed={self.seed}"

    def is_done(self) -> bool:
        record = read_record(self.path)
        return record is not None and record.get("status") == "ok"


@dataclass(frozen=True)
class JobOutcome:
    """What became of a job: 'ok', 'failed' (record says failed), 'skipped' (done before), 'error'
    (no record written: the job crashed outside training, e.g. its worker died or the disk is full)."""

    job: Job
    status: str
    run_id: str | None = None
    error: str | None = None
    wall_time_s: float = 0.0


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


class SweepReporter:
    """Progress callbacks; the CLI subclasses this with a rich display. All no-ops here."""

    def stage_started(self, stage: int, n_jobs: int, n_skipped: int) -> None: ...
    def job_finished(self, outcome: JobOutcome) -> None: ...
    def stage_finished(self, stage: int) -> None: ...


# ---------------------------------------------------------------- configuration


_TOP_KEYS = {f.name for f in fields(SweepConfig)} - {"data_root", "cluster"} | {"data", "slurm"}
_CLUSTER_KEYS = {f.name for f in fields(ClusterOptions)}
_CHECKPOINT_KEYS = {f.name for f in fields(CheckpointSpec)}


def load_config(path: Path) -> dict[str, Any]:
    """Read a sweep YAML file into a plain mapping (validated by `config_from_mapping`)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CxrbenchError(f"cannot read sweep config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CxrbenchError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CxrbenchError(f"{path}: expected a mapping of sweep settings at the top level")
    return data


def config_from_mapping(mapping: Mapping[str, Any], source: str = "sweep config") -> SweepConfig:
    """Validate a YAML/flag mapping into a SweepConfig; every mistake is one clear message."""
    unknown = set(mapping) - _TOP_KEYS
    if unknown:
        raise CxrbenchError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_TOP_KEYS))}"
        )
    if not mapping.get("checkpoints"):
        raise CxrbenchError(f"{source}: no checkpoints given (a `checkpoints:` list or --checkpoint)")
    if not mapping.get("data"):
        raise CxrbenchError(f"{source}: no prepared data root given (`data:` or --data)")
    executor = mapping.get("executor", "local")
    if executor not in EXECUTORS:
        raise CxrbenchError(f"{source}: unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    slurm = mapping.get("slurm") or {}
    if not isinstance(slurm, Mapping) or set(slurm) - _CLUSTER_KEYS:
        raise CxrbenchError(f"{source}: `slurm:` takes the keys {', '.join(sorted(_CLUSTER_KEYS))}")
    for key in ("workers", "seeds"):
        value = mapping.get(key)
        if value is not None and (not isinstance(value, int) or value < (1 if key == "workers" else 0)):
            raise CxrbenchError(f"{source}: `{key}` must be a non-negative integer, got {value!r}")
    tasks = mapping.get("tasks", "all")
    select_tasks(tasks)  # unknown ids fail here
    return SweepConfig(
        checkpoints=[_checkpoint(c, source) for c in mapping["checkpoints"]],
        data_root=Path(mapping["data"]),
        runs_dir=Path(mapping.get("runs_dir") or "runs"),
        tasks=tasks,
        profile=_profile(mapping.get("profile", "full"), source),
        seeds=mapping.get("seeds"),
        executor=executor,
        workers=mapping.get("workers"),
        device=str(mapping.get("device", "auto")),
        amp=bool(mapping.get("amp", True)),
        feature_cache=bool(mapping.get("feature_cache", True)),
        logs_dir=Path(mapping["logs_dir"]) if mapping.get("logs_dir") else None,
        cluster=ClusterOptions(**slurm),
    )


def _checkpoint(entry: Any, source: str) -> CheckpointSpec:
    if isinstance(entry, str):
        name, sep, spec = entry.partition("=")
        return CheckpointSpec(spec, name) if sep else CheckpointSpec(entry)
    if isinstance(entry, Mapping) and "spec" in entry and not set(entry) - _CHECKPOINT_KEYS:
        return CheckpointSpec(**{k: None if v is None else str(v) for k, v in entry.items()})
    raise CxrbenchError(
        f"{source}: a checkpoint is a path/'random'/'imagenet' or a mapping with keys "
        f"{', '.join(sorted(_CHECKPOINT_KEYS))} (spec required); got {entry!r}"
    )


def _profile(value: Any, source: str) -> Profile:
    """A profile name, or {base: NAME, name: NEW_NAME, <Profile field>: value, ...}."""
    if isinstance(value, Profile):
        return value
    if isinstance(value, str):
        return get_profile(value)
    valid = {f.name for f in fields(Profile)} | {"base"}
    if not isinstance(value, Mapping) or set(value) - valid:
        raise CxrbenchError(
            f"{source}: `profile` is a name or a mapping with keys {', '.join(sorted(valid))}"
        )
    overrides = {k: v for k, v in value.items() if k != "base"}
    base = get_profile(value.get("base", "full"))
    if overrides.keys() - {"name"} and overrides.get("name", base.name) == base.name:
        raise CxrbenchError(f"{source}: a modified profile needs its own `name` (not {base.name!r})")
    return replace(base, **overrides)


# ---------------------------------------------------------------- checks and planning


def check_runs_dir(runs_dir: Path) -> None:
    """Create RUNS_DIR and probe-write a file in it, so an unusable one fails before any job runs."""
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cxrbench-write-probe.", dir=runs_dir)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except PermissionError:
        raise CxrbenchError(
            f"runs directory {runs_dir} is not writable (permission denied): "
            "check its owner and mode, or pick another with --runs-dir"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CxrbenchError(
                f"no space left on device for the runs directory {runs_dir}: free disk space and re-run"
            ) from None
        if isinstance(exc, (NotADirectoryError, FileExistsError)):
            blocker = next((p for p in (runs_dir, *runs_dir.parents) if p.exists()), runs_dir)
            raise CxrbenchError(
                f"runs directory {runs_dir} cannot be created: {blocker} is a file, not a directory"
            ) from None
        raise CxrbenchError(f"runs directory {runs_dir} is not writable: {exc.strerror or exc}") from None


def plan_sweep(config: SweepConfig, check_writable: bool = True) -> SweepPlan:
    """Check everything that can fail up front (runs dir, data, checkpoints) and resolve the sweep."""
    if check_writable:
        check_runs_dir(config.runs_dir)
    profile = config.resolved_profile()
    tasks = [profile.apply(t) for t in select_tasks(config.tasks)]
    for dataset in sorted({t.dataset for t in tasks}):
        open_task_dataset(config.data_root, dataset)
    checkpoints = []
    for ckpt in config.checkpoints:
        loaded = load_encoder(ckpt.spec, arch=ckpt.arch, prefix=ckpt.prefix)
        spec = ckpt.spec if is_builtin(ckpt.spec) else str(Path(ckpt.spec).resolve())
        resolved = replace(ckpt, spec=spec, name=ckpt.label, arch=ckpt.arch or loaded.report.arch)
        checkpoints.append((resolved, checkpoint_identity(ckpt.spec, loaded)))
    names = [c.label for c, _ in checkpoints]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise CxrbenchError(f"checkpoint name(s) used twice: {', '.join(duplicated)}; give each a `name`")
    workers = 1 if config.executor == "debug" else (config.workers or max(1, len(_visible_gpus())))
    threads = {"debug": None, "slurm": config.cluster.cpus_per_job}.get(
        config.executor, max(1, _cpu_count() // workers)
    )
    seeds = config.seeds if config.seeds is not None else profile.default_seeds
    return SweepPlan(config, profile, checkpoints, tasks, seeds, workers, threads)


def _job(
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
    )


def stage1_jobs(plan: SweepPlan) -> list[Job]:
    """Every lr-search run (seed 0, one per lr of a grid with more than one lr)."""
    return [
        _job(plan, ckpt, identity, task, "lr_search", lr, 0)
        for ckpt, identity in plan.checkpoints
        for task in plan.tasks
        if len(task.lr_grid) > 1
        for lr in task.lr_grid
    ]


def chosen_lr(plan: SweepPlan, ckpt: CheckpointSpec, identity: str, task: Task) -> float | None:
    """The task's lr for the final seeds, as `evaluate` picks it; None while a search run has no record."""
    if len(task.lr_grid) == 1:
        return task.lr_grid[0]
    records = [read_record(_job(plan, ckpt, identity, task, "lr_search", lr, 0).path) for lr in task.lr_grid]
    if any(r is None for r in records):
        return None
    return best_lr(task, records)


def stage2_jobs(plan: SweepPlan, summary: SweepSummary | None = None) -> list[Job]:
    """Final-seed runs at each task's chosen lr; tasks whose lr search is incomplete are blocked."""
    jobs = []
    for ckpt, identity in plan.checkpoints:
        for task in plan.tasks:
            lr = chosen_lr(plan, ckpt, identity, task)
            if lr is None:
                if summary is not None:
                    summary.blocked.append(f"{ckpt.label} {task.task_id}")
                continue
            if summary is not None:
                summary.chosen_lr[(ckpt.label, task.task_id)] = lr
            jobs += [_job(plan, ckpt, identity, task, "final", lr, seed) for seed in range(plan.seeds)]
    return jobs


# ---------------------------------------------------------------- one job


def run_single(job: Job) -> JobOutcome:
    """Run one training run and write its record (the unit every executor runs); idempotent."""
    existing = read_record(job.path)
    if existing is not None and existing.get("status") == "ok":
        return JobOutcome(job, "skipped", existing.get("run_id"))
    if job.threads:
        torch.set_num_threads(job.threads)
    start = time.perf_counter()
    task = job.profile.apply(TASKS_BY_ID[job.task_id])
    options = EvaluateOptions(
        data_root=job.data_root,
        runs_dir=job.runs_dir,
        name=job.checkpoint.label,
        profile=job.profile,
        device=job.device,
        amp=job.amp,
        use_feature_cache=job.feature_cache,
        prefix=job.checkpoint.prefix,
        arch=job.checkpoint.arch,
    )
    record = new_run_record(
        options, task, task.dataset, job.key, job.identity, job.checkpoint.spec, job.phase, job.lr, job.seed,
        protocol_hash(job.profile), job.device,
    )  # fmt: skip
    record["sweep"] = {
        "executor": job.executor,
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    try:
        device = resolve_device(job.device)
        record["device"] = str(device)
        dataset = open_task_dataset(job.data_root, task.dataset)
        data = {
            split: load_task_split(dataset, task, split, job.profile) for split in ("train", "val", "test")
        }
        loaded = load_encoder(job.checkpoint.spec, arch=job.checkpoint.arch, prefix=job.checkpoint.prefix)
        record["encoder_load"] = {
            "arch": loaded.report.arch,
            "prefix": loaded.report.prefix,
            "fraction_loaded": loaded.report.fraction_loaded,
        }
        if loaded.report.sha256 and loaded.report.sha256 != job.identity:
            raise CxrbenchError(f"checkpoint {job.checkpoint.spec} changed since the sweep was planned")
        predictions = execute_run(
            record, task, loaded, len(dataset.classes), data, job.lr, job.seed, job.profile, device, options,
            Reporter(),
        )  # fmt: skip
    except Exception as exc:  # set-up failures are recorded like training failures
        record_failure(record, exc, start)
        predictions = None
    write_record(job.path, record, predictions)
    return JobOutcome(
        job, record["status"], record["run_id"], record.get("error"), time.perf_counter() - start
    )


def _safe_run_single(job: Job) -> JobOutcome:
    """run_single, with anything it raises (e.g. disk full while writing) turned into an outcome."""
    try:
        return run_single(job)
    except Exception as exc:
        return JobOutcome(job, "error", None, f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- executors


def run_sweep(config: SweepConfig, reporter: SweepReporter | None = None) -> SweepSummary:
    """Check, then run stage 1 (lr search) and stage 2 (final seeds) on the configured executor."""
    reporter = reporter or SweepReporter()
    plan = plan_sweep(config)
    summary = SweepSummary()
    for stage in (1, 2):
        jobs = stage1_jobs(plan) if stage == 1 else stage2_jobs(plan, summary)
        records = [read_record(job.path) for job in jobs]
        done_before = [r is not None and r.get("status") == "ok" for r in records]
        pending = [job for job, done in zip(jobs, done_before) if not done]
        skipped = [JobOutcome(j, "skipped", r["run_id"]) for j, r, d in zip(jobs, records, done_before) if d]
        summary.outcomes += skipped
        reporter.stage_started(stage, len(jobs), len(skipped))
        for outcome in skipped:
            reporter.job_finished(outcome)

        def done(outcome: JobOutcome) -> None:
            summary.outcomes.append(outcome)
            reporter.job_finished(outcome)

        if pending:
            execute_jobs(pending, plan, done)
        reporter.stage_finished(stage)
    return summary


def execute_jobs(jobs: Sequence[Job], plan: SweepPlan, on_done: Callable[[JobOutcome], None]) -> None:
    """Run independent jobs on the plan's executor; every job reports exactly one outcome."""
    executor = plan.config.executor
    if executor == "debug":
        for job in jobs:
            on_done(_safe_run_single(job))
    elif executor == "local":
        _run_process_pool(jobs, plan.workers, on_done)
    else:
        _run_submitit(jobs, plan, on_done)


def _visible_gpus() -> list[str]:
    """CUDA device ids as the parent sees them (honouring an inherited CUDA_VISIBLE_DEVICES)."""
    if not torch.cuda.is_available():
        return []
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited:
        return [d.strip() for d in inherited.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker(gpu_slots: Any) -> None:
    """Pin this worker process to one GPU (before CUDA starts in it)."""
    if gpu_slots is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_slots.get()


def _run_process_pool(jobs: Sequence[Job], workers: int, on_done: Callable[[JobOutcome], None]) -> None:
    context = multiprocessing.get_context("spawn")  # CUDA and threads do not survive fork
    gpus = _visible_gpus() if jobs[0].device == "auto" else []
    slots = None
    if len(gpus) > 1:
        slots = context.Queue()
        for k in range(workers):
            slots.put(gpus[k % len(gpus)])
    workers = min(workers, len(jobs))
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(slots,)
    ) as pool:
        futures = {pool.submit(_safe_run_single, job): job for job in jobs}
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    on_done(future.result())
                except BrokenProcessPool:
                    message = "the worker process died (out of memory?); re-run the sweep to retry"
                    on_done(JobOutcome(futures[future], "error", None, message))


def make_submitit_executor(plan: SweepPlan) -> Any:
    """A submitit LocalExecutor or Slurm AutoExecutor with the plan's resources."""
    import submitit

    config, cluster = plan.config, plan.config.cluster
    folder = Path(config.logs_dir or Path(config.runs_dir) / ".submitit").resolve()
    if config.executor == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder / "%j")
        gpus = min(cluster.gpus_per_job, len(_visible_gpus()))
        executor.update_parameters(timeout_min=cluster.time_min, gpus_per_node=gpus)
        return executor
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise CxrbenchError(
            "--executor slurm needs Slurm's sbatch and srun on PATH (run the sweep on a cluster login node)"
        )
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(**slurm_parameters(cluster))
    return executor


def slurm_parameters(cluster: ClusterOptions) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one job of the sweep."""
    params: dict[str, Any] = {
        "name": "cxrbench-sweep",
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": cluster.gpus_per_job,
        "cpus_per_task": cluster.cpus_per_job,
        "timeout_min": cluster.time_min,
        "slurm_array_parallelism": cluster.array_parallelism,
    }
    if cluster.mem_gb:
        params["mem_gb"] = cluster.mem_gb
    if cluster.partition:
        params["slurm_partition"] = cluster.partition
    if cluster.account:
        params["slurm_account"] = cluster.account
    return params


def _run_submitit(jobs: Sequence[Job], plan: SweepPlan, on_done: Callable[[JobOutcome], None]) -> None:
    """Slurm: one job array (its parallelism set by --array-parallelism). Local: at most `workers`
    jobs at once, since submitit's local executor starts every submitted job immediately."""
    executor = make_submitit_executor(plan)
    poll = _POLL_S[plan.config.executor]
    queue = list(jobs)
    running: dict[Any, Job] = {}
    limit = len(queue) if plan.config.executor == "slurm" else plan.workers
    while queue or running:
        if queue and len(running) < limit:
            batch, queue = queue[: limit - len(running)], queue[limit - len(running) :]
            try:
                submitted = executor.map_array(_safe_run_single, batch)
            except Exception as exc:
                raise CxrbenchError(f"submitting {len(batch)} job(s) failed: {exc}") from None
            running.update(zip(submitted, batch))
        for handle in [h for h in running if h.done()]:
            job = running.pop(handle)
            on_done(_submitit_outcome(handle, job))
        time.sleep(poll if running else 0)


def _submitit_outcome(handle: Any, job: Job) -> JobOutcome:
    try:
        return handle.result()
    except Exception as exc:  # killed, timed out or crashed: the run stays unrecorded and is retried
        first = str(exc).strip().splitlines()
        reason = first[0] if first else type(exc).__name__
        return JobOutcome(job, "error", None, f"submitit job {handle.job_id} failed: {reason}")


def describe_jobs(plan: SweepPlan) -> list[tuple[Job | None, str, str, str]]:
    """Dry-run listing: (job or None, encoder, task, phase) rows, the final ones only when their lr is known."""
    rows: list[tuple[Job | None, str, str, str]] = [
        (j, j.checkpoint.label, j.task_id, j.phase) for j in stage1_jobs(plan)
    ]
    summary = SweepSummary()
    rows += [(j, j.checkpoint.label, j.task_id, j.phase) for j in stage2_jobs(plan, summary)]
    for blocked in summary.blocked:
        label, task_id = blocked.split(" ", 1)
        rows.append((None, label, task_id, "final"))
    return rows


def group_outcomes(outcomes: Iterable[JobOutcome]) -> dict[tuple[str, str], list[JobOutcome]]:
    groups: dict[tuple[str, str], list[JobOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.job.checkpoint.label, outcome.job.task_id), []).append(outcome)
    return groups
