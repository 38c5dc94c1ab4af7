"""The reference split lists: shipped lists, prepare's default split, phantoms, subsets, run identity."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.datasets.base import RawSample
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.phantom.ids import allocate, sample_reference_ids
from cxrbench.datasets.prepare import prepare
from cxrbench.datasets.reference_splits import (
    REFERENCE_DATASETS,
    all_reference_lists_sha256,
    reference_lists_sha256,
    reference_split_ids,
)
from cxrbench.datasets.split_scheme import (
    PHANTOM_MARKER,
    SplitIdentity,
    assign_splits,
    full_reference_identity,
    train_subsets,
)
from cxrbench.datasets.splits import DEFAULT_SEED
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.record_schema import checkpoint_info, make_record
from cxrbench.protocol.records import RunSpec
from cxrbench.protocol.tasks import PROFILES, protocol_hash

SIZE = 32
COUNTS = {
    "rsna": (16010, 5337, 5337),
    "siim": (7229, 2409, 2409),
    "object_cxr": (6400, 1600, 1000),
    "nih": (588, 196, 196),
    "covid_rural": (133, 44, 44),
}


def _quiet_prepare(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(*args, **kwargs)


def test_shipped_lists_have_the_reference_counts_and_stable_hashes():
    for dataset in REFERENCE_DATASETS:
        lists = reference_split_ids(dataset)
        assert tuple(len(lists[s]) for s in ("train", "val", "test")) == COUNTS[dataset]
        assert len(reference_lists_sha256(dataset)) == 64
    assert len({reference_lists_sha256(d) for d in REFERENCE_DATASETS}) == 5
    assert full_reference_identity() == SplitIdentity("reference", all_reference_lists_sha256(), False)
    assert full_reference_identity().full_reference


def test_phantom_ids_are_a_seeded_proportional_sample_of_the_lists():
    assert allocate(60, {"train": 16010, "val": 5337, "test": 5337}) == {"train": 36, "val": 12, "test": 12}
    assert allocate(3, {"train": 6400, "val": 1600, "test": 1000}) == {"train": 1, "val": 1, "test": 1}
    assert sum(allocate(2, {"a": 5, "b": 1, "c": 1}).values()) == 2
    assert allocate(10, {"a": 2, "b": 1}) == {"a": 2, "b": 1}  # never more than a list holds
    lists = reference_split_ids("object_cxr")
    one = sample_reference_ids("object_cxr", 50, seed=1)
    assert one == sample_reference_ids("object_cxr", 50, seed=1) != sample_reference_ids("object_cxr", 50, 2)
    assert {s: len(v) for s, v in one.items()} == {"train": 36, "val": 9, "test": 5}
    assert all(set(one[s]) <= set(lists[s]) for s in one)


@pytest.fixture(scope="module")
def rsna_raw(tmp_path_factory) -> Path:
    return write_phantom("rsna", tmp_path_factory.mktemp("ref") / "rsna", n_images=20, seed=4)


@pytest.fixture(scope="module")
def rsna_prepared(rsna_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref_prepared") / "rsna"
    _quiet_prepare(get_adapter("rsna"), rsna_raw, out, size=SIZE)
    return out


def test_prepare_of_a_phantom_uses_the_lists_and_records_a_subset(rsna_raw, rsna_prepared):
    lists = reference_split_ids("rsna")
    data = open_prepared(rsna_prepared)
    for split in data.splits:  # each split holds its list's ids, in list order
        ids = data.split(split).image_ids
        assert ids and ids == [i for i in lists[split] if i in set(ids)]
    assert sum(len(data.split(s)) for s in data.splits) == 20
    record = data.meta["split"]
    assert record["scheme"] == "reference" and record["subset"] and record["phantom"]
    assert record["lists_sha256"] == all_reference_lists_sha256()
    assert record["dataset_lists_sha256"] == reference_lists_sha256("rsna")
    assert record["listed_ids_missing"] == 26684 - 20
    assert data.split_identity == SplitIdentity("reference", all_reference_lists_sha256(), True)
    assert not data.split_identity.full_reference
    manifest = data.root / "manifest.json"
    import json

    saved = json.loads(manifest.read_text())
    assert saved["split"]["scheme"] == "reference" and saved["split"]["patients_in_several_splits"] == 0
    assert saved["subsets"]["train_1pct"]["image_ids"] == data.split("train", 1).image_ids
    assert (rsna_raw / PHANTOM_MARKER).is_file()


def test_subsets_are_nested_prefixes_of_one_permutation_of_the_reference_train_list(rsna_prepared):
    data = open_prepared(rsna_prepared)
    train = data.split("train").image_ids
    reference_train = reference_split_ids("rsna")["train"]
    order = [reference_train[i] for i in np.random.default_rng(DEFAULT_SEED + 1).permutation(16010)]
    ranked = [i for i in order if i in set(train)]
    one, ten = data.split("train", 1).image_ids, data.split("train", 10).image_ids
    assert set(one) == set(ranked[:2]) and set(ten) == set(ranked[: max(2, round(0.1 * len(train)))])
    assert set(one) <= set(ten)


def test_on_the_full_train_list_subsets_are_160_and_1601_prefixes():
    adapter = get_adapter("rsna")
    reference_train = reference_split_ids("rsna")["train"]
    subsets = train_subsets(adapter, "reference", reference_train, DEFAULT_SEED)
    order = np.random.default_rng(DEFAULT_SEED + 1).permutation(16010)
    assert np.array_equal(subsets["1"], np.sort(order[:160]))
    assert np.array_equal(subsets["10"], np.sort(order[:1601]))
    assert set(subsets["1"]) <= set(subsets["10"])


def _fake_samples(ids: list[str]) -> list[RawSample]:
    return [RawSample(i, i, Path(f"/nowhere/{i}.dcm")) for i in ids]


def test_missing_listed_ids_are_an_error_naming_the_first_few_and_the_count(tmp_path):
    adapter = get_adapter("covid_rural")
    lists = reference_split_ids("covid_rural")
    listed = [i for s in ("train", "val", "test") for i in lists[s]]
    full = assign_splits(adapter, _fake_samples([*listed, "COVID-19-AR-1_x"]), "reference", 0, tmp_path)
    assert [len(full.splits[s]) for s in ("train", "val", "test")] == [133, 44, 44]
    assert full.missing == 0 and not full.phantom and full.info == {"not_in_reference_lists": 1}
    gone = [listed[3], listed[150], listed[200]]
    kept = [i for i in listed if i not in gone]
    with pytest.raises(CxrbenchError) as info:
        assign_splits(adapter, _fake_samples(kept), "reference", 0, tmp_path)
    message = str(info.value)
    assert "3 of the 221 ids" in message and all(g in message for g in gone) and "--splits patient" in message
    (tmp_path / PHANTOM_MARKER).write_text("{}")  # a phantom: the lists shrink to what is there
    partial = assign_splits(adapter, _fake_samples(kept), "reference", 0, tmp_path)
    assert partial.missing == 3 and partial.phantom and sum(map(len, partial.splits.values())) == 218


def test_a_real_download_missing_listed_ids_is_refused(rsna_raw, tmp_path):
    raw = Path(shutil.copytree(rsna_raw, tmp_path / "rsna"))
    (raw / PHANTOM_MARKER).unlink()
    with pytest.raises(CxrbenchError, match=r"rsna: 26664 of the 26684 ids of the reference split lists"):
        _quiet_prepare(get_adapter("rsna"), raw, tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out").exists()
    summary = _quiet_prepare(get_adapter("rsna"), raw, tmp_path / "by_patient", size=SIZE, splits="patient")
    assert summary.split == SplitIdentity("patient") and sum(summary.counts.values()) == 20


def test_images_in_no_list_are_left_out_and_counted(rsna_raw, tmp_path):
    raw = Path(shutil.copytree(rsna_raw, tmp_path / "rsna"))
    images = raw / "stage_2_train_images"
    shutil.copy(next(images.glob("*.dcm")), images / "not-a-listed-patient.dcm")
    with open(raw / "stage_2_train_labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["not-a-listed-patient", "", "", "", "", "0"])
    summary = _quiet_prepare(get_adapter("rsna"), raw, tmp_path / "out", size=SIZE)
    assert summary.info == {"not_in_reference_lists": 1} and sum(summary.counts.values()) == 20
    data = open_prepared(tmp_path / "out")
    assert all("not-a-listed-patient" not in data.split(s).image_ids for s in data.splits)


def test_a_complete_download_is_recorded_as_the_full_reference(rsna_raw, tmp_path, monkeypatch):
    """Lists that the download covers exactly, no phantom marker: not a subset, comparable."""
    import cxrbench.datasets.split_scheme as scheme

    raw = Path(shutil.copytree(rsna_raw, tmp_path / "rsna"))
    (raw / PHANTOM_MARKER).unlink()
    ids = sorted(p.stem for p in (raw / "stage_2_train_images").glob("*.dcm"))
    lists = {"train": ids[:12], "val": ids[12:16], "test": ids[16:]}
    monkeypatch.setattr(scheme, "reference_split_ids", lambda dataset: lists)
    summary = _quiet_prepare(get_adapter("rsna"), raw, tmp_path / "out", size=SIZE)
    assert summary.counts == {"train": 12, "val": 4, "test": 4}
    assert summary.split == full_reference_identity() and summary.split.full_reference
    assert open_prepared(tmp_path / "out").split_identity.full_reference


def test_patient_scheme_is_recorded_and_a_cache_is_not_reused_across_schemes(rsna_raw, tmp_path):
    out = tmp_path / "out"
    summary = _quiet_prepare(get_adapter("rsna"), rsna_raw, out, size=SIZE, splits="patient")
    assert open_prepared(out).split_identity == SplitIdentity("patient")
    assert summary.patients_in_several_splits == 0
    with pytest.raises(CxrbenchError, match=r"other settings .*split"):
        _quiet_prepare(get_adapter("rsna"), rsna_raw, out, size=SIZE)
    assert _quiet_prepare(get_adapter("rsna"), rsna_raw, out, size=SIZE, splits="patient").reused
    with pytest.raises(CxrbenchError, match="only its official split"):
        _quiet_prepare(get_adapter("mimic_cxr"), rsna_raw, tmp_path / "m", splits="patient")


def test_the_split_is_part_of_the_protocol_hash_and_of_each_record():
    full = PROFILES["full"]
    reference, subset = (
        full_reference_identity(),
        SplitIdentity("reference", all_reference_lists_sha256(), True),
    )
    hashes = {protocol_hash(full, s) for s in (reference, subset, SplitIdentity("patient"))}
    assert len(hashes) == 3 and protocol_hash(full) == protocol_hash(full, reference)
    specs = [
        RunSpec("enc", "random:resnet18", "covid_linear", "final", 0.01, 0, full, splits=s)
        for s in (None, reference, subset)
    ]
    assert specs[0].key == specs[1].key != specs[2].key
    record = make_record(
        specs[2],
        checkpoint_info("random", None, "random:resnet18"),
        device="cpu",
        outcome=RuntimeError("x"),
        wall_time_s=0.0,
    )
    assert record["splits"] == subset.as_dict() and record["protocol_hash"] == specs[2].protocol_hash
    assert SplitIdentity.from_dict(record["splits"]) == subset
