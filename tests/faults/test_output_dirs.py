"""Fault class: output folders. prepare/phantom write only into new, empty or their own folders."""

from __future__ import annotations

import pytest

from cxrbench.datasets import open_prepared
from cxrbench.errors import OutputDirError
from cxrbench.output_dirs import ABSENT, EMPTY, OURS, claim_output_dir

from .helpers import assert_one_line_error, copy_tree, folder_digest, run_cli


def test_claim_output_dir_states_and_refusals(tmp_path):
    assert claim_output_dir(tmp_path / "new", marker="done.json", kind="thing").state == ABSENT
    (tmp_path / "empty").mkdir()
    assert claim_output_dir(tmp_path / "empty", marker="done.json", kind="thing").state == EMPTY
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "done.json").write_text("{}")
    assert claim_output_dir(tmp_path / "ours", marker="done.json", kind="thing").state == OURS
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"notes\.txt"):
        claim_output_dir(tmp_path / "user", marker="done.json", kind="thing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="existing file"):
        claim_output_dir(tmp_path / "file", marker="done.json", kind="thing")
    for out, inp, how in [
        (tmp_path / "user", tmp_path / "user", "same folder"),
        (tmp_path / "user" / "sub", tmp_path / "user", "lies inside"),
        (tmp_path, tmp_path / "user", "contains"),
    ]:
        with pytest.raises(OutputDirError, match=how):
            claim_output_dir(out, marker="done.json", kind="thing", inputs=[inp])


@pytest.mark.parametrize("where", ["same", "inside_raw", "raw_inside_out"])
@pytest.mark.parametrize("force", [False, True])
def test_prepare_never_writes_into_or_around_raw(rsna_small, tmp_path, where, force):
    downloads = tmp_path / "DL"
    raw = copy_tree(rsna_small, downloads / "rsna")
    (downloads / "notes.txt").write_text("my notes")
    out = {"same": raw, "inside_raw": raw / "prepared", "raw_inside_out": downloads}[where]
    before = folder_digest(downloads)
    result = run_cli("prepare", "rsna", raw, out, "--size", "64", *(["--force"] if force else []))
    assert_one_line_error(result, "input folder")
    assert folder_digest(downloads) == before


@pytest.mark.parametrize("force", [False, True])
def test_prepare_refuses_a_user_folder_even_with_force(rsna_small, tmp_path, force):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("do not delete")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("a,b\n")
    before = folder_digest(out)
    result = run_cli("prepare", "rsna", rsna_small, out, "--size", "64", *(["--force"] if force else []))
    assert_one_line_error(result, str(out), "notes.txt")
    assert folder_digest(out) == before
    assert not (tmp_path / "mine.partial").exists()


def test_prepare_refuses_an_existing_file_and_a_user_partial_folder(rsna_small, tmp_path):
    target = tmp_path / "cache"
    target.write_text("a file the user owns")
    assert_one_line_error(run_cli("prepare", "rsna", rsna_small, target, "--size", "64"), "existing file")
    assert target.read_text() == "a file the user owns"
    out = tmp_path / "out"
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "keep.txt").write_text("mine")
    before = folder_digest(partial)
    assert_one_line_error(run_cli("prepare", "rsna", rsna_small, out, "--size", "64"), "keep.txt")
    assert folder_digest(partial) == before and not out.exists()


def test_prepare_writes_into_an_empty_folder_and_force_replaces_only_its_own_cache(rsna_small, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli("prepare", "rsna", rsna_small, out, "--size", "64").exit_code == 0
    assert open_prepared(out).size == 64
    assert run_cli("prepare", "rsna", rsna_small, out, "--size", "96", "--force").exit_code == 0
    assert open_prepared(out).size == 96
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .old, .partial or leftovers


def test_phantom_refuses_files_and_non_empty_folders(tmp_path):
    (tmp_path / "rsna").write_text("a file")
    assert_one_line_error(
        run_cli("phantom", tmp_path, "--dataset", "rsna", "--n-images", "4"), "existing file"
    )
    assert (tmp_path / "rsna").read_text() == "a file"
    partial = tmp_path / "other" / "rsna.partial"
    partial.mkdir(parents=True)
    (partial / "keep.txt").write_text("mine")
    result = run_cli("phantom", tmp_path / "other", "--dataset", "rsna", "--n-images", "4")
    assert_one_line_error(result, "keep.txt")
    assert (partial / "keep.txt").read_text() == "mine"
