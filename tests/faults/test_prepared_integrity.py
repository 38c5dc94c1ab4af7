"""Fault class: damaged prepared caches. One line naming the file and the command that rebuilds it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrbench.datasets import open_prepared
from cxrbench.datasets.prepared import verify_prepared
from cxrbench.errors import CxrbenchError, DamagedCacheError
from cxrbench.protocol.task_data import open_task_dataset

from .helpers import assert_one_line_error, copy_tree, run_cli


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _remove(path):
    path.unlink()


def _break_json(path):
    path.write_text(path.read_text()[:40])


DAMAGE = {
    "truncated images": ("val/images.npy", _truncate),
    "random bytes over a whole array": ("train/box_offsets.npy", _garbage),
    "missing meta file": ("test/meta.json", _remove),
    "broken prepared.json": ("prepared.json", _break_json),
    "broken manifest": ("manifest.json", _break_json),
    "missing masks": ("train/masks.npy", _remove),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_cache_gives_one_line_naming_file_and_rebuild(rsna_prepared, tmp_path, kind):
    root = copy_tree(rsna_prepared, tmp_path / "data" / "rsna")
    name, damage = DAMAGE[kind]
    damage(root / name)
    with pytest.raises(DamagedCacheError) as err:
        open_task_dataset(tmp_path / "data", "rsna")  # what evaluate opens
    assert str(root / name) in str(err.value) and "cxrbench prepare rsna" in str(err.value)
    assert "--force" in str(err.value)
    assert_one_line_error(run_cli("verify", "--prepared", root), str(root / name), "cxrbench prepare")


def test_pixels_changed_in_place_are_found_by_full_verify(rsna_prepared, tmp_path):
    root = copy_tree(rsna_prepared, tmp_path / "rsna")
    assert verify_prepared(root) == []
    masks = np.load(root / "train" / "masks.npy", mmap_mode="r+")
    masks[0, 0, 5, 1] ^= 0xFF
    masks.flush()
    del masks
    open_prepared(root)  # sizes and shapes are intact: opening stays cheap and succeeds
    lines = verify_prepared(root)
    assert len(lines) == 1 and "train/masks.npy" in lines[0] and "--force" in lines[0]
    result = run_cli("verify", "--prepared", root)
    assert result.exit_code == 1 and "masks.npy" in result.output and "Traceback" not in result.output
    assert run_cli("verify", "--prepared", rsna_prepared).exit_code == 0


def test_cache_written_before_checksums_still_opens(rsna_prepared, tmp_path, rsna_small):
    root = copy_tree(rsna_prepared, tmp_path / "rsna")
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["splits"].values():
        del entry["files"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    marker = json.loads((root / "prepared.json").read_text())
    marker["config"] = {k: marker["config"][k] for k in ("dataset", "size", "seed", "equalize", "classes")}
    marker["config"]["format_version"] = 1
    for key in ("raw", "strict", "raw_dir", "rebuild", "problems"):
        del marker[key]
    (root / "prepared.json").write_text(json.dumps(marker))
    dataset = open_prepared(root)
    assert dataset.split("train")[0].image.shape == (64, 64)
    assert "cannot be verified" in verify_prepared(root)[0]
    result = run_cli("prepare", "rsna", rsna_small, root, "--size", "64")
    assert_one_line_error(result, "another cxrbench version", "--force")
    _truncate(root / "val" / "images.npy")
    with pytest.raises(DamagedCacheError, match="truncated"):
        open_prepared(root)


def test_cache_of_a_newer_format_is_refused_with_the_upgrade_path(rsna_prepared, tmp_path):
    root = copy_tree(rsna_prepared, tmp_path / "rsna")
    marker = root / "prepared.json"
    meta = json.loads(marker.read_text())
    meta["config"]["format_version"] += 1
    marker.write_text(json.dumps(meta))
    with pytest.raises(CxrbenchError, match="prepared by a newer cxrbench"):
        open_prepared(root)
