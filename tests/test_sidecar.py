"""The per-image statistics sidecar: any JSON-shaped statistics round-trip exactly, whatever their names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrbench.protocol.sidecar import (
    SidecarError,
    SidecarStats,
    encode_stats,
    read_stats,
    same_stats,
    write_sidecar,
)

STATS = {
    "image_ids": ["b", "a", "c"],
    "a_new_count": [[1, 2], [3, 4], [5, 6]],  # names this module has never heard of
    "ragged_scores": [[0.5, 0.25], [], [1.0]],
    "hits": [[None, 0.75], [], [None]],
    "deep": [[[1], []], [], [[2, 3]]],
    "flags": [True, False, True],
    "maybe": [None, 0.5, None],
    "big": [2**40, -3, 0],
    "unicode": ["é", "", "x\ny"],
    "empty": [],
    "all_none": [None, None, None],
    "mixed_kinds": [1, "a", None],  # cannot share an array: stays inline
    "scalar": 3,
    "settings": {"threshold": 0.5},
}


def test_any_statistics_round_trip(tmp_path):
    record = tmp_path / "run-x.json"
    ref, inline = write_sidecar(record, STATS)
    assert inline == {"mixed_kinds": [1, "a", None], "scalar": 3, "settings": {"threshold": 0.5}}
    assert ref["file"].startswith("run-x.") and ref["n_images"] == 3 and ref["image_ids_unique"]
    back = read_stats(record.with_name(ref["file"]), ref, inline)
    assert back == STATS and [type(v) for v in back["big"]] == [int, int, int]
    lazy = SidecarStats(record.with_name(ref["file"]), ref, inline)
    assert "hits" in lazy and lazy._stats is None  # membership without reading the file
    assert dict(lazy) == STATS
    again, _ = write_sidecar(record, STATS)  # deterministic bytes: the same hash
    assert again["sha256"] == ref["sha256"]


def test_same_stats_compares_values():
    assert same_stats(STATS, dict(STATS))
    assert same_stats({"x": [1, 2]}, {"x": [1.0, 2.0]}) and same_stats({"x": [math.nan]}, {"x": [math.nan]})
    assert not same_stats(STATS, {**STATS, "hits": [[None, 0.7], [], [None]]})
    assert not same_stats({"x": [[1], [2]]}, {"x": [1, 2]}) and not same_stats({"x": [1]}, None)


def test_numpy_values_are_stored_as_their_lists():
    arrays, manifest, inline = encode_stats({"m": np.arange(6).reshape(3, 2), "s": [np.float32(0.5), None]})
    assert not inline and [e["depth"] for e in manifest] == [1, 0]
    assert arrays["a0"].dtype == np.int64 and arrays["a1"].dtype == np.float64


def test_a_changed_file_is_refused(tmp_path):
    ref, inline = write_sidecar(tmp_path / "run-x.json", STATS)
    path = tmp_path / ref["file"]
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with pytest.raises(SidecarError, match="does not match the sha256"):
        read_stats(path, ref, inline)


def test_extra_arrays_are_read_alone_and_verified(tmp_path):
    reps = np.linspace(0, 1, 11)
    ref, inline = write_sidecar(tmp_path / "run-x.json", STATS, {"bootstrap": reps})
    stats = SidecarStats(tmp_path / ref["file"], ref, inline)
    np.testing.assert_array_equal(stats.extra("bootstrap"), reps)
    assert stats._stats is None  # the statistics were not decoded
    with pytest.raises(SidecarError, match="no array"):
        stats.extra("other")
    path = tmp_path / ref["file"]
    data = bytearray(path.read_bytes())
    data[ref["extra"]["bootstrap"]["offset"] + ref["extra"]["bootstrap"]["size"] - 1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SidecarError, match="does not match the sha256"):
        stats.extra("bootstrap")
