"""Fault class: `evaluate` killed (SIGKILL) during its first training run, before any record exists:
the re-run accepts its own runs dir, and finishes with every record once (none lost, none duplicated)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from cxrbench.output_dirs import RUNS


def test_evaluate_killed_before_its_first_record_resumes(prepared_root, tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "cxrbench.cli", "evaluate", "random", "--data", str(prepared_root),
           "--tasks", "covid_linear", "--profile", "demo", "--seeds", "2", "--runs-dir", str(runs),
           "--arch", "resnet18"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (runs / RUNS.marker).exists():
        time.sleep(0.02)
    assert proc.poll() is None, "evaluate exited before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the runs dir is claimed; the first run has at most just begun
    proc.wait()
    before = sorted(runs.rglob("run-*.json"))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in sorted(runs.rglob("run-*.json"))]
    assert len(records) > len(before) and all(r["status"] == "ok" for r in records)
    assert len({r["run_key"] for r in records}) == len(records)
    assert len([r for r in records if r["phase"] == "final"]) == 2
    assert not list(runs.rglob("*.tmp"))
