"""`cxrbench study uniformity`: does the uniformity prior beat its global-only control, task by task?

Pre-trains the control `global_attention`, `lovt` and the uniformity-prior methods with one seed and one
budget on a prepared MIMIC-CXR, evaluates each on the tasks, analyses each encoder's representation
statistics, and writes one report: the leaderboard (paired bootstrap tests against the control), the
correlation of the statistics with the scores, and for each prior method the count of tasks where it
beats the control significantly (the "k of 18" claim made measurable). The pieces are the demo's
(`cxrbench.demo`), so re-running reuses finished pre-training, evaluation and analysis.

Like the demo, it runs one torch thread per process and evaluates in parallel over the cores
(`cxrbench.workers.JobPool`): each (encoder, task) evaluation is a job, queued as soon as the encoder's
pre-training ends, taken by spawned worker processes and, after pre-training, by this one. Every run
seeds itself, so the records do not depend on the number of workers. The `demo` profile skips the
three 100%-label RSNA tasks by default (`DEMO_SKIPPED_TASKS`) to fit 15 minutes on two cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrbench.baselines.training import PretrainProfile, get_pretrain_profile
from cxrbench.demo import DemoEncoder, DemoPaths, evaluate_encoders, pretrain_baselines
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_write_text
from cxrbench.output_dirs import STUDY, take_folder
from cxrbench.protocol.tasks import TASKS, Profile, Task, get_profile
from cxrbench.workers import JobPool, available_cores, one_torch_thread

CONTROL = "global_attention"
PRIOR_METHODS = ("uniformity_prior", "uniformity_prior_sw", "uniformity_prior_mm")
STUDY_METHODS = (CONTROL, "lovt", *PRIOR_METHODS)
ANALYSIS_DATASET = "rsna"
# The demo study's default leaves out the costliest tasks on the demo profile (about 90 s of the ~300 s
# that evaluating one encoder on all 18 takes there); their 1% and 10% label fractions stay.
DEMO_SKIPPED_TASKS = ("rsna_yolo_finetune_100", "rsna_yolo_frozen_100", "rsna_seg_linear_100")
PHANTOM_NOTE = (
    "If the prepared data is synthetic phantom data (e.g. `cxrbench phantom` or `cxrbench demo`), these "
    "numbers are NOT medical results: they only show that the study runs end to end."
)


@dataclass
class StudyResult:
    """What the study wrote, and the per-method count of significant wins over the control."""

    report: Path
    leaderboard: Path
    correlation: Path | None
    wins: pd.DataFrame  # one row per (method, task): compared, beats_means, p_value, win
    counts: dict[str, tuple[int, int]]  # method -> (k tasks won significantly, n tasks compared)


def study_profiles(
    profile: str, seed: int, pretrain_profile: PretrainProfile | None = None
) -> tuple[PretrainProfile, Profile]:
    """The pre-training profile (with `seed`) and the evaluation profile a study runs under."""
    if profile not in ("demo", "full"):
        raise CxrbenchError(f"--profile must be 'demo' or 'full', got {profile!r}")
    pre = pretrain_profile or get_pretrain_profile(profile)
    return dataclasses.replace(pre, seed=seed), get_profile(profile)


def default_tasks(profile: str) -> tuple[Task, ...]:
    """The tasks a study evaluates when none are given: all 18, less `DEMO_SKIPPED_TASKS` under `demo`."""
    skipped = DEMO_SKIPPED_TASKS if profile == "demo" else ()
    return tuple(t for t in TASKS if t.task_id not in skipped)


def default_workers(methods: Sequence[str]) -> int:
    """Processes that evaluate: one per available core, at most one per method."""
    return max(1, min(available_cores(), len(methods)))


def evaluate_task(
    root: Path,
    prepared: Path,
    encoder: DemoEncoder,
    profile: Profile,
    task: Task,
    reporter_factory: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> None:
    """One `JobPool` job: `encoder` on `task` (module level, so that it pickles for a worker)."""
    paths = DemoPaths(root)
    paths.prepared = prepared
    evaluate_encoders(paths, [encoder], profile, [task], reporter_factory)


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    methods = tuple(dict.fromkeys(methods))
    if CONTROL not in methods:
        raise CxrbenchError(f"--methods must include the control {CONTROL!r}: the study tests against it")
    if not any(m in PRIOR_METHODS for m in methods):
        raise CxrbenchError(f"--methods must include one of {', '.join(PRIOR_METHODS)}")
    return methods


def analyse_encoders(
    paths: DemoPaths,
    methods: Sequence[str],
    dataset: str,
    n_images: int,
    resolution: int,
    log: Callable[[str], None] = print,
) -> Path:
    """One analysis record per method (its pre-training folder: backbone statistics and alignment);
    records already written are reused."""
    from cxrbench.analysis import analyze_encoder, write_analysis
    from cxrbench.analysis.records import analysis_path

    folder = paths.root / "analysis"
    for method in methods:
        if analysis_path(folder, method, dataset).exists():
            log(f"{method}: reusing its analysis")
            continue
        log(f"analysing {method} on {dataset}")
        record = analyze_encoder(
            paths.pretrained / method,
            paths.prepared / dataset,
            n_images=n_images,
            resolution=resolution,
            device="cpu",
        )
        write_analysis(record, folder, method)
    return folder


def win_counts(wins: pd.DataFrame, methods: Sequence[str]) -> dict[str, tuple[int, int]]:
    """method -> (tasks where it beats the control with p < alpha, tasks compared)."""
    out = {}
    for method in methods:
        rows = wins[wins["encoder"] == method]
        out[method] = (int(rows["win"].sum()), int(rows["compared"].sum()))
    return out


def run_uniformity_study(
    data: Path | str,
    out: Path | str,
    *,
    profile: str = "demo",
    seed: int = 0,
    methods: Sequence[str] = STUDY_METHODS,
    tasks: Sequence[Task] | None = None,
    workers: int | None = None,
    pretrain_profile: PretrainProfile | None = None,
    eval_profile: Profile | None = None,
    analysis_dataset: str = ANALYSIS_DATASET,
    analysis_images: int = 64,
    n_boot: int = 1000,
    alpha: float = 0.05,
    log: Callable[[str], None] = print,
    section: Callable[[str], None] | None = None,
    reporter_factory: Callable[[str], contextlib.AbstractContextManager] | None = None,
    pretrain_reporter_factory: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> StudyResult:
    """The whole study into `out` (a new/empty folder or an earlier study's); see the module docstring.

    `data` is a prepared root (PREPARED/mimic_cxr plus the tasks' datasets). `pretrain_profile` /
    `eval_profile` replace the profiles `profile` names (tests use tiny ones); `seed` is the
    pre-training seed of every method (evaluation seeds are the protocol's). `tasks`: by default
    `default_tasks(profile)`. `workers`: processes that evaluate (this one included; by default
    `default_workers`); any number gives the same records.
    """
    from cxrbench.analysis import correlate
    from cxrbench.leaderboard.report.build import build_leaderboard

    section = section or log
    methods = _check_methods(methods)
    data = Path(data)
    if not (data / "mimic_cxr" / "prepared.json").exists():
        raise CxrbenchError(
            f"{data}: no prepared MIMIC-CXR (expected {data / 'mimic_cxr' / 'prepared.json'})"
        )
    pre, evaluation = study_profiles(profile, seed, pretrain_profile)
    evaluation = eval_profile or evaluation
    paths = DemoPaths(Path(out))
    paths.prepared = data
    take_folder(paths.root, STUDY, inputs=[data])
    tasks = default_tasks(profile) if tasks is None else tuple(tasks)
    workers = default_workers(methods) if workers is None else workers
    with one_torch_thread():  # as in every worker: the numbers do not depend on the split
        _pretrain_and_evaluate(
            paths,
            methods,
            tasks,
            pre,
            evaluation,
            workers,
            log,
            section,
            reporter_factory,
            pretrain_reporter_factory,
        )
        section(f"3/4 analysing the encoders on {analysis_dataset}")
        analysis_dir = analyse_encoders(
            paths, methods, analysis_dataset, analysis_images, evaluation.resolution, log
        )
    correlation = correlate([paths.runs], analysis_dir)
    section(f"4/4 leaderboard (paired tests against {CONTROL}) and report")
    board = build_leaderboard(
        [paths.runs],
        paths.leaderboard,
        baselines=[CONTROL],
        include_published=False,
        n_boot=n_boot,
        alpha=alpha,
        overlays=False,
        title=f"uniformity study (seed {seed}, {evaluation.name} profile)",
    )
    assert board.wins is not None  # a baseline was given
    priors = [m for m in methods if m != CONTROL]
    counts = win_counts(board.wins.per_task, priors)
    report = paths.root / "report.md"
    text = render_report(
        counts,
        board.wins.per_task,
        board.wins.rule,
        board.markdown,
        correlation,
        seed,
        pre,
        evaluation,
        tasks,
    )
    atomic_write_text(report, text)
    return StudyResult(
        report, paths.leaderboard, correlation.attrs["paths"].get("csv"), board.wins.per_task, counts
    )


def _pretrain_and_evaluate(
    paths: DemoPaths,
    methods: Sequence[str],
    tasks: Sequence[Task],
    pre: PretrainProfile,
    evaluation: Profile,
    workers: int,
    log: Callable[[str], None],
    section: Callable[[str], None],
    reporter_factory: Callable[[str], contextlib.AbstractContextManager] | None,
    pretrain_reporter_factory: Callable[[], contextlib.AbstractContextManager] | None,
) -> None:
    """Pre-train the methods one by one here, queueing each encoder's tasks as soon as it is ready:
    `workers - 1` spawned processes start on them at once, this one joins after pre-training."""
    with JobPool(workers, "a study worker process") as pool:
        section(f"1/4 pre-training {', '.join(methods)} (seed {pre.seed}, {pre.name} profile, one budget)")
        if workers > 1:
            log(f"{workers - 1} worker process(es) evaluate each encoder as soon as it is pre-trained")
        for method in methods:
            path = pretrain_baselines(paths, [method], None, log, pretrain_reporter_factory, profile=pre)
            encoder = DemoEncoder(method, str(path[method]), None)
            for task in tasks:
                pool.submit(evaluate_task, paths.root, paths.prepared, encoder, evaluation, task)
        section(f"2/4 evaluating on {len(tasks)} tasks ({evaluation.name} profile, {workers} process(es))")
        pool.drain(reporter_factory=reporter_factory)


def tasks_note(tasks: Sequence[Task]) -> str:
    """Which of the 18 tasks the study evaluated (the report and the CLI state a subset)."""
    ids = {t.task_id for t in tasks}
    left_out = [t.task_id for t in TASKS if t.task_id not in ids]
    if not left_out:
        return f"Tasks: all {len(TASKS)}."
    return f"Tasks: {len(ids)} of {len(TASKS)}; not evaluated: {', '.join(left_out)}."


def _p(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def render_report(
    counts: dict[str, tuple[int, int]],
    per_task: pd.DataFrame,
    rule: str,
    leaderboard_md: str,
    correlation: pd.DataFrame,
    seed: int,
    pre: PretrainProfile,
    evaluation: Profile,
    tasks: Sequence[Task] = TASKS,
) -> str:
    """The study's report.md: the k-of-N counts, the per-task tests, the correlations, the leaderboard."""
    from cxrbench.analysis import MEAN_TASK

    lines = [
        "# Uniformity-prior study",
        "",
        f"> {PHANTOM_NOTE}",
        "",
        f"Every method pre-trained with seed {seed} under the `{pre.name}` pre-training profile "
        f"({pre.max_epochs} epochs at most, batch {pre.batch_size}, {pre.resolution} px), evaluated under "
        f"the `{evaluation.name}` evaluation profile. Control: `{CONTROL}` (global InfoNCE only, every other "
        "setting of `uniformity_prior`).",
        "",
        tasks_note(tasks),
        "",
        f"## Tasks where a method beats `{CONTROL}` with a significant paired difference",
        "",
        "| method | k of N |",
        "|---|---|",
        *(f"| {m} | {k} of {n} |" for m, (k, n) in counts.items()),
        "",
        rule,
        "",
        "| method | task | beats the control's mean | p (paired, one-sided) | significant win |",
        "|---|---|---|---|---|",
    ]
    for row in per_task.itertuples():
        if row.compared:
            lines.append(
                f"| {row.encoder} | {row.task_id} | {'yes' if row.beats_means else 'no'} | "
                f"{_p(row.p_value)} | {'**yes**' if row.win else 'no'} |"
            )
    lines += ["", f"## Representation statistics vs the {MEAN_TASK.replace('_', ' ')} (Spearman)", ""]
    mean = correlation[correlation["task_id"] == MEAN_TASK]
    lines += ["| dataset | statistic | encoders | rho | permutation p |", "|---|---|---|---|---|"]
    for row in mean.itertuples():
        lines.append(
            f"| {row.dataset} | {row.statistic} | {row.n_encoders} | {_p(row.spearman_rho)} | {_p(row.p_value)} |"
        )
    for note in correlation.attrs.get("notes", []):
        lines.append(f"\nNote: {note}")
    lines += [
        "",
        "Full table: analysis/correlation.csv; leaderboard files: leaderboard/.",
        "",
        leaderboard_md,
    ]
    return "\n".join(lines) + "\n"
