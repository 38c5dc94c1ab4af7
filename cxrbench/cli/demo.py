"""`cxrbench demo`: the CLI face of `cxrbench.demo` (sections, progress bars, the final table)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors


@reports_user_errors
def demo_cmd(
    out: Annotated[
        Path, typer.Option(help="Output folder (phantom data, prepared caches, runs, leaderboard).")
    ] = Path("demo_out"),
) -> None:
    """The embedded default end to end on synthetic phantom data (re-running reuses finished work)."""
    from cxrbench.cli.reporters import RichPretrainReporter, RichReporter
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
