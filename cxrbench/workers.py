"""Spawned worker processes of one torch thread each, for the demo and the studies on CPU cores.

Why processes and not torch's threads: the demo-profile steps are tiny (96 px, batches of 4-16) and
bound by per-step costs of the large heads (optimiser updates and weight gradients of 20M-87M
parameters), which a second torch thread speeds up by only about 1.2x on two cores, while two
single-threaded processes, each with its own encoder, use both cores fully. One torch thread per
process also keeps the numbers independent of the machine's core count and of how the work is split.

`Worker` runs one picklable function in a spawned process and relays its failure as text; `JobPool`
spreads picklable jobs over this process and `workers - 1` spawned ones.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from cxrbench.errors import CxrbenchError


def available_cores() -> int:
    """Cores this process may run on (its affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """This process computes with one torch thread inside the block, like every worker."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def spawn_context():
    """The `spawn` start method: never fork a process that holds torch threads."""
    return multiprocessing.get_context("spawn")


def _entry(target: Callable[..., None], args: tuple, errors) -> None:
    """Process entry point: one torch thread, then `target(*args)`; any failure goes to `errors`."""
    import torch

    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target(*args)
    except BaseException:
        errors.put(traceback.format_exc())
        raise


class Worker:
    """A started process running `target(*args)` (both picklable) with one torch thread; `finish` and
    `check` raise its failure, `stop` ends it."""

    def __init__(self, target: Callable[..., None], args: tuple, label: str = "a worker process"):
        ctx = spawn_context()
        self.label = label
        self.errors = ctx.Queue()
        self.process = ctx.Process(target=_entry, args=(target, args, self.errors), daemon=True)
        self.process.start()

    def _failure(self) -> CxrbenchError:
        try:
            text = self.errors.get(timeout=5)
        except Exception:
            text = f"exit code {self.process.exitcode}"
        return CxrbenchError(f"{self.label} failed:\n{text}")

    def check(self) -> None:
        """Raise if the process has ended with a failure."""
        if not self.process.is_alive() and self.process.exitcode not in (0, None):
            raise self._failure()

    def wait(self, event) -> None:
        """Block until `event` (made by `spawn_context()`) is set, raising if the process fails first."""
        while not event.wait(0.5):
            if not self.process.is_alive():
                raise self._failure()

    def finish(self) -> None:
        """Wait for the process to end; raise its failure."""
        self.process.join()
        if self.process.exitcode != 0:
            raise self._failure()

    def stop(self) -> None:
        """End the process if it still runs (the parent failed or was interrupted)."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


def run_jobs(queue) -> None:
    """Worker target: run `(function, args)` jobs from `queue` until a `None`."""
    while (job := queue.get()) is not None:
        function, args = job
        function(*args)


class JobPool:
    """Picklable jobs `function(*args)` run by this process and `workers - 1` spawned ones (one torch
    thread each), first come first served in submission order.

    Spawned workers start on jobs as soon as they are submitted; this process joins in `drain`, calling
    each job it takes with `**local_kwargs` (e.g. a progress reporter, which cannot cross processes).
    A job's result must not depend on which process runs it or after which other job (each run seeds
    itself), so any `workers` gives the same numbers. Use as a context manager: leaving it early ends
    the workers."""

    def __init__(self, workers: int, label: str = "a worker process"):
        if workers < 1:
            raise CxrbenchError(f"workers must be at least 1, got {workers}")
        self.queue = spawn_context().Queue()
        self.workers = [Worker(run_jobs, (self.queue,), f"{label} {i + 1}") for i in range(workers - 1)]

    def submit(self, function: Callable[..., None], *args: Any) -> None:
        """Queue `function(*args)`; a spawned worker starts it as soon as one is free."""
        self.queue.put((function, args))

    def drain(self, **local_kwargs: Any) -> None:
        """Run queued jobs here too until every job is done; raise the first worker failure."""
        for _ in range(len(self.workers) + 1):  # one end marker per consumer, after every job (FIFO)
            self.queue.put(None)
        while (job := self.queue.get()) is not None:
            for worker in self.workers:
                worker.check()
            function, args = job
            function(*args, **local_kwargs)
        for worker in self.workers:
            worker.finish()

    def __enter__(self) -> JobPool:
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            worker.stop()
