"""Fault class: duplicate annotation rows. One rule in every adapter: reported with file and both rows,
counted once, refused by --strict."""

from __future__ import annotations

import csv
import shutil
import warnings

import pytest

from cxrbench.datasets import get_adapter
from cxrbench.datasets.base import Problems
from cxrbench.errors import DataError

# dataset -> (annotation file, column that tells an annotated row)
CASES = {
    "rsna": ("stage_2_train_labels.csv", lambda row: row[-1] == "1"),
    "nih": ("BBox_List_2017.csv", lambda row: True),
    "object_cxr": ("train.csv", lambda row: row[1] != ""),
    "siim": ("train-rle.csv", lambda row: row[1].strip() != "-1"),
}


def _annotations(samples, dataset: str) -> int:
    if dataset == "siim":
        return sum(len(s.annotation.rows) for s in samples)
    return sum(len(s.boxes) for s in samples)


def _list(dataset, raw, strict=False):
    problems = Problems(strict=strict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = get_adapter(dataset).list_samples(raw, problems)
    return samples, problems


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_identical_rows_are_reported_counted_once_and_refused_by_strict(phantom_root, tmp_path, dataset):
    name, annotated = CASES[dataset]
    raw = tmp_path / dataset
    raw.mkdir()
    for entry in (phantom_root / dataset).iterdir():  # link the images, copy only the file we change
        if entry.name == name:
            shutil.copy(entry, raw / name)
        else:
            (raw / entry.name).symlink_to(entry)
    clean, clean_problems = _list(dataset, raw)
    rows = list(csv.reader(open(raw / name, newline="")))
    first = next(i for i in range(1, len(rows)) if annotated(rows[i]))
    rows.append(rows[first])
    with open(raw / name, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    first_row, copy_row = first + 1, len(rows)  # row numbers count the header as row 1

    samples, problems = _list(dataset, raw)
    assert _annotations(samples, dataset) == _annotations(clean, dataset)
    new = [p for p in problems.items if p not in clean_problems.items]
    assert len(new) == 1
    assert new[0].file == str(raw / name) and new[0].row == copy_row
    assert f"identical to row {first_row}" in new[0].message
    with pytest.raises(DataError, match=rf"{name}, row {copy_row}: identical to row {first_row}"):
        _list(dataset, raw, strict=True)
