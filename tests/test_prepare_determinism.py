"""Prepare's output does not depend on how it is computed: worker count, or the DICOM decoding path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxrbench.datasets import get_adapter
from cxrbench.datasets.dicom_io import _baseline_greyscale, read_dicom_image
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import CHUNK_SIZE, prepare

# prepared.json entries that name the run, not the content: when, by what, and the output path.
RUN_KEYS = ("provenance", "rebuild")


@pytest.fixture(scope="module")
def rsna(tmp_path_factory) -> Path:
    return write_phantom("rsna", tmp_path_factory.mktemp("raw") / "rsna", n_images=CHUNK_SIZE + 30, seed=5)


def cache_contents(root: Path) -> dict[str, bytes]:
    """Every file's bytes, prepared.json without its run entries."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "prepared.json":
            meta = json.loads(data)
            assert set(RUN_KEYS) <= set(meta)
            data = json.dumps({k: v for k, v in meta.items() if k not in RUN_KEYS}, sort_keys=True).encode()
        out[str(path.relative_to(root))] = data
    return out


def test_one_and_two_workers_write_identical_caches(rsna, tmp_path):
    caches = {}
    for workers in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = prepare(get_adapter("rsna"), rsna, tmp_path / f"w{workers}", size=64, workers=workers)
        caches[workers] = cache_contents(summary.out_root)
    assert sum(json.loads(caches[1]["prepared.json"])["counts"].values()) == CHUNK_SIZE + 30
    assert caches[1].keys() == caches[2].keys() and "train/images.npy" in caches[1]
    assert [name for name in caches[1] if caches[1][name] != caches[2][name]] == []


def test_pillow_baseline_path_decodes_as_pydicom_does(rsna):
    """The direct Pillow decode of JPEG Baseline frames gives pydicom's pixel_array exactly."""
    checked = 0
    for path in sorted((rsna / "stage_2_train_images").glob("*.dcm"))[:6]:
        ds = pydicom.dcmread(path)
        direct = _baseline_greyscale(ds)
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit:
            assert direct is not None and direct.dtype == np.uint8
            np.testing.assert_array_equal(direct, ds.pixel_array)
            checked += 1
        else:  # the phantom's uncompressed MONOCHROME1 image: pydicom decodes it
            assert direct is None
        image = read_dicom_image(path)
        assert image.dtype == np.float32 and image.flags.c_contiguous and 0 <= image.min() <= image.max() <= 1
    assert checked >= 4
