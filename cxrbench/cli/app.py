"""The `cxrbench` command line: thin wrappers that parse options, call the library and print."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    Progress,
    TimeRemainingColumn,
)
from rich.table import Table

from cxrbench.cli.errors import user_error_exit
from cxrbench.cli.progress import make_progress
from cxrbench.errors import CxrbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Chest X-ray localized-task benchmark.")
console = Console()


def command(name: str | None = None) -> Callable:
    """Register a CLI command that turns CxrbenchError into one red line and exit code 2."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except CxrbenchError as exc:
                raise user_error_exit(exc) from None

        app.command(name)(wrapper)
        return wrapper

    return decorate


def progress_bar() -> Progress:
    return make_progress(console, TimeRemainingColumn())


@command("phantom")
def phantom_cmd(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write OUT_DIR/<dataset>/ raw phantom data into.")
    ],
    dataset: Annotated[str, typer.Option(help="Dataset name or 'all'.")] = "all",
    n_images: Annotated[
        int | None, typer.Option(help="Images per dataset (default: per-dataset demo size).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write synthetic chest X-ray datasets in each dataset's real raw layout and formats."""
    from cxrbench.datasets import DATASET_NAMES
    from cxrbench.datasets.phantom import write_phantom

    names = list(DATASET_NAMES) if dataset == "all" else [dataset]
    with progress_bar() as bar:
        task = bar.add_task("phantom", total=len(names))
        for name in names:
            bar.update(task, description=f"phantom {name}")
            write_phantom(name, out_dir / name, n_images, seed)
            bar.advance(task)
    console.print(f"phantom data written to {out_dir}/{{{','.join(names)}}}")


@command("verify")
def verify_cmd(
    dataset: Annotated[str, typer.Argument(help="Dataset adapter name.")],
    raw_dir: Annotated[Path, typer.Argument(help="The raw download folder.")],
) -> None:
    """Check a raw download's layout and annotation rows; list every problem with file and row."""
    from cxrbench.datasets import get_adapter

    report = get_adapter(dataset).verify(raw_dir)
    for path in report.missing:
        console.print(f"[red]missing[/] {escape(path)}", highlight=False)
    for path in report.extra[:50]:
        console.print(f"[yellow]extra[/] {escape(path)} (not listed in the annotations)", highlight=False)
    if len(report.extra) > 50:
        console.print(f"[yellow]... {len(report.extra) - 50} more extra files[/]")
    for problem in report.problems:
        console.print(f"[red]bad row[/] {escape(str(problem))}", highlight=False)
    for key, count in report.info.items():
        console.print(f"[cyan]info[/] {count} images {key.replace('_', ' ')} (excluded by design)")
    summary = f"{dataset}: {report.n_samples} samples, {len(report.missing)} missing, {len(report.extra)} extra, {len(report.problems)} malformed rows"
    if report.ok:
        console.print(f"[green]OK[/] {summary}")
        return
    console.print(
        f"[red]FAILED[/] {escape(summary)}\nexpected layout:\n{escape(report.expected_layout)}",
        highlight=False,
    )
    raise typer.Exit(1)


@command("prepare")
def prepare_cmd(
    dataset: Annotated[str, typer.Argument(help="Dataset adapter name.")],
    raw_dir: Annotated[Path, typer.Argument(help="The raw download folder.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the prepared cache.")],
    size: Annotated[int, typer.Option(help="Prepared image side in pixels.")] = 224,
    strict: Annotated[bool, typer.Option(help="Treat skipped rows/images as errors.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing cache made with other settings.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes for decoding images.")] = 1,
) -> None:
    """Convert a raw download (or phantom) into the prepared cache that every task reads."""
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.prepare import prepare

    adapter = get_adapter(dataset)
    with progress_bar() as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = bar.add_task(f"prepare {dataset}", total=None)
        summary = prepare(
            adapter,
            raw_dir,
            out_dir,
            size=size,
            strict=strict,
            force=force,
            workers=workers,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if summary.reused:
        console.print(f"{out_dir} is already prepared with these settings; nothing to do.")
        return
    for problem in summary.problems:
        console.print(f"[yellow]warning[/] {escape(str(problem))}", highlight=False)
    table = Table(title=f"prepared {dataset} -> {out_dir}")
    for col in ("split", "images"):
        table.add_column(col)
    for split, count in summary.counts.items():
        table.add_row(split, str(count))
    console.print(table)
    for key, count in summary.info.items():
        console.print(f"[cyan]info[/] {count} images {key.replace('_', ' ')} (excluded by design)")
    console.print(
        f"skipped rows: {summary.skipped_rows}, skipped images: {summary.skipped_images}"
        + (" (see warnings above; --strict makes them errors)" if summary.problems else "")
    )


@command("tasks")
def tasks_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    profile: Annotated[str, typer.Option(help="Show the tasks as this profile runs them.")] = "full",
) -> None:
    """List the 18 protocol tasks (PROTOCOL.md) and the protocol hash."""
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
    table = Table(title=f"cxrbench protocol ({profile} profile, hash {protocol_hash(prof)})")
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


@command("evaluate")
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
        str | None, typer.Option(help="resnet18/34/50/101 (auto-detected from the checkpoint).")
    ] = None,
    feature_cache: Annotated[bool, typer.Option(help="Cache frozen-encoder features (frozen tasks).")] = True,
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.")] = True,
) -> None:
    """Score one encoder checkpoint on the protocol tasks; one JSON record per training run."""
    from cxrbench.cli.evaluate_progress import RichReporter, summary_table
    from cxrbench.encoders import format_load_report, load_encoder
    from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
    from cxrbench.protocol.tasks import get_profile, select_tasks

    label = name or (checkpoint if checkpoint in ("random", "imagenet") else Path(checkpoint).stem)
    selected = select_tasks(tasks)
    loaded = load_encoder(checkpoint, arch=arch, prefix=prefix)  # fail fast with a clear message
    console.print(format_load_report(loaded.report), highlight=False)
    options = EvaluateOptions(
        data_root=data,
        runs_dir=runs_dir,
        encoder=label,
        profile=get_profile(profile),
        seeds=seeds,
        device=device,
        amp=amp,
        use_feature_cache=feature_cache,
        prefix=prefix,
        arch=arch or loaded.report.arch,
    )
    with RichReporter(console) as reporter:
        outcomes = evaluate_checkpoint(checkpoint, selected, options, reporter)
    console.print(summary_table(label, outcomes))
    console.print(f"run records: {runs_dir / label}")


@command("demo")
def demo_cmd(
    out: Annotated[
        Path, typer.Option(help="Output folder (phantom data, prepared caches, runs, leaderboard).")
    ] = Path("demo_out"),
) -> None:
    """The embedded default end to end on synthetic phantom data (re-running reuses finished work)."""
    from cxrbench.cli.evaluate_progress import RichReporter
    from cxrbench.cli.pretrain import RichPretrainReporter
    from cxrbench.demo import run_demo

    def reporter(name: str) -> RichReporter:
        console.print(f"[bold]{name}[/]")
        return RichReporter(console)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_demo(
            out,
            log=lambda msg: console.print(f"  {msg}"),
            section=console.rule,
            reporter_factory=reporter,
            pretrain_reporter_factory=lambda: RichPretrainReporter(console),
        )
    console.print(result.markdown, highlight=False)
    console.print(
        "[bold]Phantom numbers are not medical results[/]: they show that every code path runs and learns."
    )
    console.print(
        f"leaderboard: {out / 'leaderboard'} (Markdown, CSV, LaTeX, HTML, plots); run records: {out / 'runs'}"
    )


def _register_subcommands() -> None:
    """Commands whose implementation lives next to the library code they drive."""
    from cxrbench.cli.analyze import analyze_command
    from cxrbench.cli.leaderboard import leaderboard_command, rescore_command
    from cxrbench.cli.pretrain import pretrain_command
    from cxrbench.cli.sweep import sweep_command

    command("leaderboard")(leaderboard_command)
    command("rescore")(rescore_command)
    command("analyze")(analyze_command)
    command("sweep")(sweep_command)
    command("pretrain")(pretrain_command)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
