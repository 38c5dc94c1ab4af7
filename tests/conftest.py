"""Shared fixtures: phantom raw datasets and their prepared caches, built once per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

# Small phantom sizes keep the session fixture to a few seconds while every split is populated.
PHANTOM_SIZES = {"rsna": 60, "siim": 40, "object_cxr": 50, "nih": 50, "covid_rural": 40}


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    from cxrbench.datasets.phantom import write_phantom

    root = tmp_path_factory.mktemp("phantom")
    for name, n in PHANTOM_SIZES.items():
        write_phantom(name, root / name, n_images=n, seed=1)
    return root


@pytest.fixture(scope="session")
def prepared_root(phantom_root, tmp_path_factory) -> Path:
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PHANTOM_SIZES:
            prepare(get_adapter(name), phantom_root / name, root / name, size=224)
    return root
