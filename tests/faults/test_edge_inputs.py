"""Fault class: edge inputs. Too-small datasets, out-of-range sizes and counts: one clear line each."""

from __future__ import annotations

import warnings

import pytest

from cxrbench.datasets import get_adapter
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare

from .helpers import assert_one_line_error, run_cli


def test_dataset_too_small_for_the_split_names_the_minimum(tmp_path):
    raw = write_phantom("rsna", tmp_path / "rsna", n_images=3, seed=0)
    # 3 phantom images are one per reference list; by patient, 60/20/20 needs 4
    result = run_cli("prepare", "rsna", raw, tmp_path / "out", "--size", "64", "--splits", "patient")
    assert_one_line_error(result, "3 usable images", "at least 4 images")
    assert not (tmp_path / "out").exists()


def test_too_few_images_for_the_reference_lists_says_which_split_is_empty(tmp_path):
    raw = write_phantom("rsna", tmp_path / "rsna", n_images=2, seed=0)
    result = run_cli("prepare", "rsna", raw, tmp_path / "out", "--size", "64")
    assert_one_line_error(result, "2 usable images", "split(s) empty", "reference split lists")
    assert not (tmp_path / "out").exists()


def test_unknown_split_scheme_is_one_line(tmp_path):
    raw = write_phantom("rsna", tmp_path / "rsna", n_images=3, seed=0)
    result = run_cli("prepare", "rsna", raw, tmp_path / "out", "--splits", "random")
    assert_one_line_error(result, "--splits 'random'", "reference or patient")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--size", "0", "--size 0"),
        ("--size", "8192", "4096"),
        ("--workers", "0", "--workers 0"),
        ("--workers", "-2", "--workers -2"),
    ],
)
def test_out_of_range_prepare_options(tmp_path, option, value, fragment):
    raw = tmp_path / "raw"
    raw.mkdir()
    assert_one_line_error(run_cli("prepare", "rsna", raw, tmp_path / "out", option, value), fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n", ["0", "-1"])
def test_phantom_needs_at_least_one_image(tmp_path, n):
    assert_one_line_error(run_cli("phantom", tmp_path, "--dataset", "rsna", "--n-images", n), "--n-images")
    assert list(tmp_path.iterdir()) == []


def test_prepare_starts_no_more_worker_processes_than_chunks(rsna_small, tmp_path, monkeypatch):
    """An absurd `--workers 500` on a 12-image dataset (one chunk per split) starts one process per
    chunk, not 500 forked interpreters, and still prepares the same cache."""
    import concurrent.futures

    import cxrbench.datasets.prepare as prepare_module

    sizes = []

    class Recording(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, max_workers=None, **kwargs):
            sizes.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(prepare_module, "ProcessPoolExecutor", Recording)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(get_adapter("rsna"), rsna_small, tmp_path / "out", size=32, workers=500)
    assert sizes and all(1 < n <= 3 for n in sizes), sizes  # three splits of at most 64 images: 3 chunks
