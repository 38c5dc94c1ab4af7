"""How every command reports a user error: one red line on stderr (markup-escaped) and exit code 2
(1 for a run that started and failed, `RunFailedError`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from cxrbench.cli.console import error_console
from cxrbench.errors import CxrbenchError

F = TypeVar("F", bound=Callable[..., Any])


def user_error_exit(exc: CxrbenchError) -> typer.Exit:
    """Print `exc` as one clear line (paths with brackets survive) and return the Exit to raise."""
    error_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(getattr(exc, "exit_code", 2))


def reports_user_errors(fn: F) -> F:
    """Wrap a command so that a CxrbenchError (bad input) becomes one red line and exit code 2.

    Applied where a command is defined, so the command behaves the same on the main app and on any
    app a test or a `python -m` entry point registers it on.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CxrbenchError as exc:
            raise user_error_exit(exc) from None

    return wrapper  # type: ignore[return-value]
