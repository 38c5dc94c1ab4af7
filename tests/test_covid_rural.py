"""COVID Rural adapter: phantom round trip, mask geometry by hand, dropped images, bad input."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.errors import DataError

N_PHANTOM = 24


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("covid_rural")
    raw = write_phantom("covid_rural", root / "raw", n_images=N_PHANTOM, seed=5)
    out = root / "prepared"
    prepare(get_adapter("covid_rural"), raw, out)
    return raw, out


def write_raw(root: Path, items: list[tuple[str, tuple[int, int], tuple | None]]) -> Path:
    """Hand-made raw folder: (stem, (height, width), mask rectangle (r1, r2, c1, c2) or None = no mask)."""
    (root / "jpgs").mkdir(parents=True)
    (root / "pngs_masks").mkdir()
    for stem, (height, width), rect in items:
        Image.new("L", (width, height), 80).save(root / "jpgs" / f"{stem}.jpg")
        if rect is not None:
            mask = np.zeros((height, width), np.uint8)
            r1, r2, c1, c2 = rect
            mask[r1:r2, c1:c2] = 1
            Image.fromarray(mask, mode="L").save(root / "pngs_masks" / f"{stem}.png")
    return root


def name(patient: int, n: int) -> str:
    return f"COVID-19-AR-{patient}_XR_CHEST_AP_PORTABLE_{n}"


def test_phantom_verifies_clean_with_unannotated_images_dropped(phantom):
    raw, _ = phantom
    images = sorted((raw / "jpgs").glob("*.jpg"))
    masks = sorted((raw / "pngs_masks").glob("*.png"))
    assert len(images) == N_PHANTOM and 0 < len(masks) < len(images)
    adapter = get_adapter("covid_rural")
    report = adapter.verify(raw)
    assert report.ok and not report.extra and not report.missing and not report.problems
    assert report.n_samples == len(masks)
    assert adapter.info == {"dropped_without_mask": len(images) - len(masks)}
    assert len(adapter.dropped_without_mask(raw)) == len(images) - len(masks)
    patients = {re.match(r"COVID-19-AR-(\d+)_", p.name).group(1) for p in images}
    assert len(patients) < len(images)  # several images per patient
    sizes = {Image.open(p).size for p in images}
    assert len(sizes) > 3 and any(w != h for w, h in sizes)


def test_phantom_prepared_splits_masks_and_geometry(phantom):
    raw, out = phantom
    ds = open_prepared(out)
    assert ds.splits == ("train", "val", "test") and ds.classes == ("opacity",)
    annotated = {p.stem for p in (raw / "pngs_masks").glob("*.png")}
    ids = [i for s in ds.splits for i in ds.split(s).image_ids]
    assert sorted(ids) == sorted(annotated)
    patients = [set(ds.split(s).patient_ids) for s in ds.splits]
    assert all(not (a & b) for i, a in enumerate(patients) for b in patients[i + 1 :])
    n_lesions, contrast = 0, []
    for split in ds.splits:
        for sample in ds.split(split):
            assert sample.patient_id == re.match(r"COVID-19-AR-(\d+)_", sample.image_id).group(1)
            assert sample.image.shape == (224, 224) and sample.masks.shape == (1, 224, 224)
            assert sample.boxes is None
            raw_mask = np.asarray(Image.open(raw / "pngs_masks" / f"{sample.image_id}.png")) > 0
            assert set(np.unique(np.asarray(Image.open(raw / "pngs_masks" / f"{sample.image_id}.png")))) <= {
                0,
                1,
            }
            height, width = raw_mask.shape
            side = max(height, width)
            scale, pad_x, pad_y = 224 / side, (side - width) // 2, (side - height) // 2
            area = raw_mask.sum() * scale**2
            prepared = sample.masks[0]
            if area < 30:
                continue
            n_lesions += 1
            assert abs(prepared.sum() - area) / area < 0.1
            rows, cols = np.nonzero(raw_mask)
            expected = ((cols.mean() + 0.5 + pad_x) * scale, (rows.mean() + 0.5 + pad_y) * scale)
            rows, cols = np.nonzero(prepared)
            np.testing.assert_allclose((cols.mean() + 0.5, rows.mean() + 0.5), expected, atol=1.0)
            ring = binary_dilation(prepared, iterations=4) & ~prepared
            contrast.append(sample.image[prepared].mean() - sample.image[ring].mean())
    assert n_lesions > 5
    assert np.median(contrast) > 10  # opacities are visibly brighter than their surroundings


def test_mask_geometry_by_hand_on_non_square_images(tmp_path):
    """Tall 300x200 (HxW): pad 50 left/right; wide 200x300: pad 50 top/bottom; scale 224/300."""
    s = 224 / 300
    raw = write_raw(
        tmp_path / "raw",
        [
            (name(1, 1), (300, 200), (30, 90, 20, 60)),
            (name(2, 1), (200, 300), (30, 90, 20, 60)),
            *[(name(p, 1), (100, 100), (10, 20, 10, 20)) for p in range(3, 8)],
        ],
    )
    prepare(get_adapter("covid_rural"), raw, tmp_path / "out", splits="patient")  # made-up ids
    ds = open_prepared(tmp_path / "out")
    samples = {x.image_id: x for split in ds.splits for x in ds.split(split)}
    for stem, (r1, r2, c1, c2) in (
        (name(1, 1), (30 * s, 90 * s, (20 + 50) * s, (60 + 50) * s)),
        (name(2, 1), ((30 + 50) * s, (90 + 50) * s, 20 * s, 60 * s)),
    ):
        rows, cols = np.nonzero(samples[stem].masks[0])
        assert abs(rows.min() - r1) <= 1 and abs(rows.max() + 1 - r2) <= 1
        assert abs(cols.min() - c1) <= 1 and abs(cols.max() + 1 - c2) <= 1


def test_mask_size_mismatch_names_the_mask_file(tmp_path):
    items = [(name(p, 1), (100, 80), (10, 30, 10, 30)) for p in range(1, 7)]
    raw = write_raw(tmp_path / "raw", items)
    bad = raw / "pngs_masks" / f"{name(3, 1)}.png"
    Image.new("L", (80, 90)).save(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = prepare(get_adapter("covid_rural"), raw, tmp_path / "out", splits="patient")
    assert summary.skipped_images == 1 and sum(summary.counts.values()) == 5
    assert summary.problems[0].file == str(bad) and "80x90" in summary.problems[0].message
    assert any(str(bad) in str(w.message) for w in caught)
    with pytest.raises(DataError) as info:
        prepare(get_adapter("covid_rural"), raw, tmp_path / "strict", strict=True, splits="patient")
    assert info.value.file == str(bad) and "same size" in info.value.expected


def test_truncated_image_bad_name_orphan_mask_and_extra(tmp_path):
    items = [(name(p, 1), (100, 80), (10, 30, 10, 30)) for p in range(1, 7)]
    raw = write_raw(tmp_path / "raw", [*items, (name(9, 1), (100, 80), None)])
    truncated = raw / "jpgs" / f"{name(2, 1)}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    Image.new("L", (80, 100)).save(raw / "jpgs" / "scan_0001.jpg")  # no patient id in the name
    Image.new("L", (80, 100)).save(raw / "pngs_masks" / "scan_0001.png")
    Image.new("L", (80, 100)).save(raw / "pngs_masks" / f"{name(8, 1)}.png")  # mask without image
    adapter = get_adapter("covid_rural")
    report = adapter.verify(raw)
    # the unannotated image is not 'extra'; the orphan mask and the unusable image are
    assert report.extra == [
        str(raw / "jpgs" / "scan_0001.jpg"),
        str(raw / "pngs_masks" / f"{name(8, 1)}.png"),
    ]
    # verify also finds the truncated image that prepare will skip (it reads every image header)
    assert [p.file for p in report.problems] == [str(raw / "jpgs" / "scan_0001.jpg"), str(truncated)]
    assert "COVID-19-AR-" in report.problems[0].expected
    assert "cut short" in report.problems[1].message or "not a readable" in report.problems[1].message
    assert adapter.info == {"dropped_without_mask": 1}
    with pytest.warns(UserWarning):
        summary = prepare(adapter, raw, tmp_path / "out", splits="patient")
    assert summary.skipped_images == 1 and summary.skipped_rows == 1
    assert any(p.file == str(truncated) and "cannot decode" in p.message for p in summary.problems)
    ds = open_prepared(tmp_path / "out")
    assert sum(len(ds.split(s)) for s in ds.splits) == 5
    with pytest.raises(DataError, match="scan_0001"):
        prepare(adapter, raw, tmp_path / "strict", strict=True, splits="patient")
