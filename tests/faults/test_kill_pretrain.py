"""Fault class: `pretrain` killed (SIGKILL) after an epoch checkpoint resumes to the same exported encoder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from tiny_profiles import TINY_PRETRAIN

from cxrbench.baselines.training import CHECKPOINT, HISTORY, pretrain
from cxrbench.datasets import get_adapter
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare

# Three epochs of four batches: a kill can land after an epoch checkpoint and before the end.
TINY = dataclasses.replace(TINY_PRETRAIN, max_epochs=3)

# The child process pre-trains with TINY (passed as JSON) until it is killed.
CHILD = """
import dataclasses, json, sys
from cxrbench.baselines.training import get_pretrain_profile, pretrain
profile = dataclasses.replace(get_pretrain_profile("demo"), **json.loads(sys.argv[3]))
pretrain("convirt", sys.argv[1], sys.argv[2], profile, device="cpu")
"""


@pytest.fixture(scope="module")
def mimic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill_pretrain")
    raw = write_phantom("mimic_cxr", root / "raw", n_images=60, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(get_adapter("mimic_cxr"), raw, root / "prepared", size=64)
    return root / "prepared"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _epochs_done(out: Path) -> int:
    try:
        return len(json.loads((out / HISTORY).read_text())["history"]) - 1  # entry 0 is the initial eval
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture
def one_thread():
    """One CPU thread here as in the child: float sums over several threads may differ in the last bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_killed_pretrain_resumes_to_the_same_encoder(mimic, tmp_path, one_thread):
    out = tmp_path / "killed"
    fields = {f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(mimic), str(out), json.dumps(fields)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _epochs_done(out) < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "pre-training exited before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= _epochs_done(out) < TINY.max_epochs and (out / CHECKPOINT).is_file()

    whole = pretrain("convirt", mimic, tmp_path / "whole", TINY, device="cpu")
    resumed = pretrain("convirt", mimic, out, TINY, resume=True, device="cpu")
    assert [h["epoch"] for h in resumed.history] == [h["epoch"] for h in whole.history]
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in whole.history]
    assert _sha256(resumed.encoder_path) == _sha256(whole.encoder_path)
    assert not list(out.rglob("*.tmp"))
