"""User-facing errors: the CLI prints these as one clear message instead of a stack trace."""

from __future__ import annotations

from pathlib import Path


class CxrbenchError(Exception):
    """An error caused by the user's input or environment, with an actionable message."""


class DataError(CxrbenchError):
    """Malformed raw data: names the file, the row (when there is one) and what was expected."""

    def __init__(self, file: str | Path, message: str, row: int | None = None, expected: str | None = None):
        self.file = str(file)
        self.row = row
        self.expected = expected
        self.detail = message
        where = self.file if row is None else f"{self.file}, row {row}"
        text = f"{where}: {message}"
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class CheckpointError(CxrbenchError):
    """A checkpoint that cannot be loaded as an encoder (wrong, truncated or foreign)."""
