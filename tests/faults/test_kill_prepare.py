"""Fault class: prepare killed with SIGKILL at several points. Never a cache that loads as complete
unless it is; the re-run completes and is identical to an uninterrupted prepare."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import warnings
from pathlib import Path

import pytest

import cxrbench.datasets.prepare as prep
from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.errors import CxrbenchError


def _die_on_call(module, name: str, n: int) -> None:
    """Replace module.name so that its n-th call kills the process (before the call for n > 0)."""
    original = getattr(module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


KILL_POINTS = {
    "while decoding chunks": (prep, "_process_chunk", 3),
    "while writing the split arrays": (prep, "atomic_save_npy", 3),
    "after assembling, before the rename": (prep, "_swap_into_place", 1),
    "between the two renames of a --force replace": (os, "rename", 2),
}


def _prepare_then_die(point: str, raw: str, out: str, force: bool) -> None:
    prep.CHUNK_SIZE = 4
    module, name, n = KILL_POINTS[point]
    _die_on_call(module, name, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep.prepare(get_adapter("rsna"), raw, out, size=64, force=force)


def _same_cache(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.name != "prepared.json":
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    meta_a, meta_b = (json.loads((root / "prepared.json").read_text()) for root in (a, b))
    for key in ("config", "raw", "counts", "subsets", "stats", "skipped", "strict"):
        assert meta_a[key] == meta_b[key], key


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_prepare_resumes_to_an_identical_cache(
    rsna_small, rsna_prepared, tmp_path, monkeypatch, point
):
    out = tmp_path / "rsna"
    replacing = "--force" in point
    if replacing:  # an existing cache made with other settings is being replaced
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prep.prepare(get_adapter("rsna"), rsna_small, out, size=96)
    child = mp.get_context("fork").Process(
        target=_prepare_then_die, args=(point, str(rsna_small), str(out), replacing)
    )
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    with pytest.raises(CxrbenchError):
        open_prepared(out)  # nothing loads as complete: neither the half-written nor the replaced cache
    monkeypatch.setattr(prep, "CHUNK_SIZE", 4)
    calls = []
    original = prep._process_chunk
    monkeypatch.setattr(prep, "_process_chunk", lambda *a: calls.append(1) or original(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = prep.prepare(get_adapter("rsna"), rsna_small, out, size=64, force=replacing)
    assert not summary.reused
    n_chunks = sum(-(-n // 4) for n in summary.counts.values())
    # finished chunks (and an assembled cache) are reused, never recomputed
    assert len(calls) == (n_chunks - 2 if point == "while decoding chunks" else 0)
    _same_cache(out, rsna_prepared)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rsna"]  # no partial or replaced leftovers
