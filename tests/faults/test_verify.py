"""Fault class: broken raw images and boxes. `verify` finds everything `prepare` would skip."""

from __future__ import annotations

import csv
import io
import warnings

import pytest
from PIL import Image

from cxrbench.datasets import get_adapter
from cxrbench.datasets.prepare import prepare

from .helpers import copy_tree, run_cli


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


def _damage_rsna(raw):
    files = sorted((raw / "stage_2_train_images").glob("*.dcm"))
    files[0].write_bytes(b"")  # zero bytes
    files[1].write_bytes(files[1].read_bytes()[:-2000])  # download cut short
    files[2].write_bytes(_png_bytes())  # a foreign file with the right name
    labels = raw / "stage_2_train_labels.csv"
    rows = list(csv.reader(open(labels, newline="")))
    rows.append([files[3].stem, "5000", "5000", "100", "100", "1"])  # far outside the 1024x1024 image
    with open(labels, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return files[:3], len(rows)


@pytest.mark.parametrize("deep", [False, True])
def test_verify_reports_what_prepare_skips(rsna_small, tmp_path, deep):
    raw = copy_tree(rsna_small, tmp_path / "raw")
    broken, box_row = _damage_rsna(raw)
    report = get_adapter("rsna").verify(raw, deep=deep)
    assert not report.ok
    for path in broken:
        assert any(p.file == str(path) and "image skipped" in p.message for p in report.problems), path
    assert any(p.row == box_row and "outside" in p.message for p in report.problems)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = prepare(get_adapter("rsna"), raw, tmp_path / "out", size=64)
    skipped = {(p.file, p.row) for p in summary.problems}
    assert skipped == {(p.file, p.row) for p in report.problems}  # the same findings, file by file


def test_verify_raster_images_zero_truncated_foreign(phantom_root, tmp_path):
    raw = copy_tree(phantom_root / "object_cxr", tmp_path / "object_cxr")
    files = sorted((raw / "train").glob("*.jpg"))
    files[0].write_bytes(b"")
    files[1].write_bytes(files[1].read_bytes()[:-200])
    files[2].write_bytes(b"<html>404 not found</html>")
    report = get_adapter("object_cxr").verify(raw)
    found = {p.file for p in report.problems}
    assert {str(f) for f in files[:3]} <= found


def test_verify_cli_names_the_broken_files(rsna_small, tmp_path):
    raw = copy_tree(rsna_small, tmp_path / "raw")
    broken, _ = _damage_rsna(raw)
    result = run_cli("verify", "rsna", raw)
    assert result.exit_code == 1 and "Traceback" not in result.output
    for path in broken:
        assert path.name in result.output
    assert "FAILED" in result.output


def test_verify_fails_when_the_annotations_list_no_images(rsna_small, tmp_path):
    """A labels file with only its header lists nothing: `prepare` refuses it ("no usable images"),
    so `verify` must not call it OK."""
    raw = copy_tree(rsna_small, tmp_path / "raw")
    labels = raw / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text().splitlines()[0] + "\n")
    result = run_cli("verify", "rsna", raw)
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "list no images" in result.output and "OK" not in result.output
