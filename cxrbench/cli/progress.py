"""One look for every progress display of the CLI (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)


def make_progress(console: Console, *extra: ProgressColumn) -> Progress:
    """description, bar, done/total, elapsed time, then `extra` columns (e.g. a status text)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra,
        console=console,
    )
