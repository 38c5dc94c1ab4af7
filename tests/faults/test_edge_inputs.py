"""Fault class: edge inputs. Too-small datasets, out-of-range sizes and counts: one clear line each."""

from __future__ import annotations

import pytest

from cxrbench.datasets.phantom import write_phantom

from .helpers import assert_one_line_error, run_cli


def test_dataset_too_small_for_the_split_names_the_minimum(tmp_path):
    raw = write_phantom("rsna", tmp_path / "rsna", n_images=3, seed=0)
    result = run_cli("prepare", "rsna", raw, tmp_path / "out", "--size", "64")
    assert_one_line_error(result, "3 usable images", "at least 4 images")
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
