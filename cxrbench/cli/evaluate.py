"""Protocol commands: `tasks` (the 18 tasks and the protocol hash) and `evaluate` (score one encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors
from cxrbench.cli.plan import CACHE_DISK_OPTION, CACHE_MEMORY_OPTION

if TYPE_CHECKING:
    from cxrbench.protocol.runner import TaskOutcome


@reports_user_errors
def tasks_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    profile: Annotated[str, typer.Option(help="Show the tasks as this profile runs them.")] = "full",
) -> None:
    """List the 18 protocol tasks and the protocol hash (with the full reference splits)."""
    import json
    from dataclasses import asdict

    from cxrbench.protocol.tasks import TASKS, get_profile, protocol_hash

    prof = get_profile(profile)
    tasks = [prof.apply(t) for t in TASKS]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "protocol_hash": protocol_hash(prof),
                    "profile": asdict(prof),
                    "tasks": [asdict(t) for t in tasks],
                },
                indent=2,
            )
        )
        return
    table = Table(
        title=f"cxrbench protocol ({profile} profile, hash {protocol_hash(prof)} with the full reference "
        "splits; runs on other splits carry their own)"
    )
    for col in (
        "#",
        "task id",
        "dataset",
        "head",
        "encoder",
        "train %",
        "metric",
        "batch",
        "lr",
        "lr grid",
        "epochs",
        "patience",
        "warm-up",
    ):
        table.add_column(col)
    for k, t in enumerate(tasks, 1):
        table.add_row(
            str(k),
            t.task_id,
            t.dataset,
            t.head,
            t.mode,
            f"{t.percent:g}",
            t.metric,
            str(t.batch_size),
            f"{t.default_lr:g}",
            ", ".join(f"{lr:g}" for lr in t.lr_grid),
            str(t.max_epochs),
            str(t.patience),
            str(t.warmup_steps or "-"),
        )
    console.print(table)


@reports_user_errors
def evaluate_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Encoder checkpoint file, or 'random' / 'imagenet'.")],
    data: Annotated[
        Path, typer.Option("--data", help="PREPARED_ROOT holding one prepared dataset per adapter name.")
    ],
    tasks: Annotated[str, typer.Option(help="Comma-separated task ids or dataset names, or 'all'.")] = "all",
    profile: Annotated[str, typer.Option(help="'full' (the protocol) or 'demo'.")] = "full",
    seeds: Annotated[
        int | None, typer.Option(help="Runs at the chosen lr (default: the profile's, 5 for full).")
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run records are written.")] = Path("runs"),
    name: Annotated[
        str | None, typer.Option(help="Encoder name in records and tables (default: file stem).")
    ] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda', 'cuda:1', ...")] = "auto",
    prefix: Annotated[
        str | None, typer.Option(help="State-dict key prefix of the encoder (auto-detected).")
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture (auto-detected from the checkpoint): resnet18/34/50/101/152, densenet121, "
            "convnext_tiny, swin_tiny_patch4_window7_224, or a ViT such as vit_base_patch16 or "
            "vit_w768_d12_h12_patch14 (width, depth, heads, patch)."
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Input preprocessing preset (see `cxrbench encoders`; default: what the checkpoint says)."
        ),
    ] = None,
    grad_checkpointing: Annotated[
        bool,
        typer.Option(
            "--grad-checkpointing", help="Fine-tune tasks: recompute encoder activations (less memory)."
        ),
    ] = False,
    feature_cache: Annotated[bool, typer.Option(help="Cache frozen-encoder features (frozen tasks).")] = True,
    cache_memory_gb: Annotated[float | None, CACHE_MEMORY_OPTION] = None,
    cache_disk_gb: Annotated[float | None, CACHE_DISK_OPTION] = None,
    compile: Annotated[
        bool, typer.Option("--compile", help="Run encoder and head through torch.compile (recorded per run).")
    ] = False,
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.")] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the cost plan (as `cxrbench plan`) and train nothing.")
    ] = False,
) -> None:
    """Score one encoder checkpoint on the protocol tasks; one JSON record per training run."""
    if dry_run:
        from cxrbench.cli.plan import print_plan

        print_plan(
            checkpoint,
            data,
            tasks,
            profile,
            seeds,
            device,
            arch,
            prefix,
            True,
            cache_memory_gb,
            cache_disk_gb,
        )
        return
    from cxrbench.cli.reporters import RichReporter
    from cxrbench.encoders import format_load_report, load_encoder
    from cxrbench.encoders.presets import describe_preset
    from cxrbench.errors import check_count
    from cxrbench.output_dirs import RUNS, check_name, claim_folder, take_folder
    from cxrbench.protocol.feature_cache import (
        DEFAULT_DISK_BUDGET_BYTES,
        DEFAULT_MEMORY_BUDGET_BYTES,
        budget_bytes,
    )
    from cxrbench.protocol.record_schema import is_ok
    from cxrbench.protocol.records import default_encoder_name
    from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint, run_preprocessing
    from cxrbench.protocol.task_data import open_task_dataset
    from cxrbench.protocol.tasks import get_profile, select_tasks
    from cxrbench.runtime import resolve_device

    # Everything that can be refused is refused before any training (exit 2, one line).
    label = (
        check_name(name) if name is not None else check_name(default_encoder_name(checkpoint), "encoder name")
    )
    check_count("--seeds", seeds)
    memory_budget = budget_bytes("--cache-memory-gb", cache_memory_gb, DEFAULT_MEMORY_BUDGET_BYTES)
    disk_budget = budget_bytes("--cache-disk-gb", cache_disk_gb, DEFAULT_DISK_BUDGET_BYTES)
    selected = select_tasks(tasks)
    chosen_profile = get_profile(profile)
    resolve_device(device)
    for dataset in dict.fromkeys(t.dataset for t in selected):
        open_task_dataset(data, dataset)  # a wrong --data is refused before the runs dir is created
    claim_folder(runs_dir, RUNS)
    loaded = load_encoder(checkpoint, arch=arch, prefix=prefix)  # fail fast with a clear message
    console.print(escape(format_load_report(loaded.report)), highlight=False)
    chosen = run_preprocessing(checkpoint, loaded, preset)
    console.print(f"  input: {describe_preset(chosen)}", highlight=False)
    take_folder(runs_dir, RUNS)  # created, write-probed and marked before the first run
    options = EvaluateOptions(
        data_root=data,
        runs_dir=runs_dir,
        encoder=label,
        profile=chosen_profile,
        seeds=seeds,
        device=device,
        amp=amp,
        use_feature_cache=feature_cache,
        cache_budget_bytes=memory_budget,
        cache_disk_budget_bytes=disk_budget,
        prefix=prefix,
        arch=arch or loaded.report.arch,
        preset=preset,
        grad_checkpointing=grad_checkpointing,
        compile=compile,
    )
    with RichReporter(console) as reporter:
        outcomes = evaluate_checkpoint(checkpoint, selected, options, reporter)
    console.print(summary_table(label, outcomes))
    console.print(f"run records: {escape(str(runs_dir / label))}", highlight=False)
    failed = [r for o in outcomes for r in o.records if not is_ok(r)]
    if failed:
        console.print(
            f"[red]{len(failed)} run(s) failed[/] (see the records' `error` fields); "
            "re-run the same command to retry them (finished runs are skipped)",
            highlight=False,
        )
        raise typer.Exit(1)


def summary_table(encoder: str, outcomes: list[TaskOutcome]) -> Table:
    """Per task: the chosen lr, finished and failed final runs, mean and sd of the test metric."""
    import numpy as np

    from cxrbench.protocol.record_schema import FINAL, is_ok, primary_value, usable_runs

    table = Table(title=f"{escape(encoder)}: test metric over final runs")
    for col in ("task", "metric", "lr", "runs ok", "failed", "mean", "sd"):
        table.add_column(col)
    for outcome in outcomes:
        finals = [r for r in outcome.records if r.get("phase") == FINAL]
        ok = [r for r in finals if is_ok(r)]
        values = np.array([primary_value(r) for r in usable_runs(finals)], dtype=float)
        failed = len(finals) - len(ok)
        mean = f"{values.mean():.4f}" if len(values) else "-"
        sd = f"{values.std(ddof=1):.4f}" if len(values) > 1 else "-"
        table.add_row(
            outcome.task.task_id, outcome.task.metric, f"{outcome.lr:g}", str(len(ok)), str(failed), mean, sd
        )
    return table
