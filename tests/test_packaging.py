"""Package data: the reference split lists load, and the built wheel carries every data file.

The end-to-end wheel check (fresh venv, non-editable install, evaluate + leaderboard from outside
the repository) is `.ci/wheel_check.sh`; `test_wheel_check_script` runs it under `-m slow`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxrbench.datasets import DATASET_NAMES
from cxrbench.datasets.reference_splits import REFERENCE_DATASETS, reference_split_ids
from cxrbench.errors import CxrbenchError, DataError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cxrbench"
SPLITS_DIR = PACKAGE / "datasets" / "reference_splits"

# The sizes the shipped README.md of the lists states (train, validation, test).
REFERENCE_COUNTS = {
    "rsna": (16010, 5337, 5337),
    "siim": (7229, 2409, 2409),
    "object_cxr": (6400, 1600, 1000),
    "nih": (588, 196, 196),
    "covid_rural": (133, 44, 44),
}


@pytest.mark.parametrize("dataset", sorted(REFERENCE_COUNTS))
def test_reference_split_ids_match_the_published_sizes(dataset):
    splits = reference_split_ids(dataset)
    assert list(splits) == ["train", "val", "test"]
    assert tuple(len(ids) for ids in splits.values()) == REFERENCE_COUNTS[dataset]
    all_ids = [i for ids in splits.values() for i in ids]
    assert len(set(all_ids)) == len(all_ids)
    assert all(i == i.strip() and i for i in all_ids)


def test_reference_datasets_are_adapters_and_mimic_has_none():
    assert set(REFERENCE_DATASETS) == set(REFERENCE_COUNTS)
    assert set(REFERENCE_DATASETS) <= set(DATASET_NAMES)
    with pytest.raises(CxrbenchError, match="no reference split lists for dataset 'mimic_cxr'"):
        reference_split_ids("mimic_cxr")


def test_reference_ids_keep_dataset_id_formats():
    assert reference_split_ids("object_cxr")["test"][:2] == ["08001", "08002"]  # leading zeros kept
    assert all(i.startswith("COVID-19-AR-") for i in reference_split_ids("covid_rural")["train"])


def _write_lists(root: Path, train: str, validation: str, test: str) -> None:
    folder = root / "nih"
    folder.mkdir(parents=True)
    for stem, text in (("train", train), ("validation", validation), ("test", test)):
        (folder / f"{stem}.txt").write_text(text)


def test_an_id_in_two_splits_is_refused_with_file_and_row(tmp_path):
    _write_lists(tmp_path, "a\nb\n", "c\n", "d\nb\n")
    with pytest.raises(DataError, match=r"test\.txt, row 2: id 'b' already listed in train"):
        reference_split_ids("nih", root=tmp_path)


def test_a_blank_line_is_refused_and_a_missing_file_named(tmp_path):
    _write_lists(tmp_path, "a\n\nb\n", "c\n", "d\n")
    with pytest.raises(DataError, match=r"train\.txt, row 2: blank line"):
        reference_split_ids("nih", root=tmp_path)
    (tmp_path / "nih" / "validation.txt").unlink()
    (tmp_path / "nih" / "train.txt").write_text("a\n")
    with pytest.raises(CxrbenchError, match=r"validation\.txt is missing"):
        reference_split_ids("nih", root=tmp_path)


def test_licence_notice_travels_with_the_lists():
    notice = (SPLITS_DIR / "LICENSE").read_text()
    assert notice.startswith("MIT License")
    assert "The above copyright notice and this permission notice shall be included" in notice


# Documents that exist only outside the repository; built from parts so this file does not match itself.
OUTSIDE_DOCUMENTS = ("PROTOCOL" + ".md", "DESIGN" + ".md", "../" + "shared", "/work" + "/")
SCANNED = (
    "cxrbench",
    "docs",
    "tests",
    "benchmarks",
    "examples",
    ".ci",
    "README.md",
    "Makefile",
    "pyproject.toml",
)


def test_no_file_refers_to_a_document_outside_the_repository():
    offenders = []
    for top in SCANNED:
        root = REPO / top
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for n, line in enumerate(text.splitlines(), start=1):
                offenders += [f"{path.relative_to(REPO)}:{n}: {d}" for d in OUTSIDE_DOCUMENTS if d in line]
    assert not offenders, "\n".join(offenders)


def _source_files() -> set[str]:
    """Every file of the package source tree, as wheel member names."""
    return {
        p.relative_to(REPO).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_wheel_contains_every_package_file(tmp_path):
    """The wheel holds all modules and data files (published rows, split lists, their licence)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(PACKAGE, src / "cxrbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (tmp_path / "dist").glob("cxrbench-*.whl")
    members = set(zipfile.ZipFile(wheel).namelist())
    expected = _source_files()
    assert "cxrbench/leaderboard/data/lovt_published.csv" in expected
    assert "cxrbench/datasets/reference_splits/rsna/train.txt" in expected
    assert not expected - members, f"missing from the wheel: {sorted(expected - members)}"
    assert any(m.endswith(".dist-info/licenses/cxrbench/datasets/reference_splits/LICENSE") for m in members)


@pytest.mark.slow
def test_wheel_check_script():
    """Build, install non-editably into a fresh venv, evaluate and build the leaderboard (~40 s)."""
    result = subprocess.run(
        ["bash", str(REPO / ".ci" / "wheel_check.sh"), sys.prefix],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ok: the wheel installs" in result.stdout
