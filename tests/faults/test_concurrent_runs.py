"""Fault class: two `evaluate`s started at once on one new runs dir: both succeed, every record is valid,
none is duplicated, and no lock or temporary file is left behind (a killed one cannot block a re-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cxrbench.output_dirs import RUNS
from cxrbench.protocol.records import scan_records


def test_two_concurrent_evaluates_on_one_new_runs_dir(prepared_root, tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def evaluate(name: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "cxrbench.cli", "evaluate", "random", "--data", str(prepared_root),
               "--tasks", "covid_linear", "--profile", "demo", "--seeds", "1", "--runs-dir", str(runs),
               "--arch", "resnet18", "--name", name]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    procs = [evaluate("shared"), evaluate("shared"), evaluate("other")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    files = sorted(runs.rglob("run-*.json"))
    records = [json.loads(p.read_text()) for p in files]
    assert all(r["status"] == "ok" for r in records)
    by_encoder = {name: [r for r in records if r["encoder"] == name] for name in ("shared", "other")}
    assert len(by_encoder["shared"]) == len(by_encoder["other"]) >= 1  # the same runs, each recorded once
    assert len({r["run_key"] for r in by_encoder["shared"]}) == len(by_encoder["shared"])
    assert len(scan_records(runs).records) == len(records)
    assert (runs / RUNS.marker).is_file()
    assert not list(runs.rglob("*.tmp")) and not list(runs.rglob("*.lock"))
