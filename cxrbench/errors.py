"""User-facing errors: the CLI prints these as one clear message instead of a stack trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _rebuild(cls: type[CxrbenchError], args: tuple, state: dict[str, Any]) -> CxrbenchError:
    """Unpickle without calling `__init__` (subclasses may take other arguments than `args`)."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class CxrbenchError(Exception):
    """An error caused by the user's input or environment, with an actionable message.

    Picklable with all attributes, whatever a subclass's `__init__` takes, so that an error raised
    in a worker process reaches the parent intact (naming its file and row) instead of breaking the pool.
    """

    def __reduce__(self) -> tuple:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class RunFailedError(CxrbenchError):
    """A training run that started and failed (e.g. its loss became NaN): not bad input, so exit code 1."""

    exit_code = 1


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


class DamagedCacheError(CxrbenchError):
    """A prepared cache whose files are missing, truncated or altered: names the file and the fix."""


class OutputDirError(CxrbenchError):
    """An output location that cxrbench refuses to write into (it would overwrite the user's files)."""


def check_count(option: str, value: int | None, minimum: int = 1) -> int | None:
    """Refuse a count option below its minimum (e.g. `--seeds 0`, which would silently do nothing)."""
    if value is not None and value < minimum:
        raise CxrbenchError(f"{option} {value} is out of range: use {minimum} or more")
    return value
