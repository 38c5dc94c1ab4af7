"""Prepare's split arrays: filled by plain writes, byte-identical to np.save, whole or refused."""

from __future__ import annotations

import errno
import io

import numpy as np
import pytest

import cxrbench.datasets.npy_rows as npy_rows
from cxrbench.datasets.npy_rows import copy_kept_rows, create_rows_file, is_rows_file, write_rows
from cxrbench.errors import CxrbenchError


def saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_a_filled_rows_file_is_what_np_save_writes(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (10, 6, 5), dtype=np.uint8)
    path = tmp_path / "images.npy"
    create_rows_file(path, rows.shape)
    assert is_rows_file(path, rows.shape) and not np.load(path).any()
    write_rows(path, 4, rows[4:10])  # out of order, as workers finish
    write_rows(path, 0, rows[:4])
    assert path.read_bytes() == saved(rows)
    assert [p.name for p in tmp_path.iterdir()] == ["images.npy"]  # no temporary file left


def test_rows_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "images.npy"
    create_rows_file(path, (3, 4, 4))
    with pytest.raises(ValueError, match="do not fit"):
        write_rows(path, 2, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="do not fit"):
        write_rows(path, 0, np.zeros((1, 4, 5), np.uint8))


def test_only_a_whole_file_of_the_shape_counts(tmp_path):
    path = tmp_path / "images.npy"
    assert not is_rows_file(path, (3, 4, 4))  # missing
    create_rows_file(path, (3, 4, 4))
    assert not is_rows_file(path, (2, 4, 4)) and not is_rows_file(path, (3, 4, 5))
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 1)
    assert not is_rows_file(path, (3, 4, 4))  # cut short
    path.write_bytes(saved(np.zeros((3, 4, 4), np.float32)))
    assert not is_rows_file(path, (3, 4, 4))  # another dtype
    path.write_bytes(b"not an array")
    assert not is_rows_file(path, (3, 4, 4))


def test_kept_rows_are_copied_in_order_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(npy_rows, "COPY_ROWS", 3)
    rows = np.random.default_rng(1).integers(0, 256, (11, 4, 3), dtype=np.uint8)
    source, target = tmp_path / "all.npy", tmp_path / "kept.npy"
    source.write_bytes(saved(rows))
    keep = np.ones(11, bool)
    keep[[0, 5, 6, 10]] = False
    copy_kept_rows(source, target, keep)
    assert target.read_bytes() == saved(rows[keep])
    copy_kept_rows(source, target, np.zeros(11, bool))
    assert target.read_bytes() == saved(rows[:0])


def test_a_disk_too_small_fails_at_once_naming_the_file(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(npy_rows.os, "posix_fallocate", full, raising=False)
    path = tmp_path / "train_images.npy"
    with pytest.raises(CxrbenchError, match=r"no space left on device while writing .*train_images\.npy"):
        create_rows_file(path, (100, 64, 64))
    assert list(tmp_path.iterdir()) == []  # nothing half-made


def test_a_file_system_without_reservation_still_gets_the_file(tmp_path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(npy_rows.os, "posix_fallocate", unsupported, raising=False)
    create_rows_file(tmp_path / "a.npy", (2, 3, 3))
    assert is_rows_file(tmp_path / "a.npy", (2, 3, 3))
