"""`cxrbench.workers`: jobs run in spawned single-threaded processes, and their failures reach the caller."""

from __future__ import annotations

import operator
from pathlib import Path

import pytest

from cxrbench.errors import CxrbenchError
from cxrbench.workers import JobPool


def test_pool_runs_every_job_once(tmp_path):
    targets = [tmp_path / f"job-{i}.txt" for i in range(6)]
    with JobPool(2) as pool:
        for i, target in enumerate(targets):
            pool.submit(Path.write_text, target, str(i))
        pool.drain()
    assert [t.read_text() for t in targets] == [str(i) for i in range(6)]


def test_a_failing_job_in_a_worker_fails_the_drain_with_its_traceback():
    with JobPool(2, "a test worker") as pool:
        pool.submit(operator.truediv, 1, 0)
        pool.workers[0].process.join(timeout=120)  # the worker takes the job, fails and ends
        assert pool.workers[0].process.exitcode not in (0, None)
        with pytest.raises(CxrbenchError, match=r"(?s)a test worker 1 failed:.*ZeroDivisionError"):
            pool.drain()


def test_a_pool_needs_a_process():
    with pytest.raises(CxrbenchError, match="at least 1"):
        JobPool(0)
