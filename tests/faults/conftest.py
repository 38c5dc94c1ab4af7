"""Fixtures of the fault suite: small phantoms, built once per run (copy them before damaging them)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from cxrbench.datasets import get_adapter
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare


@pytest.fixture(scope="package")
def rsna_small(tmp_path_factory) -> Path:
    """A 12-image RSNA phantom (read-only: copy it before damaging it)."""
    root = tmp_path_factory.mktemp("faults_rsna") / "rsna"
    write_phantom("rsna", root, n_images=12, seed=5)
    return root


@pytest.fixture(scope="package")
def rsna_prepared(rsna_small, tmp_path_factory) -> Path:
    """The uninterrupted prepare of `rsna_small` at size 64 (read-only: copy it before damaging it)."""
    out = tmp_path_factory.mktemp("faults_prepared") / "rsna"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(get_adapter("rsna"), rsna_small, out, size=64)
    return out
