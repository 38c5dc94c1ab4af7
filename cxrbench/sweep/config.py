"""A sweep's settings: the checkpoints, data, tasks, profile, executor and cluster resources, read
from YAML and/or CLI flags and validated into a `SweepConfig` (every mistake is one clear message).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cxrbench.errors import CxrbenchError
from cxrbench.output_dirs import check_name
from cxrbench.protocol.records import default_encoder_name
from cxrbench.protocol.tasks import Profile, get_profile, select_tasks

EXECUTORS = ("local", "submitit-local", "slurm", "debug")
SUBMITIT_EXECUTORS = ("submitit-local", "slurm")  # they write job folders into the logs folder


@dataclass(frozen=True)
class CheckpointSpec:
    """One encoder of the sweep: a file or 'random'/'imagenet', its name in records, overrides.

    `encoder` defaults to `default_encoder_name(spec)` (a YAML checkpoint gives it as `name:`)."""

    spec: str
    encoder: str | None = None
    arch: str | None = None
    prefix: str | None = None
    preset: str | None = None  # preprocessing preset name (None: what the checkpoint says)
    preprocessing: str | None = None  # the resolved preset's key, set by planning (part of run keys)

    def __post_init__(self) -> None:
        if self.encoder is None:
            object.__setattr__(self, "encoder", default_encoder_name(self.spec))


@dataclass(frozen=True)
class ClusterOptions:
    """Resources of one job on Slurm (and the time limit of submitit-local jobs)."""

    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int | None = None
    time_min: int = 240
    array_parallelism: int = 64


@dataclass
class SweepConfig:
    """Everything a sweep needs; built from YAML and/or CLI flags by `config_from_mapping`."""

    checkpoints: list[CheckpointSpec]
    data_root: Path
    runs_dir: Path = Path("runs")
    tasks: str | list[str] = "all"
    profile: Profile | str = "full"
    seeds: int | None = None
    executor: str = "local"
    workers: int | None = None
    device: str = "auto"
    amp: bool = True
    feature_cache: bool = True
    cache_memory_gb: float | None = None  # the feature cache's budgets (None: evaluate's defaults)
    cache_disk_gb: float | None = None
    compile: bool = False  # torch.compile encoder and head (recorded per run, not in the run key)
    logs_dir: Path | None = None  # submitit's job folders; default RUNS_DIR/.submitit
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    def resolved_profile(self) -> Profile:
        return self.profile if isinstance(self.profile, Profile) else get_profile(self.profile)


_TOP_KEYS = {f.name for f in fields(SweepConfig)} - {"data_root", "cluster"} | {"data", "slurm"}
_CLUSTER_KEYS = {f.name for f in fields(ClusterOptions)}
_CHECKPOINT_KEYS = {
    "spec",
    "name",
    "arch",
    "prefix",
    "preset",
}  # a checkpoint's YAML keys (`name` -> encoder)


def load_config(path: Path) -> dict[str, Any]:
    """Read a sweep YAML file into a plain mapping (validated by `config_from_mapping`)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CxrbenchError(f"cannot read sweep config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CxrbenchError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CxrbenchError(f"{path}: expected a mapping of sweep settings at the top level")
    return data


def config_from_mapping(mapping: Mapping[str, Any], source: str = "sweep config") -> SweepConfig:
    """Validate a YAML/flag mapping into a SweepConfig; every mistake is one clear message."""
    unknown = set(mapping) - _TOP_KEYS
    if unknown:
        raise CxrbenchError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_TOP_KEYS))}"
        )
    if not mapping.get("checkpoints"):
        raise CxrbenchError(f"{source}: no checkpoints given (a `checkpoints:` list or --checkpoint)")
    if not isinstance(mapping["checkpoints"], list):  # a bare string would become one checkpoint per letter
        raise CxrbenchError(
            f"{source}: `checkpoints` must be a list (one `- entry` per checkpoint), got {mapping['checkpoints']!r}"
        )
    if not mapping.get("data"):
        raise CxrbenchError(f"{source}: no prepared data root given (`data:` or --data)")
    _check_types(mapping, source)
    executor = mapping.get("executor", "local")
    if executor not in EXECUTORS:
        raise CxrbenchError(f"{source}: unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    slurm = mapping.get("slurm") or {}
    if not isinstance(slurm, Mapping) or set(slurm) - _CLUSTER_KEYS:
        raise CxrbenchError(f"{source}: `slurm:` takes the keys {', '.join(sorted(_CLUSTER_KEYS))}")
    for key in ("workers", "seeds"):
        value = mapping.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CxrbenchError(f"{source}: `{key}` must be an integer of 1 or more, got {value!r}")
    tasks = mapping.get("tasks", "all")
    select_tasks(tasks)  # unknown ids fail here
    return SweepConfig(
        checkpoints=[_checkpoint(c, source) for c in mapping["checkpoints"]],
        data_root=Path(mapping["data"]),
        runs_dir=Path(mapping.get("runs_dir") or "runs"),
        tasks=tasks,
        profile=_profile(mapping.get("profile", "full"), source),
        seeds=mapping.get("seeds"),
        executor=executor,
        workers=mapping.get("workers"),
        device=str(mapping.get("device", "auto")),
        amp=bool(mapping.get("amp", True)),
        feature_cache=bool(mapping.get("feature_cache", True)),
        cache_memory_gb=_budget(mapping, "cache_memory_gb", source),
        cache_disk_gb=_budget(mapping, "cache_disk_gb", source),
        compile=bool(mapping.get("compile", False)),
        logs_dir=Path(mapping["logs_dir"]) if mapping.get("logs_dir") else None,
        cluster=ClusterOptions(**slurm),
    )


def _check_types(mapping: Mapping[str, Any], source: str) -> None:
    """Paths, task lists, switches and cluster resources of the right YAML type, so that a mistake is
    one message (not a TypeError, and not `amp: 'false'` read as true)."""
    for key in ("data", "runs_dir", "logs_dir", "device"):
        value = mapping.get(key)
        if value is not None and not isinstance(value, str | Path):
            raise CxrbenchError(f"{source}: `{key}` must be a path or name (a string), got {value!r}")
    tasks = mapping.get("tasks", "all")
    if not isinstance(tasks, str) and not (
        isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)
    ):
        raise CxrbenchError(
            f"{source}: `tasks` must be 'all', a comma-separated string or a list of ids, got {tasks!r}"
        )
    for key in ("amp", "feature_cache", "compile"):
        if key in mapping and not isinstance(mapping[key], bool):
            raise CxrbenchError(f"{source}: `{key}` must be true or false, got {mapping[key]!r}")
    slurm = mapping.get("slurm") or {}
    for key, value in slurm.items():
        if value is None:
            continue
        if key in ("partition", "account"):
            if not isinstance(value, str):
                raise CxrbenchError(f"{source}: `slurm.{key}` must be a string, got {value!r}")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (0 if key == "gpus_per_job" else 1)
        ):
            least = 0 if key == "gpus_per_job" else 1
            raise CxrbenchError(
                f"{source}: `slurm.{key}` must be an integer of {least} or more, got {value!r}"
            )


def _budget(mapping: Mapping[str, Any], key: str, source: str) -> float | None:
    """A feature-cache budget in GiB (checked as `evaluate` checks its option), or None."""
    from cxrbench.protocol.feature_cache import budget_bytes

    value = mapping.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CxrbenchError(f"{source}: `{key}` must be a number of GiB, got {value!r}")
    budget_bytes(f"{source}: `{key}`", value, 0)
    return float(value)


def budget_settings(config: SweepConfig) -> tuple[int, int]:
    """The (memory, disk) feature-cache budgets in bytes of a sweep's runs."""
    from cxrbench.protocol.feature_cache import (
        DEFAULT_DISK_BUDGET_BYTES,
        DEFAULT_MEMORY_BUDGET_BYTES,
        budget_bytes,
    )

    return (
        budget_bytes("cache_memory_gb", config.cache_memory_gb, DEFAULT_MEMORY_BUDGET_BYTES),
        budget_bytes("cache_disk_gb", config.cache_disk_gb, DEFAULT_DISK_BUDGET_BYTES),
    )


def _checkpoint(entry: Any, source: str) -> CheckpointSpec:
    if isinstance(entry, str):
        name, sep, spec = entry.partition("=")
        return CheckpointSpec(spec, name) if sep else CheckpointSpec(entry)
    if isinstance(entry, Mapping) and "spec" in entry and not set(entry) - _CHECKPOINT_KEYS:
        values = {k: None if v is None else str(v) for k, v in entry.items()}
        return CheckpointSpec(
            values["spec"], values.get("name"), values.get("arch"), values.get("prefix"), values.get("preset")
        )
    raise CxrbenchError(
        f"{source}: a checkpoint is a path/'random'/'imagenet' or a mapping with keys "
        f"{', '.join(sorted(_CHECKPOINT_KEYS))} (spec required); got {entry!r}"
    )


def _profile(value: Any, source: str) -> Profile:
    """A profile name, or {base: NAME, name: NEW_NAME, <Profile field>: value, ...}."""
    if isinstance(value, Profile):
        return value
    if isinstance(value, str):
        return get_profile(value)
    valid = {f.name for f in fields(Profile)} | {"base"}
    if not isinstance(value, Mapping) or set(value) - valid:
        raise CxrbenchError(
            f"{source}: `profile` is a name or a mapping with keys {', '.join(sorted(valid))}"
        )
    overrides = {k: v for k, v in value.items() if k != "base"}
    base = get_profile(value.get("base", "full"))
    if overrides.keys() - {"name"} and overrides.get("name", base.name) == base.name:
        raise CxrbenchError(f"{source}: a modified profile needs its own `name` (not {base.name!r})")
    check_name(str(overrides.get("name", base.name)), f"{source}: profile name")
    return replace(base, **overrides)
