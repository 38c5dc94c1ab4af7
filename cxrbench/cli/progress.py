"""The one look of every progress display of the CLI (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cxrbench.cli.console import console as default_console


def make_progress(*extra: ProgressColumn, console: Console | None = None) -> Progress:
    """description, bar, done/total, elapsed time, then `extra` columns (e.g. a status text)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra,
        console=console or default_console,
    )


def progress_bar() -> Progress:
    """A plain bar with the remaining time (data commands: phantom, prepare)."""
    return make_progress(TimeRemainingColumn())
