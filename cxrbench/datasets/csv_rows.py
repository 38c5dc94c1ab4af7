"""CSV reading that keeps row numbers, so every error can name the file and row; one duplicate rule."""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.errors import DataError

if TYPE_CHECKING:
    from cxrbench.datasets.base import Problems


def read_rows(
    path: Path, required: Sequence[str], delimiter: str = ",", expected_file: str = "a readable CSV file"
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number, row dict) with 1-based row numbers counting the header as row 1.

    `.gz` files are decompressed on the fly. A missing required column is a file-level error
    (nothing in the file can be trusted); so is a file that cannot be read to its end.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    number = 1
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
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
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, zlib.error) as exc:
        raise DataError(
            path, f"cannot read the file after row {number}: {exc}", expected=expected_file
        ) from exc


def parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def unique_rows(
    rows: Iterable[tuple[int, dict[str, str]]], path: Path, problems: Problems
) -> Iterator[tuple[int, dict[str, str]]]:
    """Drop exact repeats of an earlier row of the same file, reporting both row numbers.

    The one duplicate rule of every adapter: an identical annotation row counts once (a repeated
    box row would otherwise become a second ground-truth box), is reported as a problem naming the
    file and both rows, and stops `--strict`. Rows that repeat only a key (same image, other
    values) are the adapter's business.
    """
    first_row: dict[tuple[tuple[str, str], ...], int] = {}
    for number, row in rows:
        key = tuple(sorted(row.items()))
        first = first_row.setdefault(key, number)
        if first != number:
            problems.add(
                path,
                f"identical to row {first} (a duplicate annotation counts once); row skipped",
                row=number,
                expected="each annotation row once",
            )
            continue
        yield number, row
