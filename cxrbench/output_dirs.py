"""Claiming an output folder: cxrbench writes only where it cannot destroy a user's files.

One rule for every command that writes a folder. A folder may be written into when it does not
exist, is empty, or already holds what this command writes (recognised by a marker file that only
cxrbench creates). Anything else, an existing file, or an output that overlaps one of the command's
inputs (inside it, around it or the same folder) is refused with a message, and no `--force`
overrides that: `--force` may only replace cxrbench's own output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrbench.errors import OutputDirError

ABSENT, EMPTY, OURS = "absent", "empty", "ours"


@dataclass(frozen=True)
class ClaimedDir:
    """A folder cxrbench may write into, and what it held: 'absent', 'empty' or 'ours' (a marker)."""

    path: Path
    state: str
    marker: str | None = None


def _overlap(output: Path, source: Path) -> str | None:
    """How `output` overlaps `source` (None when they are disjoint)."""
    out, src = output.resolve(), source.resolve()
    if out == src:
        return "is the same folder as"
    if src in out.parents:
        return "lies inside"
    if out in src.parents:
        return "contains"
    return None


def claim_output_dir(
    path: str | Path,
    *,
    marker: str | Sequence[str],
    kind: str,
    inputs: Sequence[str | Path] = (),
) -> ClaimedDir:
    """Check that `path` may be written as a `kind` (e.g. "prepared cache"); raise OutputDirError if not.

    `marker` names the file(s) whose presence shows the folder was written by cxrbench as a `kind`
    (a finished one, or the in-progress marker of an interrupted one). Nothing is created or deleted.
    """
    path = Path(path)
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    for source in inputs:
        how = _overlap(path, Path(source))
        if how:
            raise OutputDirError(
                f"output folder {path} {how} the input folder {source}; choose an output folder "
                "outside the input (cxrbench never writes into its own input)"
            )
    if path.is_symlink() and not path.exists():
        raise OutputDirError(f"output {path} is a broken symbolic link; remove it or choose another folder")
    if not path.exists():
        return ClaimedDir(path, ABSENT)
    if not path.is_dir():
        raise OutputDirError(f"output {path} is an existing file, not a folder; choose another output folder")
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise OutputDirError(f"cannot list output folder {path}: {exc.strerror or exc}") from exc
    if not entries:
        return ClaimedDir(path, EMPTY)
    for name in markers:
        if (path / name).is_file():
            return ClaimedDir(path, OURS, name)
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise OutputDirError(
        f"output folder {path} already holds files that are not a cxrbench {kind} ({shown}); "
        f"cxrbench writes only into a new or empty folder or over its own {kind} (even with --force): "
        "choose another output folder"
    )
