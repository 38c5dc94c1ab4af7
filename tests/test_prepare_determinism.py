"""Prepare's output does not depend on how it is computed: worker count, or the DICOM decoding path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrbench.datasets import get_adapter
from cxrbench.datasets.dicom_io import _baseline_greyscale, read_dicom_image, read_dicom_scaled
from cxrbench.datasets.geometry import SquareResize
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


def test_pillow_paths_give_pydicoms_pixels_and_the_same_prepared_image(rsna):
    """The direct Pillow decode equals pydicom's pixel_array; the "F" image prepare resizes holds the
    values of the float formula on them; resizing it equals resizing that array."""
    checked = 0
    geometry = SquareResize(1024, 1024, 224)
    for path in sorted((rsna / "stage_2_train_images").glob("*.dcm"))[:6]:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        expected = np.clip((pixels.astype(np.float32) - 0.0) / 255.0, 0.0, 1.0)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            expected = 1.0 - expected
        scaled, image = read_dicom_scaled(path), read_dicom_image(path)
        np.testing.assert_array_equal(image, expected)
        assert image.dtype == np.float32 and image.flags.c_contiguous and image.flags.writeable
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit:
            np.testing.assert_array_equal(np.asarray(_baseline_greyscale(ds)), pixels)
            assert isinstance(scaled, Image.Image) and scaled.mode == "F"
            np.testing.assert_array_equal(np.asarray(scaled), expected)
            np.testing.assert_array_equal(geometry.image(scaled), geometry.image(expected))
            checked += 1
        else:  # the phantom's uncompressed MONOCHROME1 image: pydicom decodes it
            assert _baseline_greyscale(ds) is None and isinstance(scaled, np.ndarray)
    assert checked >= 4
