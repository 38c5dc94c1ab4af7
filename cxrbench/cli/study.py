"""`cxrbench study uniformity`: the CLI face of `cxrbench.study` (sections, progress, the k-of-N counts)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors

study_app = typer.Typer(
    no_args_is_help=True, help="Studies built from pre-training, evaluation and analysis."
)


@study_app.command("uniformity")
@reports_user_errors
def uniformity_command(
    data: Annotated[
        Path, typer.Option("--data", help="Prepared root (PREPARED/mimic_cxr and the tasks' datasets).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Study folder (new, empty, or an earlier study's: reused).")
    ],
    profile: Annotated[
        str, typer.Option("--profile", help="'demo' (brief) or 'full' (the protocol).")
    ] = "demo",
    seed: Annotated[int, typer.Option("--seed", help="Pre-training seed of every method.")] = 0,
    methods: Annotated[
        list[str] | None,
        typer.Option("--methods", help="Methods to pre-train (repeatable; must include global_attention)."),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            help="Comma-separated task ids or patterns (default: all 18; under --profile demo all but "
            "the three 100%-label RSNA tasks).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Processes that evaluate, one torch thread each (default: one per core, at most one "
            "per method). The numbers do not depend on it.",
        ),
    ] = None,
) -> None:
    """Pre-train global_attention, lovt and the uniformity priors with one seed and budget, evaluate,
    analyse, and count the tasks where each beats the global-only control significantly."""
    from cxrbench.cli.reporters import RichPretrainReporter, RichReporter
    from cxrbench.protocol.tasks import select_tasks
    from cxrbench.study import PHANTOM_NOTE, STUDY_METHODS, default_tasks, run_uniformity_study, tasks_note

    def reporter(name: str) -> RichReporter:
        console.print(f"[bold]{name}[/]")
        return RichReporter(console)

    chosen = select_tasks(tasks) if tasks else default_tasks(profile)
    console.print(f"[bold yellow]{PHANTOM_NOTE}[/]", highlight=False)
    console.print(tasks_note(chosen), highlight=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_uniformity_study(
            data,
            out,
            profile=profile,
            seed=seed,
            methods=methods or STUDY_METHODS,
            tasks=chosen,
            workers=workers,
            log=lambda msg: console.print(f"  {msg}", highlight=False),
            section=console.rule,
            reporter_factory=reporter,
            pretrain_reporter_factory=lambda: RichPretrainReporter(console),
        )
    for method, (k, n) in result.counts.items():
        console.print(f"{method}: beats global_attention significantly on {k} of {n} tasks", highlight=False)
    console.print(f"[bold yellow]{PHANTOM_NOTE}[/]", highlight=False)
    console.print(tasks_note(chosen), highlight=False)
    console.print(
        f"report: {escape(str(result.report))}; leaderboard: {escape(str(result.leaderboard))}",
        highlight=False,
    )
