"""CPU and wall time of `cxrbench demo` per stage, per task and per run, from a fresh folder; figures are
printed, never asserted.

Usage: python benchmarks/bench_demo.py [--sequential] [--work DIR] [--keep]
Why: the demo must finish in under 10 minutes on an idle 2-core machine. On a shared machine the wall
time mostly measures the other load, so this prints CPU time (user + system) per stage: this process's
and its finished child processes' (the demo's second process, which prepares the task datasets and
evaluates `random`, is counted when it ends, in stage 3), and per task for the encoders evaluated in
this process. The demo runs one torch thread per process, so on an idle machine with two cores each
process's CPU time is close to its wall time: the idle wall time is about the larger of the two
processes' CPU times, plus the leaderboard.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

from cxrbench.demo import run_demo
from cxrbench.protocol.runner import Reporter
from cxrbench.protocol.tasks import Task


def own_cpu() -> float:
    """User + system time of this process (all threads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def children_cpu() -> float:
    """User + system time of this process's finished (joined) child processes."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def cpu_seconds() -> float:
    return own_cpu() + children_cpu()


class Clock:
    """Marks (label, own cpu, children cpu, wall) points; `spans` gives the time between consecutive marks."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float, float, float]] = []

    def mark(self, label: str) -> None:
        self.marks.append((label, own_cpu(), children_cpu(), time.perf_counter()))

    def spans(self) -> list[tuple[str, float, float, float]]:
        return [
            (a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3])
            for a, b in zip(self.marks, self.marks[1:], strict=False)
        ]


class TimingReporter(Reporter):
    """Accumulates CPU time per task (all encoders) and per run kind."""

    def __init__(self, encoder: str, per_task: dict[str, float], runs: list[tuple[str, str, float]]):
        self.encoder = encoder
        self.per_task = per_task
        self.runs = runs
        self.task_start = 0.0
        self.run_start = 0.0

    def task_started(self, task: Task, n_runs: int) -> None:
        self.task_start = cpu_seconds()

    def run_started(self, task: Task, phase: str, lr: float, seed: int) -> None:
        self.run_start = cpu_seconds()

    def run_finished(self, task: Task, record: dict, skipped: bool) -> None:
        now = cpu_seconds()
        if not skipped:
            self.runs.append((self.encoder, task.task_id, now - self.run_start))
        self.per_task[task.task_id] += now - self.task_start
        self.task_start = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sequential", action="store_true", help="one process (the demo's choice on one core)"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="demo folder (default: a fresh temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo folder")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cxrbench_bench_demo_")) / "demo_out"
    print(
        f"{'sequential' if args.sequential else 'parallel'}, load average {os.getloadavg()}, folder {work}",
        flush=True,
    )
    clock = Clock()
    per_task: dict[str, float] = defaultdict(float)
    runs: list[tuple[str, str, float]] = []

    def section(title: str) -> None:
        clock.mark(title)
        print(f"[{time.strftime('%H:%M:%S')}] {title}", flush=True)

    def reporter(name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(TimingReporter(name, per_task, runs))

    clock.mark("start (imports done)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_demo(
            work,
            log=lambda msg: None,
            section=section,
            reporter_factory=reporter,
            parallel=False if args.sequential else None,
        )
    clock.mark("end")
    first, last = clock.marks[0], clock.marks[-1]
    print(f"\nload average at the end {os.getloadavg()}")
    print(f"{'stage':<60} {'own cpu s':>10} {'child cpu s':>12} {'wall s':>8}")
    for label, own, kids, wall in clock.spans():
        print(f"{label[:60]:<60} {own:10.1f} {kids:12.1f} {wall:8.1f}")
    own, kids = last[1] - first[1], last[2] - first[2]
    print(f"{'total':<60} {own:10.1f} {kids:12.1f} {last[3] - first[3]:8.1f}")
    board = clock.spans()[-1][1]
    print(
        f"CPU total {own + kids:.1f} s; idle 2-core wall estimate (one thread per process): "
        f"max(this process before the leaderboard {own - board:.1f} s, second process {kids:.1f} s) "
        f"+ leaderboard {board:.1f} s = {max(own - board, kids) + board:.1f} s"
    )
    print(f"\n{'task (all encoders, all runs)':<40} {'cpu s':>8} {'runs':>5}")
    for task_id, cpu in sorted(per_task.items(), key=lambda kv: -kv[1]):
        n = sum(1 for r in runs if r[1] == task_id)
        print(f"{task_id:<40} {cpu:8.1f} {n:5d}")
    if not args.keep and args.work is None:
        shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
