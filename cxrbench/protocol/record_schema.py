"""The run record: its typed fields, its schema version, how one is built, checked and upgraded.

Every record cxrbench writes is assembled by `make_record` and checked by `validate_record`; every
record it reads goes through `parse_record`, which upgrades older versions it knows in memory
(`cxrbench rescore RUNS_DIR` rewrites them on disk) and refuses versions it does not know.

Version history:
- 1: ``checkpoint.sha256`` held the file's sha256, or ``"random:<arch>"`` for random weights.
- 2: ``checkpoint.identity`` holds what identifies the weights (the file's sha256, or
  ``"random:<arch>"``) and ``checkpoint.sha256`` only a real file's digest (else null); ``traceback``,
  ``encoder_load``, ``timings``, ``n_images`` and ``sweep`` are present in every record (null when
  they do not apply).
- 3: ``metrics_version`` names the metric definitions that computed ``val``, ``test`` and
  ``test_per_image`` (`METRICS_VERSION`; records before it used version 1). The leaderboard refuses
  records of an older metrics version; `cxrbench rescore` recomputes them from their predictions files.
- 4: the per-image statistics live in a binary sidecar beside the record (`cxrbench.protocol.sidecar`):
  ``per_image_sidecar`` holds its file name, sha256 and manifest, and ``test_per_image`` on disk only
  the entries that are not lists (readers see the full statistics, read from the sidecar on first use).
  Older records carry them inline (``per_image_sidecar`` null); `cxrbench rescore` moves them out.
  Later additions to version 4 (readers fill them in as null for records written before): the cost
  fields (``encoder_parameters``, ``head_parameters``, ``peak_memory_*``, ``train_images_per_s``,
  ``grad_checkpointing``), ``compiled`` (whether the run used `torch.compile`, `--compile`) and
  ``feature_cache_kind`` (where frozen features were kept: "memory", "disk" or "none"); how the run
  was executed, never part of the run key or the protocol hash.
"""

from __future__ import annotations

import math
import re
import traceback as tb
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from cxrbench.errors import CxrbenchError
from cxrbench.protocol.tasks import METRICS_VERSION
from cxrbench.provenance import provenance

if TYPE_CHECKING:
    from cxrbench.protocol.records import RunSpec
    from cxrbench.protocol.tasks import Task
    from cxrbench.protocol.training import RunResult

SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
PRE_METRICS_VERSION = 1  # the metric definitions of records written before `metrics_version` existed
LR_SEARCH = "lr_search"
FINAL = "final"
PHASES = (LR_SEARCH, FINAL)
STATUSES = ("ok", "failed")
TASK_SETTINGS = ("batch_size", "max_epochs", "patience", "warmup_steps", "mode", "head", "percent")

_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointInfo(TypedDict):
    spec: str  # as the user gave it: a path, "random" or "imagenet"
    path: str | None  # the resolved file path (null for "random"/"imagenet")
    identity: str  # part of the run key: the weights' sha256, or "random:<arch>"
    sha256: str | None  # the weights file's sha256 (null when no file was read)


class EncoderLoad(TypedDict):
    arch: str
    prefix: str | None
    fraction_loaded: float


class SweepInfo(TypedDict):
    executor: str
    host: str
    slurm_job_id: str | None


class RescoreNote(TypedDict):
    time: str
    git_commit: str
    old_test: dict[str, float] | None


class _RunRecordFields(TypedDict):
    """The fields every run record has."""

    schema_version: int
    run_id: str  # unique per execution (uuid4 hex)
    run_key: str  # 24 hex digits: encoder, checkpoint identity, task, profile, protocol hash, phase, lr, seed
    encoder: str  # the encoder's name in tables and in the runs folder
    checkpoint: CheckpointInfo
    task_id: str
    dataset: str
    metric: str  # the task's primary metric: "dice", "map" or "froc"
    metrics_version: int  # the metric definitions that computed val, test and test_per_image
    phase: Literal["lr_search", "final"]
    seed: int
    lr: float
    protocol_hash: str
    profile: str
    resolution: int
    task_settings: dict[str, Any]
    device: str
    encoder_load: EncoderLoad | None  # null when the run failed before its encoder was loaded
    feature_cache: bool | None
    versions: dict[str, str]
    git_commit: str
    created: str
    status: Literal["ok", "failed"]
    error: str | None
    traceback: str | None
    val: dict[str, float]
    test: dict[str, float]
    test_per_image: Mapping[str, Any] | None  # on disk only the non-list entries (version 4)
    per_image_sidecar: dict[str, Any] | None  # the sidecar's file, sha256 and manifest (null: inline or none)
    history: list[dict[str, float]]
    best_epoch: int | None
    timings: dict[str, float]
    wall_time_s: float
    n_images: dict[str, int] | None
    predictions: str | None  # file name of the predictions .npz beside the record
    sweep: SweepInfo | None  # where a `cxrbench sweep` job ran (null for `cxrbench evaluate`)
    # The split of the run's data (`SplitIdentity.as_dict()`: scheme, lists_sha256, subset, seed); part
    # of the protocol hash. Absent in records written before it was recorded (read as "unrecorded").
    splits: dict[str, Any]


class RunRecord(_RunRecordFields, total=False):
    """One training run, one JSON file (the comments above say what each field holds)."""

    rescored: list[RescoreNote]  # appended by `cxrbench rescore`, one note per re-scoring that changed values
    # Written since encoder presets and costs exist (absent from older records, which stay readable):
    preprocessing: dict[str, Any] | None  # the encoder's input preset (encoders/presets.py: Preprocessing)
    encoder_parameters: int | None  # all encoder parameters
    head_parameters: int | None  # trainable head parameters (any neck/adapter included)
    peak_memory_bytes: int | None  # CUDA max allocated, or the process's peak RSS on the CPU
    peak_memory_source: str | None  # "cuda_max_allocated" | "cpu_max_rss"
    train_images_per_s: float | None  # training images per second of optimiser steps
    grad_checkpointing: bool | None  # whether the encoder recomputed activations (fine-tune tasks)
    compiled: bool | None  # whether encoder and head ran through torch.compile (`--compile`)
    feature_cache_kind: str | None  # "memory", "disk" or "none" (`feature_cache` says only whether)


class RecordError(CxrbenchError):
    """A JSON file that is a run record but cannot be used as one (a missing or mistyped field)."""


class UnsupportedVersion(RecordError):
    """A run record of a schema version this cxrbench cannot read."""


# Top-level fields a reader relies on, with their JSON types (checked on read and before writing).
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "run_id": str,
    "encoder": str,
    "task_id": str,
    "metric": str,
    "phase": str,
    "status": str,
    "protocol_hash": str,
    "metrics_version": int,
}
OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "lr": (int, float),
    "seed": int,
    "checkpoint": dict,
    "val": dict,
    "test": dict,
    "test_per_image": (Mapping, type(None)),
    "per_image_sidecar": (dict, type(None)),
    "history": list,
    "predictions": (str, type(None)),
    "preprocessing": (dict, type(None)),
    "encoder_parameters": (int, type(None)),
    "head_parameters": (int, type(None)),
    "peak_memory_bytes": (int, type(None)),
    "train_images_per_s": (int, float, type(None)),
    "splits": dict,
    "feature_cache_kind": (str, type(None)),
}
COST_FIELDS = (
    "encoder_parameters",
    "head_parameters",
    "peak_memory_bytes",
    "peak_memory_source",
    "train_images_per_s",
    "grad_checkpointing",
    "compiled",
)
# Fields added to the current version after records were written: filled in as null when absent.
ADDED_FIELDS = (*COST_FIELDS, "feature_cache_kind")


def sha256_of_identity(identity: str | None) -> str | None:
    """The file digest inside a checkpoint identity, or None for built-in weights ("random:<arch>")."""
    return identity if isinstance(identity, str) and _SHA256.fullmatch(identity) else None


def checkpoint_info(spec: str, path: str | None, identity: str) -> CheckpointInfo:
    return {"spec": spec, "path": path, "identity": identity, "sha256": sha256_of_identity(identity)}


def make_record(
    spec: RunSpec,
    checkpoint: CheckpointInfo,
    *,
    device: str,
    outcome: RunResult | BaseException,
    wall_time_s: float,
    encoder_load: EncoderLoad | None = None,
    n_images: dict[str, int] | None = None,
    sweep: SweepInfo | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> RunRecord:
    """The record of one finished run: `outcome` is the training result, or the exception that failed it."""
    task = spec.task
    failed = isinstance(outcome, BaseException)
    record: RunRecord = {
        "schema_version": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex,
        "run_key": spec.key,
        "encoder": spec.encoder,
        "checkpoint": checkpoint,
        "task_id": spec.task_id,
        "dataset": task.dataset,
        "metric": task.metric,
        "metrics_version": METRICS_VERSION,
        "phase": spec.phase,  # type: ignore[typeddict-item]
        "seed": spec.seed,
        "lr": spec.lr,
        "protocol_hash": spec.protocol_hash,
        "profile": spec.profile.name,
        "resolution": spec.profile.resolution,
        "task_settings": task_settings(task),
        "device": device,
        "encoder_load": encoder_load,
        "feature_cache": None if failed else outcome.used_feature_cache,
        "feature_cache_kind": None if failed else outcome.feature_cache_kind,
        **provenance(),
        "status": "failed" if failed else "ok",
        "error": f"{type(outcome).__name__}: {outcome}" if failed else None,
        "traceback": "".join(tb.format_exception(outcome, limit=8)) if failed else None,
        "val": {} if failed else outcome.val,
        "test": {} if failed else outcome.test,
        "test_per_image": None if failed else outcome.test_per_image,
        "history": [] if failed else outcome.history,
        "best_epoch": None if failed else outcome.best_epoch,
        "timings": {} if failed else outcome.timings,
        "wall_time_s": wall_time_s,
        "n_images": None if failed else n_images,
        "predictions": None,
        "per_image_sidecar": None,  # set by `write_record`
        "sweep": sweep,
        "preprocessing": preprocessing,
        "splits": spec.split_identity.as_dict(),
    }
    cost = {} if failed else getattr(outcome, "cost", {})
    for key in COST_FIELDS:
        record[key] = cost.get(key)  # type: ignore[literal-required]
    return record


def task_settings(task: Task) -> dict[str, Any]:
    return {k: getattr(task, k) for k in TASK_SETTINGS}


def validate_record(obj: Any, source: str = "run record") -> RunRecord:
    """`obj` as a current-version record; RecordError naming `source` and the field otherwise."""
    if not isinstance(obj, Mapping):
        raise RecordError(f"{source}: a run record is a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise RecordError(f"{source}: run record without {', '.join(missing)}")
    if obj["schema_version"] != SCHEMA_VERSION:
        raise RecordError(
            f"{source}: run record schema_version {obj['schema_version']!r}, expected {SCHEMA_VERSION}"
        )
    for key, kind in (*REQUIRED.items(), *OPTIONAL.items()):
        numeric = kind is int or (isinstance(kind, tuple) and int in kind)
        if key in obj and (not isinstance(obj[key], kind) or (isinstance(obj[key], bool) and numeric)):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise RecordError(f"{source}: run record field {key!r} is {obj[key]!r}, expected {expected}")
    for key, valid in (("phase", PHASES), ("status", STATUSES)):
        if obj[key] not in valid:
            raise RecordError(f"{source}: run record {key} {obj[key]!r}, expected one of {', '.join(valid)}")
    return obj  # type: ignore[return-value]


def parse_record(obj: Any, source: str = "run record") -> tuple[RunRecord, bool]:
    """(record in the current version, whether it was upgraded from an older one).

    Raises RecordError for a version this cxrbench cannot read (naming `cxrbench rescore`) or a
    record whose fields are missing or of the wrong type."""
    version = obj.get("schema_version") if isinstance(obj, Mapping) else None
    if isinstance(version, bool | float):  # True == 1 and 3.0 == 3: never a version cxrbench wrote
        version = repr(version)
    if isinstance(obj, Mapping) and "schema_version" in obj and version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise UnsupportedVersion(
            f"{source}: run record schema_version {version!r} cannot be read by this cxrbench "
            f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))}; "
            + (
                "that record needs a newer cxrbench)"
                if newer
                else "no upgrade exists for it: re-run its task with `cxrbench evaluate`)"
            )
        )
    upgraded = version in (1, 2, 3)
    checkpoint = obj.get("checkpoint") if version == 1 else None
    if checkpoint is not None and not isinstance(checkpoint, Mapping):  # upgrade_v1 reads it as a dict
        raise RecordError(f"{source}: run record field 'checkpoint' is {checkpoint!r}, expected dict")
    if version == 1:
        obj = upgrade_v1(obj)
    if version in (1, 2):
        obj = upgrade_v2(obj)
    if upgraded:
        obj = upgrade_v3(obj)
    if isinstance(obj, Mapping) and any(k not in obj for k in ADDED_FIELDS):
        obj = {**obj, **{k: None for k in ADDED_FIELDS if k not in obj}}
    return validate_record(obj, source), upgraded


def upgrade_v1(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 record as version 2 (lossless: the old sha256 field becomes the identity)."""
    record = dict(obj)
    old = dict(record.get("checkpoint") or {})
    identity = old.pop("sha256", None)
    record["checkpoint"] = {**old, "identity": identity, "sha256": sha256_of_identity(identity)}
    for key in ("traceback", "encoder_load", "n_images", "sweep"):
        record.setdefault(key, None)
    record.setdefault("timings", {})
    record["schema_version"] = 2
    return record


def upgrade_v2(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A version-2 record as version 3: its values were computed with the first metric definitions."""
    return {**obj, "schema_version": 3, "metrics_version": PRE_METRICS_VERSION}


def upgrade_v3(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A version-3 record as version 4: its statistics stay inline until `write_record` moves them out."""
    record = dict(obj)
    record.setdefault("per_image_sidecar", None)
    record["schema_version"] = SCHEMA_VERSION
    return record


def stale_metrics(record: Mapping[str, Any]) -> bool:
    """Whether an ok record's values come from older metric definitions (`cxrbench rescore` updates it)."""
    return is_ok(record) and record.get("metrics_version") != METRICS_VERSION


def is_ok(record: Mapping[str, Any] | None) -> bool:
    """Whether a run finished (a record that exists and says so): finished runs are never re-run."""
    return record is not None and record.get("status") == "ok"


def primary_value(record: Mapping[str, Any], split: str = "test") -> float:
    """The record's primary metric on `split` ("val" or "test"); NaN when absent or not a number."""
    value = (record.get(split) or {}).get(record.get("metric"))
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def usable_runs(
    records: Iterable[Mapping[str, Any] | None], phase: str | None = FINAL, split: str = "test"
) -> list[RunRecord]:
    """The ok runs of `phase` (any phase for None) with a finite primary value on `split`, in order:
    the runs every score (leaderboard, overlays, correlations, lr choice) is computed from."""
    return [
        r  # type: ignore[misc]
        for r in records
        if is_ok(r) and (phase is None or r.get("phase") == phase) and math.isfinite(primary_value(r, split))
    ]
