"""`cxrbench evaluate`: one checkpoint over a set of tasks -> one run record per training run.

Per task: one run per lr of the grid (phase "lr_search", seed 0; skipped when the grid has a
single lr), the best validation metric picks the lr, then `seeds` runs at that lr (phase
"final", seeds 0..N-1). Finished runs are found by their run key and skipped, so an interrupted
evaluation resumes without losing or duplicating anything. A run that fails (e.g. NaN loss) is
recorded as failed with its error and the others continue; it is retried on the next invocation.

Every run, of `evaluate` and of `cxrbench sweep` alike, goes through `run_one`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cxrbench.encoders import LoadedEncoder, is_builtin, load_encoder
from cxrbench.encoders.presets import DATASET_PRESET, PRESETS, Preprocessing, resolve_preprocessing
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.feature_cache import DEFAULT_BUDGET_BYTES, DEFAULT_DISK_BUDGET_BYTES, FeatureStore
from cxrbench.protocol.record_schema import (
    FINAL,
    LR_SEARCH,
    EncoderLoad,
    RunRecord,
    SweepInfo,
    checkpoint_info,
    is_ok,
    make_record,
    primary_value,
    usable_runs,
)
from cxrbench.protocol.records import RunSpec, read_record, write_record
from cxrbench.protocol.task_data import TaskSplit, load_task_split, open_task_dataset
from cxrbench.protocol.tasks import Profile, Task
from cxrbench.protocol.training import train_run
from cxrbench.runtime import resolve_device

SPLITS = ("train", "val", "test")


@dataclass
class EvaluateOptions:
    data_root: Path
    runs_dir: Path
    encoder: str  # the encoder's name in records and tables
    profile: Profile
    seeds: int | None = None
    device: str = "auto"
    amp: bool = True
    use_feature_cache: bool = True
    cache_budget_bytes: int = DEFAULT_BUDGET_BYTES  # the feature cache's memory budget
    cache_disk_budget_bytes: int = DEFAULT_DISK_BUDGET_BYTES
    prefix: str | None = None
    arch: str | None = None
    preset: str | None = None  # a preprocessing preset name; None: what the checkpoint says
    grad_checkpointing: bool = False  # fine-tune tasks: recompute encoder activations in backward
    compile: bool = False  # torch.compile encoder and head (recorded, not part of the protocol hash)


class Reporter:
    """Progress callbacks; the CLI subclasses this with a rich display. All no-ops here."""

    def planned(self, n_tasks: int) -> None: ...
    def task_started(self, task: Task, n_runs: int) -> None: ...
    def run_started(self, task: Task, phase: str, lr: float, seed: int) -> None: ...
    def epoch(self, task: Task, entry: dict) -> None: ...
    def run_finished(self, task: Task, record: dict, skipped: bool) -> None: ...
    def finished(self) -> None: ...


@dataclass
class TaskOutcome:
    task: Task
    lr: float
    records: list[dict] = field(default_factory=list)


@dataclass
class RunInputs:
    """What a run trains on. `evaluate` loads it once per task; a sweep job once for its one run.

    `initial_state` (when given) is loaded into the encoder before the run, so runs sharing one
    encoder object all start from the same weights (fine-tune runs modify it)."""

    loaded: LoadedEncoder
    data: dict[str, TaskSplit]
    n_classes: int
    device: torch.device
    initial_state: dict | None = None
    preprocessing: Preprocessing | None = None  # None: the protocol's dataset statistics
    # frozen features shared by the runs of these inputs (one task's); None: each run caches its own
    feature_store: FeatureStore | None = None


@dataclass(frozen=True)
class RunOutcome:
    record: RunRecord
    skipped: bool  # finished before: the record was found, nothing ran


def checkpoint_identity(spec: str | Path, loaded: LoadedEncoder) -> str:
    """What identifies the encoder weights: the file's sha256, or the name and arch (random init)."""
    return loaded.report.sha256 or f"{spec}:{loaded.report.arch}"


def checkpoint_path(spec: str | Path) -> str | None:
    """The resolved checkpoint file, None for the built-in 'random'/'imagenet'."""
    return None if is_builtin(spec) else str(Path(spec).resolve())


def load_task_data(
    dataset, task: Task, profile: Profile, preprocessing: Preprocessing | None = None
) -> dict[str, TaskSplit]:
    """The train/val/test splits of one task from its opened prepared dataset, normalised per `preprocessing`."""
    data = {split: load_task_split(dataset, task, split, profile) for split in SPLITS}
    for split in data.values():
        split.preprocessing = preprocessing
    return data


def run_preprocessing(
    checkpoint: str | Path, loaded: LoadedEncoder, preset: str | None = None
) -> Preprocessing:
    """The input preset of an encoder's runs (explicit, from its checkpoint, or an error listing presets)."""
    return resolve_preprocessing(
        checkpoint,
        loaded.report.arch,
        getattr(loaded.encoder, "in_chans", 3),
        preset,
        builtin=is_builtin(checkpoint),
        layout_preset=getattr(loaded.encoder, "default_preset", None),
    )


def run_one(
    spec: RunSpec,
    runs_dir: Path,
    checkpoint: str | Path,
    inputs: Callable[[], RunInputs],
    *,
    device: str = "auto",
    amp: bool = True,
    use_feature_cache: bool = True,
    cache_budget_bytes: int = DEFAULT_BUDGET_BYTES,
    cache_disk_budget_bytes: int = DEFAULT_DISK_BUDGET_BYTES,
    reporter: Reporter | None = None,
    sweep: SweepInfo | None = None,
    grad_checkpointing: bool = False,
    compile: bool = False,
) -> RunOutcome:
    """Run one training run and write its record, unless a finished record is already there.

    `inputs` is called only when the run has to run; anything it or training raises (except
    KeyboardInterrupt) is recorded as a failed run, retried by the next invocation. `device` is the
    requested device, recorded when the run fails before the inputs resolve it.
    """
    reporter = reporter or Reporter()
    task = spec.task
    path = spec.record_path(runs_dir)
    existing = read_record(path)
    if is_ok(existing):
        reporter.run_finished(task, existing, skipped=True)
        return RunOutcome(existing, True)
    reporter.run_started(task, spec.phase, spec.lr, spec.seed)
    start = time.perf_counter()
    encoder_load: EncoderLoad | None = None
    n_images = None
    predictions = None
    preprocessing = None
    try:
        given = inputs()
        device = str(given.device)
        loaded = given.loaded
        encoder_load = {
            "arch": loaded.report.arch,
            "prefix": loaded.report.prefix,
            "fraction_loaded": loaded.report.fraction_loaded,
        }
        if checkpoint_identity(checkpoint, loaded) != spec.identity:
            raise CxrbenchError(f"checkpoint {checkpoint} changed since its runs were planned")
        chosen = given.preprocessing or PRESETS[DATASET_PRESET]
        preprocessing = chosen.describe()
        if chosen.key != spec.preprocessing:
            raise CxrbenchError(
                f"run {spec.describe()} was planned with preprocessing {spec.preprocessing or DATASET_PRESET!r} "
                f"but its inputs use {chosen.key or DATASET_PRESET!r}"
            )
        if given.initial_state is not None:
            loaded.encoder.load_state_dict(given.initial_state)
        n_images = {name: len(split) for name, split in given.data.items()}
        outcome = train_run(
            task,
            loaded.encoder,
            given.n_classes,
            given.data,
            spec.lr,
            spec.seed,
            spec.profile.resolution,
            given.device,
            amp=amp,
            use_feature_cache=use_feature_cache,
            cache_budget_bytes=cache_budget_bytes,
            cache_disk_budget_bytes=cache_disk_budget_bytes,
            feature_store=given.feature_store,
            on_epoch=lambda entry: reporter.epoch(task, entry),
            grad_checkpointing=grad_checkpointing,
            compile=compile,
        )
        predictions = outcome.predictions
    except Exception as exc:  # a failing run must not stop the others
        outcome = exc
    record = make_record(
        spec,
        checkpoint_info(str(checkpoint), checkpoint_path(checkpoint), spec.identity),
        device=device,
        outcome=outcome,
        wall_time_s=time.perf_counter() - start,
        encoder_load=encoder_load,
        n_images=n_images,
        sweep=sweep,
        preprocessing=preprocessing,
    )
    write_record(path, record, predictions)
    reporter.run_finished(task, record, skipped=False)
    return RunOutcome(record, False)


def evaluate_checkpoint(
    checkpoint: str | Path, tasks: Sequence[Task], options: EvaluateOptions, reporter: Reporter | None = None
) -> list[TaskOutcome]:
    """Run the protocol for `tasks` on one checkpoint; returns the records per task."""
    reporter = reporter or Reporter()
    device = resolve_device(options.device)
    profile = options.profile
    datasets = {t.dataset: open_task_dataset(options.data_root, t.dataset) for t in tasks}  # fail early
    loaded = load_encoder(checkpoint, arch=options.arch, prefix=options.prefix)
    preprocessing = run_preprocessing(checkpoint, loaded, options.preset)
    base_state = copy.deepcopy(loaded.encoder.state_dict())
    identity = checkpoint_identity(checkpoint, loaded)
    seeds = options.seeds if options.seeds is not None else profile.default_seeds
    reporter.planned(len(tasks))
    outcomes = []
    for protocol_task in tasks:
        # one store per task: its runs encode its images once; freed (disk folder removed) after the task
        with FeatureStore() as store:
            task = profile.apply(protocol_task)
            dataset = datasets[task.dataset]
            inputs = RunInputs(
                loaded,
                load_task_data(dataset, task, profile, preprocessing),
                len(dataset.classes),
                device,
                base_state,
                preprocessing,
                store,
            )
            n_grid = len(task.lr_grid) if len(task.lr_grid) > 1 else 0
            reporter.task_started(task, n_grid + seeds)

            def run(
                phase: str, lr: float, seed: int, task=task, inputs=inputs, base=protocol_task, data=dataset
            ) -> RunRecord:
                spec = RunSpec(
                    options.encoder,
                    identity,
                    task.task_id,
                    phase,
                    lr,
                    seed,
                    profile,
                    base,
                    preprocessing.key,
                    data.split_identity,
                )
                return run_one(
                    spec,
                    options.runs_dir,
                    checkpoint,
                    lambda: inputs,
                    device=str(device),
                    amp=options.amp,
                    use_feature_cache=options.use_feature_cache,
                    cache_budget_bytes=options.cache_budget_bytes,
                    cache_disk_budget_bytes=options.cache_disk_budget_bytes,
                    reporter=reporter,
                    grad_checkpointing=options.grad_checkpointing,
                    compile=options.compile,
                ).record

            outcome = TaskOutcome(task, task.default_lr)
            if n_grid:
                search = [run(LR_SEARCH, lr, 0) for lr in task.lr_grid]
                outcome.records += search
                outcome.lr = best_lr(task, search)
            else:
                outcome.lr = task.lr_grid[0]
            outcome.records += [run(FINAL, outcome.lr, seed) for seed in range(seeds)]
            outcomes.append(outcome)
    reporter.finished()
    return outcomes


def best_lr(task: Task, records: Sequence[dict]) -> float:
    """The lr with the highest validation metric among successful runs; ties go to the earlier lr of
    the grid; the default lr when no run succeeded."""
    scored = [(primary_value(r, "val"), r["lr"]) for r in usable_runs(records, phase=None, split="val")]
    return max(scored, key=lambda pair: pair[0])[1] if scored else task.default_lr
