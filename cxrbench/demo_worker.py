"""The demo's second process: prepare the task datasets, then evaluate the `random` encoder.

Why a process and not torch's threads: the demo's steps are tiny (96 px, batches of 4-16) and bound
by per-step costs of the large heads (optimiser updates and weight gradients of 20M-87M parameters),
which a second torch thread speeds up by only about 1.2x on two cores, while two single-threaded
processes, each with its own encoder, use both cores fully. One torch thread per process also keeps
the demo's numbers independent of the machine's core count.
"""

from __future__ import annotations

import multiprocessing
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrbench.errors import CxrbenchError
from cxrbench.protocol.tasks import Profile, Task


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


def run_worker(job: WorkerJob, ready, errors) -> None:
    """Process entry point: data, then the encoder's evaluation; any failure goes to `errors` as text."""
    import torch

    from cxrbench.demo import DemoEncoder, DemoPaths, ensure_data, evaluate_encoders

    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paths = DemoPaths(job.root)
            ensure_data(paths, job.datasets, job.sizes, log=lambda _msg: None)
            ready.set()
            encoder = DemoEncoder(job.encoder_name, job.encoder_spec, job.arch)
            evaluate_encoders(paths, [encoder], job.profile, job.tasks)
    except BaseException:
        errors.put(traceback.format_exc())
        raise


class DemoWorker:
    """A started second process running `run_worker(job)`; `wait_ready` / `finish` raise its failure."""

    def __init__(self, job: WorkerJob):
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        self.ready = ctx.Event()
        self.errors = ctx.Queue()
        self.process = ctx.Process(target=run_worker, args=(job, self.ready, self.errors), daemon=True)
        self.process.start()

    def _failure(self) -> str:
        try:
            return self.errors.get(timeout=5)
        except Exception:
            return f"exit code {self.process.exitcode}"

    def wait_ready(self) -> None:
        """Block until the worker's datasets are prepared."""
        while not self.ready.wait(0.5):
            if not self.process.is_alive():
                raise CxrbenchError(f"the demo's second process failed:\n{self._failure()}")

    def finish(self) -> None:
        """Wait for the worker's evaluation to end."""
        self.process.join()
        if self.process.exitcode != 0:
            raise CxrbenchError(f"the demo's second process failed:\n{self._failure()}")

    def stop(self) -> None:
        """End the worker if it still runs (the parent failed or was interrupted)."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


def split_datasets(datasets: Sequence[str], pretrain_data: str) -> tuple[list[str], list[str]]:
    """(prepared by the main process: pre-training's data, by the worker: the rest)."""
    mine = [d for d in datasets if d == pretrain_data]
    return mine, [d for d in datasets if d != pretrain_data]
