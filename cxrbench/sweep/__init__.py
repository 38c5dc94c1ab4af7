"""`cxrbench sweep`: checkpoints x tasks x lr grid x seeds as independent, idempotent jobs.

One job is one training run and writes exactly one run record through the same `run_one` as
`cxrbench evaluate` (same run keys, same record files), so the two commands share finished runs and
`cxrbench leaderboard` reads sweep results unchanged. Modules: `config` (settings and their
validation), `planning` (checks, the plan, its two stages and the chosen lr), `job` (one run),
`executors` (local pool, submitit, Slurm, debug).
"""

from cxrbench.sweep.config import (
    EXECUTORS,
    CheckpointSpec,
    ClusterOptions,
    SweepConfig,
    config_from_mapping,
    load_config,
)
from cxrbench.sweep.executors import (
    SweepReporter,
    execute_jobs,
    make_submitit_executor,
    run_sweep,
    slurm_parameters,
)
from cxrbench.sweep.job import Job, JobOutcome, group_outcomes, run_single, safe_run_single
from cxrbench.sweep.planning import (
    STAGE_NAMES,
    SweepPlan,
    SweepSummary,
    check_runs_dir,
    chosen_lr,
    describe_jobs,
    plan_sweep,
    stage1_jobs,
    stage2_jobs,
)

__all__ = [
    "EXECUTORS",
    "STAGE_NAMES",
    "CheckpointSpec",
    "ClusterOptions",
    "Job",
    "JobOutcome",
    "SweepConfig",
    "SweepPlan",
    "SweepReporter",
    "SweepSummary",
    "check_runs_dir",
    "chosen_lr",
    "config_from_mapping",
    "describe_jobs",
    "execute_jobs",
    "group_outcomes",
    "load_config",
    "make_submitit_executor",
    "plan_sweep",
    "run_single",
    "run_sweep",
    "safe_run_single",
    "slurm_parameters",
    "stage1_jobs",
    "stage2_jobs",
]
