"""How every command reports a user error: one red line on stderr (markup-escaped) and exit code 2."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from cxrbench.errors import CxrbenchError


def user_error_exit(exc: CxrbenchError) -> typer.Exit:
    """Print `exc` as one clear line (paths with brackets survive) and return the Exit to raise."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(2)
