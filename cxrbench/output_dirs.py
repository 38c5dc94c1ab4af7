"""Claiming an output folder: cxrbench writes only where it cannot destroy a user's files.

One rule for every command that writes a folder. A folder may be written into when it does not
exist, is empty, or already holds what this command writes (recognised by a marker file that only
cxrbench creates). Anything else, an existing file, or an output that overlaps one of the command's
inputs (inside it, around it or the same folder) is refused with a message, and no `--force`
overrides that: `--force` may only replace cxrbench's own output.

The run-side commands (evaluate, sweep, leaderboard, pretrain, analyze run and correlate, demo) claim their folders with
`take_folder`, which also probes them with a real write and leaves the kind's marker file, before any
training. Names that become folder or file names pass `check_name`, the one rule for safe names.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrbench.errors import CxrbenchError, OutputDirError

ABSENT, EMPTY, OURS = "absent", "empty", "ours"
PROBE_PREFIX = ".cxrbench-write-probe."  # the write probe's temporary file (never a user's file)
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder a command writes: its marker file, and the files that show a folder of this kind
    written before cxrbench wrote markers (glob patterns allowed), so that existing output keeps working."""

    kind: str
    marker: str
    legacy: tuple[str, ...] = ()

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.marker, *self.legacy)


RUNS = FolderKind("runs directory", ".cxrbench-runs.json", ("*/*/run-*.json",))
LEADERBOARD = FolderKind("leaderboard folder", ".cxrbench-leaderboard.json", ("leaderboard.md",))
PRETRAIN = FolderKind("pre-training folder", ".cxrbench-pretrain.json", ("checkpoint.pt", "history.json"))
ANALYSIS = FolderKind("analysis folder", ".cxrbench-analysis.json", ("*__*.json",))
DEMO = FolderKind("demo folder", ".cxrbench-demo.json", ("prepared/*/prepared.json",))
STUDY = FolderKind("study folder", ".cxrbench-study.json")
# `sweep --logs-dir`: submitit's job folders (`<job id>/<job id>_submitted.pkl`, `..._log.out`, ...)
SWEEP_LOGS = FolderKind(
    "sweep logs folder", ".cxrbench-sweep-logs.json", ("*/*_submitted.pkl", "*/*_log.out")
)
# `analyze correlate --out`: its own folder, an analysis folder (the default output) or earlier output
CORRELATION = FolderKind(
    "correlation folder",
    ".cxrbench-correlation.json",
    (ANALYSIS.marker, "correlation_heatmap*__*.png", "within_uniformity_vs_score*__*.png"),
)


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
        if _has_marker(path, name):
            return ClaimedDir(path, OURS, name)
    entries = [e for e in entries if not e.startswith(PROBE_PREFIX)]  # another process's probe
    if not entries:
        return ClaimedDir(path, EMPTY)
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise OutputDirError(
        f"output folder {path} already holds files that are not a cxrbench {kind} ({shown}); "
        f"cxrbench writes only into a new or empty folder or over its own {kind} (even with --force): "
        "choose another output folder"
    )


def _has_marker(path: Path, name: str) -> bool:
    if _GLOB_CHARS & set(name):
        return any(p.is_file() for p in path.glob(name))
    return (path / name).is_file()


def probe_writable(path: str | Path, what: str) -> None:
    """Create `path` (a folder) and write, sync and remove a temporary file in it, so that a folder that
    cannot be written fails now, with one message, instead of after the first hour of training."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=path)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except PermissionError:
        raise OutputDirError(
            f"{what} {path} is not writable (permission denied): check its owner and mode, or choose another"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputDirError(f"no space left on device for the {what} {path}: free disk space") from None
        if isinstance(exc, NotADirectoryError | FileExistsError):
            blocker = next((p for p in (path, *path.parents) if p.exists()), path)
            raise OutputDirError(
                f"{what} {path} cannot be created: {blocker} is a file, not a directory"
            ) from None
        raise OutputDirError(f"{what} {path} is not writable: {exc.strerror or exc}") from None


def claim_folder(path: str | Path, kind: FolderKind, *, inputs: Sequence[str | Path] = ()) -> ClaimedDir:
    """`claim_output_dir` for a FolderKind: check only (nothing created)."""
    return claim_output_dir(path, marker=kind.markers, kind=kind.kind, inputs=inputs)


def take_folder(path: str | Path, kind: FolderKind, *, inputs: Sequence[str | Path] = ()) -> ClaimedDir:
    """Claim `path` as a `kind`, create it, probe that it is writable and leave the kind's marker in it.

    The marker is created with O_EXCL directly under its name (no temporary file), so a concurrent
    command claiming the same new folder sees either an empty folder or the marker, never a stranger.
    """
    claimed = claim_folder(path, kind, inputs=inputs)
    probe_writable(claimed.path, kind.kind)
    marker = claimed.path / kind.marker
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return claimed
    except OSError as exc:
        raise OutputDirError(f"cannot write {marker}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(
            {"cxrbench": kind.kind, "note": "written by cxrbench; marks a folder it may write into"}, fh
        )
    return claimed


def check_name(value: str, what: str = "--name") -> str:
    """Refuse a name that is not a safe single path component (it names folders and files): empty,
    '.', '..', a leading dot, a path separator or a control character. One rule for every name."""
    problem = None
    if not value or not value.strip():
        problem = "is empty"
    elif value.startswith("."):
        problem = "starts with a dot (hidden, or a parent folder)"
    elif "/" in value or "\\" in value:
        problem = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "contains a control character"
    elif len(value) > 128:
        problem = "is longer than 128 characters"
    if problem:
        raise CxrbenchError(
            f"{what} {value!r} {problem}; a name is one folder name, e.g. letters, digits, '-', '_', '.', '+'"
        )
    return value
