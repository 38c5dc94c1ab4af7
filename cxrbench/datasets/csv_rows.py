"""CSV reading that keeps row numbers, so every error can name the file and row."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from cxrbench.errors import DataError


def read_rows(
    path: Path, required: Sequence[str], delimiter: str = ","
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number, row dict) with 1-based row numbers counting the header as row 1.

    A missing required column is a file-level error: nothing in the file can be trusted.
    """
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(path, f"cannot open: {exc}") from exc
    with fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        absent = [c for c in required if c not in header]
        if absent:
            raise DataError(
                path,
                f"missing column(s) {', '.join(absent)}; found {', '.join(header) or 'no header'}",
                row=1,
                expected=f"columns {', '.join(required)}",
            )
        for number, row in enumerate(reader, start=2):
            yield number, {k: (v or "").strip() for k, v in row.items() if k is not None}


def parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value
