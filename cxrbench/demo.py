"""`cxrbench demo`: the embedded default end to end on synthetic phantom data.

phantom raw data (real formats) -> prepared caches -> brief pre-training of image-report
baselines -> evaluation of every encoder on all 18 tasks (demo profile) -> leaderboard. Every
step reuses what a previous run finished, so a second run is fast. Phantom numbers are not
medical results: they only show that every code path works and learns.

On two or more cores the work is split over two processes of one torch thread each
(`cxrbench.workers` says why): a second process prepares the task datasets and evaluates
`random` while this one prepares MIMIC-CXR, pre-trains and evaluates the pre-trained encoders. With
one thread per process the numbers do not depend on the machine's core count or on the split.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.datasets import DATASET_NAMES, get_adapter
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.output_dirs import DEMO, take_folder
from cxrbench.protocol.runner import Reporter
from cxrbench.protocol.tasks import TASKS, Profile, Task, get_profile
from cxrbench.workers import Worker, available_cores, one_torch_thread, spawn_context

if TYPE_CHECKING:
    from cxrbench.baselines.training import PretrainProfile

DEMO_ARCH = "resnet18"
DEMO_SIZE = 224
DEMO_METHODS = ("uniformity_prior",)  # the method this project is built around, against random init
DEMO_BASELINES = ("random",)
PRETRAIN_DATA = "mimic_cxr"
PROGRESS_EVERY_S = 30.0  # how often the main process says how far the second one is, once waiting


@dataclass
class DemoPaths:
    root: Path
    phantom: Path = field(init=False)
    prepared: Path = field(init=False)
    pretrained: Path = field(init=False)
    runs: Path = field(init=False)
    leaderboard: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.phantom = self.root / "phantom"
        self.prepared = self.root / "prepared"
        self.pretrained = self.root / "pretrained"
        self.runs = self.root / "runs"
        self.leaderboard = self.root / "leaderboard"


@dataclass(frozen=True)
class DemoEncoder:
    """An encoder the demo evaluates: a spec for `load_encoder` and its leaderboard name."""

    name: str
    spec: str
    arch: str | None = DEMO_ARCH


def ensure_data(
    paths: DemoPaths,
    datasets: Sequence[str] = DATASET_NAMES,
    sizes: dict[str, int] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Write and prepare every phantom dataset that is not already prepared."""
    for name in datasets:
        if (paths.prepared / name / "prepared.json").exists():
            continue
        raw = paths.phantom / name
        if not raw.exists():
            log(f"writing phantom {name}")
            write_phantom(name, raw, n_images=(sizes or {}).get(name), seed=0)
        log(f"preparing {name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(get_adapter(name), raw, paths.prepared / name, size=DEMO_SIZE)


def pretrain_baselines(
    paths: DemoPaths,
    methods: Sequence[str] = DEMO_METHODS,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
    reporter_factory: Callable[[], contextlib.AbstractContextManager] | None = None,
    profile: str | PretrainProfile = "demo",
) -> dict[str, Path]:
    """Pre-train each method on the prepared MIMIC-CXR (demo profile by default, one budget for all);
    resume or reuse finished ones."""
    from cxrbench.baselines.training import CHECKPOINT, HISTORY, pretrain
    from cxrbench.io_utils import read_json

    encoders = {}
    for method in methods:
        out = paths.pretrained / method
        done = out / "encoder.safetensors"
        if (out / HISTORY).exists() and read_json(out / HISTORY).get("finished") and done.exists():
            log(f"{method}: reusing {done}")
        else:
            log(f"pre-training {method} ({profile if isinstance(profile, str) else profile.name} profile)")
            resume = (out / CHECKPOINT).exists()
            with (reporter_factory or (lambda: contextlib.nullcontext(None)))() as reporter:
                pretrain(
                    method,
                    paths.prepared / "mimic_cxr",
                    out,
                    profile,
                    resume=resume,
                    epochs=epochs,
                    reporter=reporter,
                )
        encoders[method] = done
    return encoders


def demo_encoders(pretrained: dict[str, Path]) -> list[DemoEncoder]:
    """`random` (the floor every method must beat) plus the pre-trained baselines."""
    return [
        DemoEncoder("random", "random"),
        *(DemoEncoder(name, str(path), None) for name, path in pretrained.items()),
    ]


def evaluate_encoders(
    paths: DemoPaths,
    encoders: Sequence[DemoEncoder],
    profile: Profile,
    tasks: Sequence[Task] = TASKS,
    reporter_factory: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> None:
    """Every task for every encoder (finished runs are skipped)."""
    from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint

    for encoder in encoders:
        options = EvaluateOptions(paths.prepared, paths.runs, encoder.name, profile, arch=encoder.arch)
        factory = reporter_factory or (lambda _name: contextlib.nullcontext(Reporter()))
        with factory(encoder.name) as reporter:
            evaluate_checkpoint(encoder.spec, list(tasks), options, reporter)


@dataclass(frozen=True)
class WorkerJob:
    """Everything the second process needs, picklable for the `spawn` start method."""

    root: Path
    datasets: tuple[str, ...]  # prepared here first (then `ready` is set)
    sizes: dict[str, int] | None
    encoder_name: str
    encoder_spec: str
    arch: str | None
    profile: Profile
    tasks: tuple[Task, ...]


class RunCounter(Reporter):
    """The second process's progress, counted into a shared array (tasks started, runs finished,
    runs planned so far) that the main process reads for its log."""

    def __init__(self, counts) -> None:
        self.counts = counts

    def task_started(self, task: Task, n_runs: int) -> None:
        with self.counts.get_lock():
            self.counts[0] += 1
            self.counts[2] += n_runs

    def run_finished(self, task: Task, record: dict, skipped: bool) -> None:
        with self.counts.get_lock():
            self.counts[1] += 1


def describe_progress(counts, encoder: str, n_tasks: int) -> str:
    """One line on the second process's evaluation, from `RunCounter`'s shared counts."""
    tasks, done, planned = counts[:]
    return f"{encoder} (2nd process): task {tasks} of {n_tasks} started, {done} of {planned} runs finished"


def run_worker(job: WorkerJob, ready, counts=None) -> None:
    """Second process (`cxrbench.workers.Worker`): the task datasets (then `ready` is set), then the
    baseline's evaluation (counted into `counts` for the main process's log when given)."""
    paths = DemoPaths(job.root)
    ensure_data(paths, job.datasets, job.sizes, log=lambda _msg: None)
    ready.set()
    encoder = DemoEncoder(job.encoder_name, job.encoder_spec, job.arch)
    factory = None if counts is None else (lambda _name: contextlib.nullcontext(RunCounter(counts)))
    evaluate_encoders(paths, [encoder], job.profile, job.tasks, factory)


def split_datasets(datasets: Sequence[str], pretrain_data: str) -> tuple[list[str], list[str]]:
    """(prepared by the main process: pre-training's data, by the worker: the rest)."""
    mine = [d for d in datasets if d == pretrain_data]
    return mine, [d for d in datasets if d != pretrain_data]


def run_demo(
    out: Path,
    *,
    profile: Profile | str = "demo",
    tasks: Sequence[Task] = TASKS,
    methods: Sequence[str] = DEMO_METHODS,
    phantom_sizes: dict[str, int] | None = None,
    pretrain_epochs: int | None = None,
    log: Callable[[str], None] = print,
    section: Callable[[str], None] | None = None,
    reporter_factory: Callable[[str], contextlib.AbstractContextManager] | None = None,
    pretrain_reporter_factory: Callable[[], contextlib.AbstractContextManager] | None = None,
    parallel: bool | None = None,
):
    """The whole demo; returns the LeaderboardResult (Markdown, paths).

    `parallel`: evaluate `random` in a second process while this one pre-trains (None: when at least
    two cores are available and there is something to pre-train). Either way torch runs one thread
    per process, so both give the same numbers."""
    section = section or log
    paths = DemoPaths(out)
    take_folder(paths.root, DEMO)  # a new or empty folder, or an earlier demo's (its work is reused)
    profile = get_profile(profile) if isinstance(profile, str) else profile
    datasets = sorted({t.dataset for t in tasks} | ({PRETRAIN_DATA} if methods else set()))
    if parallel is None:
        parallel = bool(methods) and available_cores() >= 2
    with one_torch_thread():
        if parallel:
            args = (phantom_sizes, pretrain_epochs, log, section, reporter_factory, pretrain_reporter_factory)
            return _run_parallel(paths, profile, tasks, methods, datasets, *args)
        section("1/4 phantom data in real raw formats -> prepared caches")
        ensure_data(paths, datasets, phantom_sizes, log)
        section("2/4 brief pre-training of image-report baselines on phantom MIMIC-CXR")
        pretrained = pretrain_baselines(paths, methods, pretrain_epochs, log, pretrain_reporter_factory)
        encoders = demo_encoders(pretrained)
        section(
            f"3/4 evaluating {', '.join(e.name for e in encoders)} on {len(tasks)} tasks ({profile.name} profile)"
        )
        evaluate_encoders(paths, encoders, profile, tasks, reporter_factory)
        return _leaderboard(paths, section)


def _run_parallel(
    paths: DemoPaths,
    profile: Profile,
    tasks: Sequence[Task],
    methods: Sequence[str],
    datasets: Sequence[str],
    phantom_sizes: dict[str, int] | None,
    pretrain_epochs: int | None,
    log: Callable[[str], None],
    section: Callable[[str], None],
    reporter_factory: Callable[[str], contextlib.AbstractContextManager] | None,
    pretrain_reporter_factory: Callable[[], contextlib.AbstractContextManager] | None,
):
    """`run_demo` over two processes: the worker prepares the task datasets and evaluates `random`."""
    mine, theirs = split_datasets(datasets, PRETRAIN_DATA)
    baseline = demo_encoders({})[0]
    job = WorkerJob(
        paths.root,
        tuple(theirs),
        phantom_sizes,
        baseline.name,
        baseline.spec,
        baseline.arch,
        profile,
        tuple(tasks),
    )
    section("1/4 phantom data in real raw formats -> prepared caches")
    ready, counts = spawn_context().Event(), spawn_context().Array("q", 3)
    worker = Worker(run_worker, (job, ready, counts), "the demo's second process")
    try:
        log(f"a second process prepares {', '.join(theirs)}, then evaluates {baseline.name}")
        ensure_data(paths, mine, phantom_sizes, log)
        section("2/4 brief pre-training of image-report baselines on phantom MIMIC-CXR")
        pretrained = pretrain_baselines(paths, methods, pretrain_epochs, log, pretrain_reporter_factory)
        encoders = demo_encoders(pretrained)[1:]
        section(
            f"3/4 evaluating {', '.join(e.name for e in encoders)} and {baseline.name} (2nd process): "
            f"{len(tasks)} tasks, {profile.name} profile"
        )
        worker.wait(ready)
        evaluate_encoders(paths, encoders, profile, tasks, reporter_factory)
        while worker.process.is_alive():
            log(f"waiting for the second process: {describe_progress(counts, baseline.name, len(tasks))}")
            worker.process.join(PROGRESS_EVERY_S)
        worker.finish()
        log(f"done: {describe_progress(counts, baseline.name, len(tasks))}")
    finally:
        worker.stop()
    return _leaderboard(paths, section)


def _leaderboard(paths: DemoPaths, section: Callable[[str], None]):
    from cxrbench.leaderboard.report.build import build_leaderboard

    section("4/4 leaderboard")
    return build_leaderboard(
        [paths.runs],
        paths.leaderboard,
        baselines=list(DEMO_BASELINES),
        include_published=True,
        title="cxrbench demo leaderboard (synthetic phantom data: not medical results)",
    )
