"""The consoles every command prints to: one for output (stdout), one for errors (stderr).

Rich reads the terminal width (and COLUMNS) when it prints, not when the console is made, so one
module-level console serves every command invocation.
"""

from __future__ import annotations

from rich.console import Console

console = Console()
error_console = Console(stderr=True)
