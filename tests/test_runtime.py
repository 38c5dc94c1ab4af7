"""Runtime: device choice, the one autocast policy, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench import runtime
from cxrbench.errors import CxrbenchError
from cxrbench.runtime import autocast, autocast_dtype, autocast_factory, resolve_device, seed_everything


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(CxrbenchError, match="invalid --device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(CxrbenchError, match="CUDA is not available"):
        resolve_device("cuda")


def test_autocast_policy(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu) is None and autocast_dtype(cpu, enabled=False) is None
    monkeypatch.setattr(runtime, "_cuda_bf16", lambda: True)
    assert autocast_dtype(cuda) == torch.bfloat16
    assert autocast_dtype(cuda, enabled=False) is None
    monkeypatch.setattr(runtime, "_cuda_bf16", lambda: False)
    assert autocast_dtype(cuda) is None  # float32 rather than float16 without loss scaling


def test_cpu_stays_float32():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu")):
        assert (x @ x).dtype == torch.float32
    factory = autocast_factory(torch.device("cpu"), enabled=True)
    with factory(), factory():  # a fresh context per call
        assert (x @ x).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocasts_to_bf16():
    x = torch.randn(4, 4, device="cuda")
    with autocast(torch.device("cuda")):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(torch.device("cuda"), enabled=False):
        assert (x @ x).dtype == torch.float32


def test_seed_everything_repeats_torch_and_numpy():
    seed_everything(7)
    first = torch.rand(3), np.random.rand(3)
    seed_everything(7)
    second = torch.rand(3), np.random.rand(3)
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    seed_everything(2**32 + 7)  # numpy takes the seed modulo 2**32
    assert np.array_equal(np.random.rand(3), first[1])
