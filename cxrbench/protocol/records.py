"""Run records on disk: where a run's record lives (its `RunSpec`), writing one, reading them back.

A record's file name is derived from its run key (encoder name, checkpoint identity, task,
profile, protocol hash, phase, lr, seed), so re-running a command finds finished runs and skips
them, and a crashed or repeated run can never leave two records for the same run. Each record
still carries its own unique `run_id`. What a record holds is defined in `record_schema`; its per-image statistics live in a sidecar
(`sidecar`), written before the record and read lazily after it.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from cxrbench.datasets.split_scheme import SplitIdentity, full_reference_identity
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_write_json, stable_hash
from cxrbench.protocol.bootstrap import SIDECAR_ARRAY, stored_replicates
from cxrbench.protocol.predictions import write_predictions
from cxrbench.protocol.record_schema import (
    FINAL,
    PHASES,
    READABLE_VERSIONS,
    RecordError,
    RunRecord,
    UnsupportedVersion,
    is_ok,
    parse_record,
    stale_metrics,
    validate_record,
)
from cxrbench.protocol.sidecar import SidecarStats, remove_stale, write_sidecar
from cxrbench.protocol.tasks import METRICS_VERSION, TASKS_BY_ID, Profile, Task, protocol_hash

SOURCE_KEY = "_source"  # where a record read by `scan_records` came from (never written to disk)


def run_key(
    encoder: str,
    checkpoint_identity: str | None,
    task_id: str,
    profile: str,
    protocol_hash: str,
    phase: str,
    lr: float,
    seed: int,
    preprocessing: str | None = None,
) -> str:
    """`preprocessing` is the key of a non-default preset (encoders.presets); None for the protocol's
    dataset statistics, which keeps the keys of runs written before presets existed."""
    payload = {
        "encoder": encoder,
        "checkpoint": checkpoint_identity,
        "task": task_id,
        "profile": profile,
        "protocol": protocol_hash,
        "phase": phase,
        "lr": float(lr),
        "seed": int(seed),
    }
    if preprocessing is not None:
        payload["preprocessing"] = preprocessing
    return stable_hash(payload)[:24]


def record_path(runs_dir: Path, encoder: str, task_id: str, key: str) -> Path:
    return Path(runs_dir) / safe_name(encoder) / task_id / f"run-{key}.json"


def safe_name(name: str) -> str:
    """A folder-safe version of a user-given encoder name."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name) or "encoder"


def default_encoder_name(spec: str | Path) -> str:
    """The encoder's name when none is given: "random"/"imagenet", or the checkpoint file's stem."""
    from cxrbench.encoders import is_builtin

    return str(spec) if is_builtin(spec) else Path(spec).stem


@dataclass(frozen=True)
class RunSpec:
    """One training run of the protocol: what identifies it, hence its run key and record file.

    `encoder` is the encoder's name in tables; `identity` what identifies its weights (the
    checkpoint's sha256, or "random:<arch>"); `phase` is "lr_search" or "final"."""

    encoder: str
    identity: str
    task_id: str
    phase: str
    lr: float
    seed: int
    profile: Profile
    # The protocol task itself when it is not in the registry (a task built in a test or an
    # experiment); None looks `task_id` up in the registry.
    protocol_task: Task | None = None
    # The key of the encoder's preprocessing preset (Preprocessing.key); None: the dataset statistics.
    preprocessing: str | None = None
    # The split of the run's data (its prepared cache's `split_identity`); None: the published
    # protocol's, the full reference split lists.
    splits: SplitIdentity | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if self.protocol_task is None and self.task_id not in TASKS_BY_ID:
            raise CxrbenchError(f"unknown task {self.task_id!r}")
        if self.protocol_task is not None and self.protocol_task.task_id != self.task_id:
            raise ValueError(
                f"task id {self.task_id!r} does not match the task {self.protocol_task.task_id!r}"
            )

    @cached_property
    def split_identity(self) -> SplitIdentity:
        return self.splits or full_reference_identity()

    @cached_property
    def protocol_hash(self) -> str:
        return protocol_hash(self.profile, self.split_identity)

    @property
    def task(self) -> Task:
        """The task with the profile's scaling applied (what the run trains)."""
        return self.profile.apply(self.protocol_task or TASKS_BY_ID[self.task_id])

    @cached_property
    def key(self) -> str:
        return run_key(
            self.encoder,
            self.identity,
            self.task_id,
            self.profile.name,
            self.protocol_hash,
            self.phase,
            self.lr,
            self.seed,
            self.preprocessing,
        )

    def record_path(self, runs_dir: Path) -> Path:
        return record_path(runs_dir, self.encoder, self.task_id, self.key)

    def describe(self) -> str:
        return f"{self.encoder} {self.task_id} {self.phase} lr={self.lr:g} seed={self.seed}"


def write_record(
    path: Path,
    record: RunRecord,
    predictions: dict[str, np.ndarray] | None = None,
    bootstrap: bool = True,
) -> None:
    """Write the predictions file and the per-image statistics sidecar first, then the record (so a
    record never points at nothing), then remove the record's outdated sidecars.

    ``bootstrap``: store the run's replicates of the default bootstrap settings in the sidecar (ok
    final runs), so leaderboards never resample it (`cxrbench.protocol.bootstrap`)."""
    path = Path(path)
    record.pop(SOURCE_KEY, None)  # type: ignore[misc]
    if predictions:
        pred_path = path.with_suffix(".npz")
        write_predictions(pred_path, predictions)
        record["predictions"] = pred_path.name
    on_disk = dict(record)
    on_disk["test_per_image"], on_disk["per_image_sidecar"] = _store_per_image(path, record, bootstrap)
    validate_record(on_disk, str(path))
    atomic_write_json(path, on_disk)
    record["per_image_sidecar"] = on_disk["per_image_sidecar"]
    remove_stale(path, keep=(on_disk["per_image_sidecar"] or {}).get("file"))


def _store_per_image(path: Path, record: RunRecord, bootstrap: bool) -> tuple[dict | None, dict | None]:
    """(the inline part of test_per_image, the sidecar reference) for the record written at `path`."""
    per_image = record.get("test_per_image")
    if per_image is None:
        return None, None
    if (
        isinstance(per_image, SidecarStats)
        and per_image.path.parent.resolve() == path.parent.resolve()
        and per_image.path.name.startswith(f"{path.stem}.")
        and per_image.path.is_file()
        and (not bootstrap or not _wants_replicates(record) or "bootstrap" in per_image.ref)
    ):
        return per_image.inline, per_image.ref  # unchanged statistics: keep the file
    extra, settings = {}, None
    if bootstrap and _wants_replicates(record):
        try:
            extra[SIDECAR_ARRAY], settings = stored_replicates(record["metric"], record["task_id"], per_image)
        except (CxrbenchError, KeyError, TypeError, ValueError, IndexError) as exc:
            warnings.warn(f"{path}: bootstrap replicates not stored ({exc})", stacklevel=3)
            extra = {}
    ref, inline = write_sidecar(path, per_image, extra)
    if ref is not None and settings is not None:
        ref["bootstrap"] = settings
    return inline, ref


def _wants_replicates(record: RunRecord) -> bool:
    return is_ok(record) and record.get("phase") == FINAL


def attach_sidecar(record: RunRecord, path: Path, source: str) -> RunRecord:
    """Make a read record's ``test_per_image`` the full statistics, read from its sidecar on first use."""
    ref = record.get("per_image_sidecar")
    if ref is None:
        return record
    if not (
        isinstance(ref, dict) and isinstance(ref.get("file"), str) and isinstance(ref.get("sha256"), str)
    ):
        raise RecordError(
            f"{source}: run record field 'per_image_sidecar' is {ref!r}, expected file and sha256"
        )
    inline = record.get("test_per_image") or {}
    record["test_per_image"] = SidecarStats(Path(path).parent / Path(ref["file"]).name, ref, inline)
    return record


def read_record(path: Path) -> RunRecord | None:
    """The record at `path` (upgraded to the current version), or None when absent or unusable (the
    run is then re-run and its record replaced): unreadable, invalid, or its sidecar missing. A record
    of a schema version this cxrbench cannot read is refused (UnsupportedVersion), never overwritten."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    try:
        record = attach_sidecar(parse_record(obj, str(path))[0], path, str(path))
    except UnsupportedVersion:
        raise
    except RecordError:
        return None
    stats = record.get("test_per_image")
    if isinstance(stats, SidecarStats) and not stats.path.is_file():
        return None
    return record


def predictions_file(record: dict) -> Path | None:
    """The predictions .npz of a record read by `scan_records` (None when it has none)."""
    name = record.get("predictions")
    if not name or SOURCE_KEY not in record:
        return None
    return Path(record[SOURCE_KEY]).parent / name


@dataclass(frozen=True)
class RecordScan:
    """Records found under the runs directories, the files skipped (path, reason), and the files
    read from an older schema version (upgraded in memory; `cxrbench rescore` rewrites them)."""

    records: list[RunRecord]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    upgraded: list[Path] = field(default_factory=list)


def scan_records(runs_dirs: Path | str | Iterable[Path | str]) -> RecordScan:
    """Read every ``*.json`` run record below the directories; warn about and skip unreadable ones.

    JSON files that do not look like run records at all (no ``run_id``/``schema_version``) are
    ignored silently; files that do but cannot be parsed or miss keys are skipped with a warning;
    records of a schema version this cxrbench cannot read are refused (one error naming them all).
    Each returned record carries its file path under ``"_source"``.
    """
    dirs = [Path(runs_dirs)] if isinstance(runs_dirs, str | Path) else [Path(d) for d in runs_dirs]
    records: list[RunRecord] = []
    skipped: list[tuple[Path, str]] = []
    upgraded: list[Path] = []
    unreadable: list[str] = []
    seen: set[Path] = set()  # the same file reached twice (a directory given twice, or nested) is read once
    for root in dirs:
        if not root.is_dir():
            raise CxrbenchError(
                f"runs directory {root} does not exist (pass the --runs-dir of cxrbench evaluate)"
            )
        for path in sorted(root.rglob("*.json")):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                _skip(skipped, path, f"not valid JSON ({exc})")
                continue
            if not isinstance(obj, dict) or not ({"run_id", "schema_version"} & obj.keys()):
                continue
            try:
                record, was_upgraded = parse_record(obj, str(path))
                attach_sidecar(record, path, str(path))
            except UnsupportedVersion:
                unreadable.append(f"{path} (schema_version {obj['schema_version']!r})")
                continue
            except RecordError as exc:
                _skip(skipped, path, str(exc).removeprefix(f"{path}: "))
                continue
            if was_upgraded:
                upgraded.append(path)
            record[SOURCE_KEY] = str(path)  # type: ignore[literal-required]
            records.append(record)
    if unreadable:
        shown = "\n".join(f"  {u}" for u in unreadable[:10])
        more = f"\n  and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise UnsupportedVersion(
            f"run records of a schema version this cxrbench cannot read (it reads {readable}):\n{shown}{more}\n"
            "no upgrade exists for them: re-run their tasks with `cxrbench evaluate` (older versions) or "
            "use a newer cxrbench (newer versions)"
        )
    return RecordScan(records, skipped, upgraded)


def _skip(skipped: list[tuple[Path, str]], path: Path, reason: str) -> None:
    warnings.warn(f"skipping {path}: {reason}", stacklevel=3)
    skipped.append((path, reason))


def load_records(runs_dirs: Path | str | Iterable[Path | str]) -> list[RunRecord]:
    """The run records below the runs directories (see `scan_records` for what is skipped)."""
    return scan_records(runs_dirs).records


def check_metrics_versions(records: Sequence[dict]) -> None:
    """Refuse final ok records whose values come from other metric definitions than this cxrbench's
    (older ones name `cxrbench rescore`, which recomputes them from their predictions files)."""
    stale = [r for r in records if r.get("phase") == FINAL and stale_metrics(r)]
    if not stale:
        return
    listed = "\n".join(
        f"  {r.get(SOURCE_KEY, r['run_id'])} (metrics_version {r.get('metrics_version')!r})"
        for r in stale[:10]
    )
    more = f"\n  and {len(stale) - 10} more" if len(stale) > 10 else ""
    newer = [
        r
        for r in stale
        if isinstance(r.get("metrics_version"), int) and r["metrics_version"] > METRICS_VERSION
    ]
    advice = (
        "they were scored by a newer cxrbench: use that version"
        if len(newer) == len(stale)
        else "run `cxrbench rescore RUNS_DIR` to recompute them from their predictions files "
        "(a run without one must be re-run with `cxrbench evaluate`)"
    )
    raise CxrbenchError(
        f"{len(stale)} run record(s) were scored with other metric definitions than this cxrbench's "
        f"(metrics_version {METRICS_VERSION}):\n{listed}{more}\n{advice}"
    )


def check_records(records: Sequence[dict], allow_mixed: bool = False) -> list[str]:
    """Refuse duplicate run ids, records scored with older metric definitions, mixed split schemes,
    and mixed protocols/checkpoints unless allowed; return table notes."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for rec in records:
        by_id[str(rec["run_id"])].append(rec.get(SOURCE_KEY, "<in memory>"))
    dups = {rid: files for rid, files in by_id.items() if len(files) > 1}
    if dups:
        lines = [f"  {rid}: {', '.join(files)}" for rid, files in sorted(dups.items())]
        raise CxrbenchError(
            "duplicate run ids (copied run records are not independent runs):\n" + "\n".join(lines)
        )
    check_metrics_versions(records)
    final = [r for r in records if r.get("phase") == FINAL]
    schemes = sorted({_scheme_of(r) for r in final})
    if len(schemes) > 1:  # never allowed: a table compares encoders on one kind of split
        raise CxrbenchError(
            "records on different kinds of data split cannot share a table: "
            + _listing(final, _scheme_of, schemes)
            + "\nPrepare every dataset with one `cxrbench prepare --splits` (reference, the default, or "
            "patient) and re-run, or build one leaderboard per kind of split (pass their runs directories "
            "separately)"
        )
    problems = []
    # The protocol hash covers all tasks and the profile, so one table must hold a single hash.
    hashes = sorted({_hash_of(r) for r in final})
    if len(hashes) > 1:
        problems.append(("protocol hashes", "the table: " + _listing(final, _hash_of, hashes)))
    for encoder in sorted({str(r["encoder"]) for r in final}):
        mine = [r for r in final if str(r["encoder"]) == encoder]
        identities = sorted({_checkpoint_of(r) for r in mine})
        if len(identities) > 1:
            problems.append(
                ("checkpoints", f"encoder {encoder}: " + _listing(mine, _checkpoint_of, identities))
            )
    if problems and not allow_mixed:
        detail = "\n".join(f"  different {label} in {where}" for label, where in problems)
        raise CxrbenchError(
            f"records that are not comparable:\n{detail}\nRe-run them under one protocol and checkpoint, "
            "or pass allow_mixed (--allow-mixed) to flag them instead"
        )
    return [f"mixed {label} allowed in {where}" for label, where in problems]


def _scheme_of(rec: dict) -> str:
    """The kind of split a record's data used ("reference", "patient", or "unrecorded" for old records)."""
    return SplitIdentity.from_dict(rec.get("splits")).scheme


def _hash_of(rec: dict) -> str:
    return str(rec["protocol_hash"])


def _checkpoint_of(rec: dict) -> str:
    return str((rec.get("checkpoint") or {}).get("identity"))


def _listing(records: Sequence[dict], value_of, values: Sequence[str], limit: int = 3) -> str:
    """Each value with a few of the encoder/task pairs whose records carry it (for messages)."""
    parts = []
    for value in values:
        pairs = sorted({f"{r['encoder']}/{r['task_id']}" for r in records if value_of(r) == value})
        more = f" and {len(pairs) - limit} more" if len(pairs) > limit else ""
        parts.append(f"{value} ({', '.join(pairs[:limit])}{more})")
    return "; ".join(parts)
