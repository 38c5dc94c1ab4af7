"""Running a sweep's jobs: stage by stage on a local process pool (one worker per GPU when several
are visible), on submitit's local executor, on Slurm through submitit, or in-process (debug).

Resilience comes from the records: each is written atomically under a name derived from its run
key, so a killed sweep leaves only whole records, a re-run skips them, and no run can have two.
Every job reports exactly one outcome, even when its worker dies.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from cxrbench.errors import CxrbenchError
from cxrbench.protocol.record_schema import is_ok
from cxrbench.protocol.records import read_record
from cxrbench.sweep.config import ClusterOptions, SweepConfig
from cxrbench.sweep.job import Job, JobOutcome, safe_run_single
from cxrbench.sweep.planning import (
    SweepPlan,
    SweepSummary,
    plan_sweep,
    stage1_jobs,
    stage2_jobs,
    visible_gpus,
)

_POLL_S = {"submitit-local": 0.5, "slurm": 20.0}


class SweepReporter:
    """Progress callbacks; the CLI subclasses this with a rich display. All no-ops here."""

    def stage_started(self, stage: int, n_jobs: int, n_skipped: int) -> None: ...
    def job_finished(self, outcome: JobOutcome) -> None: ...
    def stage_finished(self, stage: int) -> None: ...


def run_sweep(config: SweepConfig, reporter: SweepReporter | None = None) -> SweepSummary:
    """Check, then run stage 1 (lr search) and stage 2 (final seeds) on the configured executor."""
    reporter = reporter or SweepReporter()
    plan = plan_sweep(config)
    summary = SweepSummary()
    for stage in (1, 2):
        jobs = stage1_jobs(plan) if stage == 1 else stage2_jobs(plan, summary)
        records = [read_record(job.path) for job in jobs]
        done_before = [is_ok(r) for r in records]
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
            on_done(safe_run_single(job))
    elif executor == "local":
        _run_process_pool(jobs, plan.workers, on_done)
    else:
        _run_submitit(jobs, plan, on_done)


def _init_worker(gpu_slots: Any) -> None:
    """Pin this worker process to one GPU (before CUDA starts in it)."""
    if gpu_slots is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_slots.get()


def _run_process_pool(jobs: Sequence[Job], workers: int, on_done: Callable[[JobOutcome], None]) -> None:
    context = multiprocessing.get_context("spawn")  # CUDA and threads do not survive fork
    gpus = visible_gpus() if jobs[0].device == "auto" else []
    slots = None
    if len(gpus) > 1:
        slots = context.Queue()
        for k in range(workers):
            slots.put(gpus[k % len(gpus)])
    workers = min(workers, len(jobs))
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(slots,)
    ) as pool:
        futures = {pool.submit(safe_run_single, job): job for job in jobs}
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
        gpus = min(cluster.gpus_per_job, len(visible_gpus()))
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
                submitted = executor.map_array(safe_run_single, batch)
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
