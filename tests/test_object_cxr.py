"""Object-CXR adapter: phantom round trip, geometry by hand (the reference got it wrong), bad input."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.datasets.object_cxr import parse_annotation
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.datasets.reference_splits import reference_split_ids
from cxrbench.errors import DataError

N_PHANTOM = 30


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("object_cxr")
    raw = write_phantom("object_cxr", root / "raw", n_images=N_PHANTOM, seed=3)
    out = root / "prepared"
    prepare(get_adapter("object_cxr"), raw, out)
    return raw, out


def read_csv(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {row["image_name"]: row["annotation"] for row in csv.DictReader(fh)}


def write_raw(root: Path, train: list[tuple], dev: list[tuple]) -> Path:
    """Write a hand-made raw folder: rows are (name, (height, width), annotation)."""
    for folder, rows in (("train", train), ("dev", dev)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / f"{folder}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_name", "annotation"])
            for name, (height, width), annotation in rows:
                Image.new("L", (width, height), 90).save(root / folder / name)
                writer.writerow([name, annotation])
    return root


def test_phantom_verifies_clean_and_has_all_object_types(phantom):
    raw, _ = phantom
    report = get_adapter("object_cxr").verify(raw)
    assert report.ok and not report.extra and not report.missing and not report.problems
    assert report.n_samples == N_PHANTOM
    annotations = {**read_csv(raw / "train.csv"), **read_csv(raw / "dev.csv")}
    kinds = {part.split()[0] for a in annotations.values() for part in a.split(";") if part}
    assert kinds == {"0", "1", "2"}
    sizes = {Image.open(p).size for p in raw.glob("*/*.jpg")}
    assert len(sizes) > 3 and any(w != h for w, h in sizes)
    # image names are real ids: train/ holds reference train and validation ids, dev/ reference test ids
    lists = reference_split_ids("object_cxr")
    train_names = {Path(p).stem for p in (raw / "train").glob("*.jpg")}
    dev_names = {Path(p).stem for p in (raw / "dev").glob("*.jpg")}
    assert train_names <= set(lists["train"]) | set(lists["val"]) and dev_names <= set(lists["test"])
    assert dev_names and train_names & set(lists["val"]) and train_names & set(lists["train"])


def test_phantom_prepared_splits_shapes_and_geometry(phantom):
    raw, out = phantom
    ds = open_prepared(out)
    assert ds.splits == ("train", "val", "test") and ds.classes == ("foreign_object",)
    dev = {Path(n).stem for n in read_csv(raw / "dev.csv")}
    train = {Path(n).stem for n in read_csv(raw / "train.csv")}
    assert set(ds.split("test").image_ids) == dev
    assert set(ds.split("train").image_ids) | set(ds.split("val").image_ids) == train
    lists = reference_split_ids("object_cxr")  # the reference lists decide train and val
    assert all(set(ds.split(s).image_ids) <= set(lists[s]) for s in ds.splits)
    assert ds.split_identity.scheme == "reference" and ds.split_identity.subset  # a phantom: a subset
    patients = [set(ds.split(s).patient_ids) for s in ds.splits]
    assert all(not (a & b) for i, a in enumerate(patients) for b in patients[i + 1 :])
    annotations = {**read_csv(raw / "train.csv"), **read_csv(raw / "dev.csv")}
    n_checked = 0
    for split in ds.splits:
        for sample in ds.split(split):
            assert sample.image.shape == (224, 224) and sample.image.dtype == np.uint8
            assert sample.masks.shape == (1, 224, 224) and sample.masks.dtype == bool
            folder = "dev" if split == "test" else "train"
            width, height = Image.open(raw / folder / f"{sample.image_id}.jpg").size
            side = max(width, height)
            scale, pad_x, pad_y = 224 / side, (side - width) // 2, (side - height) // 2
            expected = []
            for shape in parse_annotation(annotations[f"{sample.image_id}.jpg"]):
                xs, ys = shape.points[:, 0], shape.points[:, 1]
                x1, x2 = (xs.min() + pad_x) * scale, (xs.max() + pad_x) * scale
                y1, y2 = (ys.min() + pad_y) * scale, (ys.max() + pad_y) * scale
                expected.append([x1, y1, x2, y2])
            np.testing.assert_allclose(sample.boxes, np.reshape(expected, (-1, 4)), atol=1e-3)
            # every object is in the mask, inside its box (+1 px for nearest-neighbour resizing)
            outside = sample.masks[0].copy()
            for x1, y1, x2, y2 in sample.boxes:
                r1, r2, c1, c2 = int(y1) - 1, int(np.ceil(y2)) + 1, int(x1) - 1, int(np.ceil(x2)) + 1
                assert sample.masks[0, max(r1, 0) : r2, max(c1, 0) : c2].any()
                outside[max(r1, 0) : r2, max(c1, 0) : c2] = False
                n_checked += 1
            assert not outside.any()
            # the objects are bright in the image (sharp, dense foreign bodies)
            if sample.masks[0].sum() > 20:
                assert sample.image[sample.masks[0]].mean() > np.median(sample.image) + 40
    assert n_checked > 5


def test_geometry_by_hand_on_a_tall_image(tmp_path):
    """Tall 400x200 (HxW) image: pad 100 px left and right, scale 224/400 = 0.56."""
    triangle = "2 10 10 190 10 10 100"  # x = column, y = row
    raw = write_raw(
        tmp_path / "raw",
        train=[
            ("a.jpg", (400, 200), f"0 20 300 60 380;{triangle}"),
            ("b.jpg", (400, 200), "1 40 200 160 260"),
            ("c.jpg", (300, 300), ""),
            ("d.jpg", (300, 300), ""),
            ("e.jpg", (300, 300), ""),
        ],
        dev=[("f.jpg", (200, 400), "0 300 20 380 60")],
    )
    prepare(get_adapter("object_cxr"), raw, tmp_path / "out", splits="patient")  # made-up ids
    ds = open_prepared(tmp_path / "out")
    samples = {s.image_id: s for split in ds.splits for s in ds.split(split)}
    a, b, f = samples["a"], samples["b"], samples["f"]
    # box (20,300)-(60,380) -> ((20+100)*.56, 300*.56, (60+100)*.56, 380*.56); width 40 stays along x
    np.testing.assert_allclose(a.boxes[0], [67.2, 168.0, 89.6, 212.8], atol=1e-3)
    # the polygon's box: x 10..190, y 10..100
    np.testing.assert_allclose(a.boxes[1], [61.6, 5.6, 162.4, 56.0], atol=1e-3)
    # the box is filled in the mask at the right place (rows 168..213, cols 67..90)
    assert a.masks[0, 170:211, 69:88].all() and not a.masks[0, 214:, :].any()
    # polygon: raw point (x=150, y=20) is inside, its transpose (x=20, y=150) is not
    assert a.masks[0, int(20 * 0.56), int((150 + 100) * 0.56)]
    assert not a.masks[0, int(150 * 0.56), int((20 + 100) * 0.56)]
    # every polygon mask pixel maps back inside the triangle (1 raw px tolerance at 0.56 scale)
    rows, cols = np.nonzero(a.masks[0, :160])
    x, y = (cols + 0.5) / 0.56 - 100, (rows + 0.5) / 0.56
    assert np.all((x >= 10 - 2) & (y >= 10 - 2) & (y - 10 <= (1 - (x - 10) / 180) * 90 + 2))
    triangle_area = 0.5 * 180 * 90 * 0.56**2
    assert abs(a.masks[0, :160].sum() - triangle_area) / triangle_area < 0.05
    # ellipse (40,200)-(160,260): its mask is its bounding box (the protocol's and reference's rule)
    np.testing.assert_allclose(b.boxes[0], [78.4, 112.0, 145.6, 145.6], atol=1e-3)
    assert b.masks[0, int(230 * 0.56), int(200 * 0.56)]
    assert b.masks[0, 113, 79] and b.masks[0, 145, 145]  # the bbox corners are filled
    box_area = 120 * 60 * 0.56**2
    assert abs(b.masks[0].sum() - box_area) / box_area < 0.05
    # wide 200x400 (HxW) dev image: pad 100 px top and bottom; it is the test split
    assert ds.split("test").image_ids == ["f"]
    np.testing.assert_allclose(f.boxes[0], [168.0, 67.2, 212.8, 89.6], atol=1e-3)
    assert f.masks[0, 69:88, 170:211].all()


def test_missing_column_is_a_file_level_error(tmp_path):
    raw = write_raw(tmp_path / "raw", train=[("a.jpg", (100, 80), "")], dev=[("b.jpg", (100, 80), "")])
    (raw / "dev.csv").write_text("image_name,label\nb.jpg,\n")
    with pytest.raises(DataError) as info:
        prepare(get_adapter("object_cxr"), raw, tmp_path / "out")
    assert info.value.file.endswith("dev.csv") and info.value.row == 1
    assert "image_name, annotation" in info.value.expected


@pytest.mark.parametrize(
    "annotation",
    ["3 10 10 20 20", "2 10 10 20 20 30", "0 10 ten 20 20", "1 10 10 20", "2 10 10 20 20", "0 1 2 3 4;;x"],
)
def test_malformed_annotation_is_counted_and_strict_raises(tmp_path, annotation):
    assert parse_annotation("0 1 2 3 4;;") and parse_annotation("") == []
    rows = [(f"{k}.jpg", (120, 100), "0 10 10 30 30") for k in range(4)]
    raw = write_raw(tmp_path / "raw", train=[*rows, ("bad.jpg", (120, 100), annotation)], dev=rows[:0])
    Image.new("L", (100, 120)).save(raw / "dev" / "z.jpg")
    (raw / "dev.csv").write_text("image_name,annotation\nz.jpg,\n")
    with pytest.warns(UserWarning, match=r"train\.csv, row 6: malformed annotation"):
        summary = prepare(get_adapter("object_cxr"), raw, tmp_path / "out", splits="patient")
    assert summary.skipped_rows == 1 and summary.counts["train"] + summary.counts["val"] == 4
    assert summary.problems[0].row == 6 and summary.problems[0].file.endswith("train.csv")
    report = get_adapter("object_cxr").verify(raw)
    assert not report.ok and report.problems[0].row == 6
    assert report.extra == [str(raw / "train" / "bad.jpg")]
    with pytest.raises(DataError, match=r"train\.csv, row 6"):
        prepare(get_adapter("object_cxr"), raw, tmp_path / "strict", strict=True, splits="patient")


def test_absent_image_outside_box_truncated_file_and_extra(tmp_path):
    rows = [(f"{k}.jpg", (120, 100), "0 10 10 30 30") for k in range(5)]
    raw = write_raw(
        tmp_path / "raw",
        # a box, a polygon entirely outside the 100x120 (WxH) image, an ellipse overhanging its corner
        train=[*rows, ("out.jpg", (120, 100), "0 10 10 30 30;2 150 10 190 10 170 40;1 80 100 130 140")],
        dev=[("d.jpg", (120, 100), "")],
    )
    (raw / "train" / "0.jpg").unlink()  # listed but absent
    Image.new("L", (100, 120)).save(raw / "train" / "stray.jpg")  # present but not listed
    data = (raw / "train" / "1.jpg").read_bytes()
    (raw / "train" / "1.jpg").write_bytes(data[: len(data) // 2])  # truncated
    report = get_adapter("object_cxr").verify(raw)
    assert report.missing == [str(raw / "train" / "0.jpg")]
    assert report.extra == [str(raw / "train" / "stray.jpg")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = prepare(get_adapter("object_cxr"), raw, tmp_path / "out", splits="patient")
    messages = [str(w.message) for w in caught]
    assert any("0.jpg is listed but absent" in m and "train.csv, row 2" in m for m in messages)
    assert summary.skipped_images == 1
    texts = [str(p) for p in summary.problems]
    assert any(t.startswith(str(raw / "train" / "1.jpg")) and "image skipped" in t for t in texts)
    assert any("train.csv, row 7" in t and "entirely outside the 100x120 image" in t for t in texts)
    assert summary.clipped_boxes == 1
    ds = open_prepared(tmp_path / "out")
    ids = [i for s in ds.splits for i in ds.split(s).image_ids]
    assert sorted(ids) == ["2", "3", "4", "d", "out"]
    out = next(s for split in ds.splits for s in ds.split(split) if s.image_id == "out")
    # the polygon outside the image is dropped from boxes and mask alike; the ellipse is clipped to
    # (80, 100)-(100, 120) in both: pad 10 px left and right, scale 224/120
    assert len(out.boxes) == 2
    np.testing.assert_allclose(out.boxes[1], np.array([90, 100, 110, 120]) * 224 / 120, atol=1e-3)
    box_area = sum((b[2:] - b[:2]).prod() for b in out.boxes)
    assert abs(out.masks[0].sum() - box_area) / box_area < 0.1
    assert out.masks[0, 223, 204] and not out.masks[0, 223, 210]  # clipped at the image edge, not the pad
    with pytest.raises(DataError, match=r"train\.csv, row 2: image .*0\.jpg is listed but absent"):
        prepare(get_adapter("object_cxr"), raw, tmp_path / "strict", strict=True, splits="patient")
