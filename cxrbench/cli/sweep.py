"""`cxrbench sweep`: the command-line face of `cxrbench.sweep` (progress, dry run, summary).

Registered by the main CLI; also runnable on its own as `python -m cxrbench.cli.sweep CONFIG.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors

if TYPE_CHECKING:
    from cxrbench.sweep import SweepPlan, SweepSummary

# The executors of `cxrbench.sweep` (written out so that --help need not import the sweep engine; a test
# checks this list against the engine's).
EXECUTOR_NAMES = ("local", "submitit-local", "slurm", "debug")
_MAX_ERRORS_SHOWN = 20


def summary_table(summary: SweepSummary) -> Table:
    from cxrbench.sweep import group_outcomes

    table = Table(title="sweep summary (runs per encoder and task)")
    for col in ("encoder", "task", "lr (final)", "done", "skipped", "failed"):
        table.add_column(col)
    for (label, task_id), outcomes in sorted(group_outcomes(summary.outcomes).items()):
        lr = summary.chosen_lr.get((label, task_id))
        n = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped")}
        failed = sum(o.status in ("failed", "error") for o in outcomes)
        table.add_row(
            label, task_id, "-" if lr is None else f"{lr:g}", str(n["ok"]), str(n["skipped"]), str(failed)
        )
    return table


def dry_run_table(plan: SweepPlan) -> Table:
    from cxrbench.sweep import describe_jobs

    rows = describe_jobs(plan)
    table = Table(title=f"sweep plan: {sum(r[0] is not None for r in rows)} runs (dry run, nothing executed)")
    for col in ("encoder", "task", "phase", "lr", "seeds", "state"):
        table.add_column(col)
    for job, label, task_id, phase in rows:
        if job is None:
            table.add_row(label, task_id, phase, "best of stage 1", f"0..{plan.seeds - 1}", "after stage 1")
        else:
            table.add_row(
                label, task_id, phase, f"{job.lr:g}", str(job.seed), "done" if job.is_done() else "pending"
            )
    return table


@reports_user_errors
def sweep_command(
    config: Annotated[
        Path | None, typer.Argument(help="Sweep YAML (see examples/sweep.yaml); flags override its values.")
    ] = None,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--checkpoint", "-c", help="Checkpoint file, 'random' or 'imagenet', as SPEC or NAME=SPEC."
        ),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="PREPARED_ROOT with one prepared dataset each.")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated task ids/datasets, or 'all'.")] = None,
    profile: Annotated[str | None, typer.Option(help="'full' (the protocol) or 'demo'.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Final runs per task (default: the profile's).")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Where run records are written.")] = None,
    executor: Annotated[str | None, typer.Option(help=f"One of {', '.join(EXECUTOR_NAMES)}.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Jobs at once for local executors (default: one per GPU, or 1).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="'auto', 'cpu', 'cuda', ...")] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture of --checkpoint encoders.")] = None,
    prefix: Annotated[str | None, typer.Option(help="State-dict prefix of --checkpoint encoders.")] = None,
    preset: Annotated[
        str | None, typer.Option(help="Input preset of --checkpoint encoders (see `cxrbench encoders`).")
    ] = None,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account.")] = None,
    gpus_per_job: Annotated[int | None, typer.Option(help="GPUs per job (Slurm, submitit-local).")] = None,
    cpus_per_job: Annotated[int | None, typer.Option(help="CPUs per Slurm job.")] = None,
    mem_gb: Annotated[int | None, typer.Option(help="Memory per Slurm job in GB.")] = None,
    time_min: Annotated[int | None, typer.Option(help="Time limit per job in minutes.")] = None,
    time_from_probe: Annotated[
        bool,
        typer.Option(
            help="Size the per-job time limit from `cxrbench plan`'s throughput probe on this machine "
            "(1.5x the longest estimated run); --time-min wins."
        ),
    ] = False,
    array_parallelism: Annotated[int | None, typer.Option(help="Slurm jobs running at once.")] = None,
    logs_dir: Annotated[
        Path | None, typer.Option(help="submitit job folders (default RUNS_DIR/.submitit).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the jobs and exit.")] = False,
) -> None:
    """Run checkpoints x tasks x lr grid x seeds as independent jobs (local pool, submitit or Slurm)."""
    from cxrbench.cli.reporters import RichSweepReporter
    from cxrbench.sweep import config_from_mapping, load_config, plan_sweep, run_sweep

    mapping = load_config(config) if config is not None else {}
    flags = {
        "data": data, "tasks": tasks, "profile": profile, "seeds": seeds, "runs_dir": runs_dir,
        "executor": executor, "workers": workers, "device": device, "logs_dir": logs_dir,
    }  # fmt: skip
    mapping.update({k: v for k, v in flags.items() if v is not None})
    if checkpoint:
        mapping["checkpoints"] = [_flag_checkpoint(c, arch, prefix, preset) for c in checkpoint]
    cluster = {
        "partition": partition, "account": account, "gpus_per_job": gpus_per_job,
        "cpus_per_job": cpus_per_job, "mem_gb": mem_gb, "time_min": time_min,
        "array_parallelism": array_parallelism,
    }  # fmt: skip
    mapping["slurm"] = {
        **(mapping.get("slurm") or {}),
        **{k: v for k, v in cluster.items() if v is not None},
    }
    sweep_config = config_from_mapping(mapping, str(config) if config else "sweep options")
    if time_from_probe and time_min is None:
        import dataclasses

        from cxrbench.sweep.planning import estimated_time_min

        limit = estimated_time_min(sweep_config)
        if limit is not None:
            sweep_config.cluster = dataclasses.replace(sweep_config.cluster, time_min=limit)
            console.print(f"per-job time limit from the throughput probe: {limit} min", highlight=False)
    if dry_run:
        console.print(dry_run_table(plan_sweep(sweep_config, check_writable=False)))
        return
    with RichSweepReporter(console) as reporter:
        summary = run_sweep(sweep_config, reporter)
    console.print(summary_table(summary))
    _print_problems(console, summary)
    console.print(
        f"run records: {escape(str(sweep_config.runs_dir))} (build tables with `cxrbench leaderboard`)",
        highlight=False,
    )
    if not summary.ok:
        raise typer.Exit(1)


def _flag_checkpoint(
    entry: str, arch: str | None, prefix: str | None, preset: str | None
) -> dict[str, str | None]:
    name, sep, spec = entry.partition("=")
    return {
        "spec": spec if sep else entry,
        "name": name if sep else None,
        "arch": arch,
        "prefix": prefix,
        "preset": preset,
    }


def _print_problems(console: Console, summary: SweepSummary) -> None:
    bad = [o for o in summary.outcomes if o.status in ("failed", "error")]
    for outcome in bad[:_MAX_ERRORS_SHOWN]:
        console.print(
            f"[red]{outcome.status}[/] {escape(outcome.job.describe())}: {escape(str(outcome.error))}",
            highlight=False,
        )
    if len(bad) > _MAX_ERRORS_SHOWN:
        console.print(f"... and {len(bad) - _MAX_ERRORS_SHOWN} more; see the records' `error` fields")
    for blocked in summary.blocked:
        console.print(
            f"[yellow]blocked[/] {escape(str(blocked))}: its lr search is incomplete, so no final runs yet"
        )
    if bad or summary.blocked:
        console.print("re-run the same sweep to retry failed and missing runs (finished ones are skipped)")


def main() -> None:
    typer.run(sweep_command)


if __name__ == "__main__":
    main()
