"""The reference's validation share (RSNA validates on the first 10% of its validation list) and its
training loaders' dropped last partial batch and checkpoint and early-stopping rules, as ours apply them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cxrbench.errors import CxrbenchError
from cxrbench.protocol.plan import split_sizes
from cxrbench.protocol.task_data import TaskSplit, load_task_split, open_task_dataset
from cxrbench.protocol.tasks import MIN_VALIDATION_IMAGES, PROFILES, TASKS, TASKS_BY_ID
from cxrbench.protocol.training import MIN_DELTA, Selection

FULL = PROFILES["full"]


def test_rsna_tasks_validate_on_a_tenth_and_the_others_on_all():
    assert {t.task_id for t in TASKS if t.val_fraction != 1.0} == {
        t.task_id for t in TASKS if t.dataset == "rsna"
    }
    assert {t.val_fraction for t in TASKS if t.dataset == "rsna"} == {0.1}
    task = TASKS_BY_ID["rsna_yolo_frozen_10"]
    # the reference's round(n * 0.1): 5337 validation images -> 534 (Python's round, as the reference)
    assert task.validation_count(5337) == 534
    assert task.validation_count(6405) == 640  # round(640.5) is 640, as in the reference
    # never below MIN_VALIDATION_IMAGES: a phantom's or a small download's split stays usable
    assert task.validation_count(500) == MIN_VALIDATION_IMAGES  # not round(50)
    assert task.validation_count(700) == 70
    assert task.validation_count(30) == 30
    assert task.validation_count(0) == 0
    assert TASKS_BY_ID["covid_linear"].validation_count(44) == 44
    with pytest.raises(CxrbenchError, match="val_fraction"):
        dataclasses.replace(task, val_fraction=0.0)


def test_the_validation_share_is_the_first_images_in_list_order(prepared_root, monkeypatch):
    rsna = open_task_dataset(prepared_root, "rsna")
    whole = rsna.split("val").image_ids
    task = TASKS_BY_ID["rsna_seg_linear_100"]
    # the phantom's few validation images are below the floor: all are kept
    assert len(load_task_split(rsna, task, "val", FULL)) == len(whole)
    monkeypatch.setattr("cxrbench.protocol.tasks.MIN_VALIDATION_IMAGES", 1)
    n = task.validation_count(len(whole))
    assert 0 < n < len(whole)
    got = load_task_split(rsna, task, "val", FULL)
    assert got.image_ids == list(whole[:n])
    assert split_sizes(prepared_root, task, FULL)["val"] == n
    # test and train are untouched by the share; another dataset validates on its whole split
    assert len(load_task_split(rsna, task, "test", FULL)) == len(rsna.split("test"))
    covid = open_task_dataset(prepared_root, "covid_rural")
    covid_task = TASKS_BY_ID["covid_linear"]
    assert len(load_task_split(covid, covid_task, "val", FULL)) == len(covid.split("val"))


def _split(n: int) -> TaskSplit:
    return TaskSplit(
        images=torch.zeros(n, 4, 4, dtype=torch.uint8),
        masks=torch.zeros(n, 1, 4, 4, dtype=torch.bool),
        boxes=None,
        image_ids=[str(i) for i in range(n)],
        mean=0.5,
        std=0.25,
    )


def test_training_batches_drop_the_last_partial_batch_unless_it_is_the_only_one():
    sizes = lambda split, b, drop: [len(i) for i in split.batches(b, drop_last=drop)]  # noqa: E731
    assert sizes(_split(10), 4, True) == [4, 4]
    assert sizes(_split(10), 4, False) == [4, 4, 2]
    assert sizes(_split(8), 4, True) == [4, 4]
    assert sizes(_split(3), 4, True) == [3]
    generator = torch.Generator().manual_seed(0)
    seen = torch.cat(list(_split(10).batches(4, shuffle=True, generator=generator, drop_last=True)))
    assert len(set(seen.tolist())) == 8


def test_checkpoint_follows_any_improvement_and_early_stopping_needs_min_delta():
    selection = Selection(patience=2)
    assert selection.update(0.5) == (True, False)
    # better by less than MIN_DELTA: a new checkpoint (ModelCheckpoint), but the wait goes on
    assert selection.update(0.5 + MIN_DELTA / 2) == (True, False)
    assert selection.update(float("nan")) == (False, True)  # the second epoch without a 1e-5 gain
    again = Selection(patience=2)
    again.update(0.5)
    assert again.update(0.5 + 2 * MIN_DELTA) == (True, False)  # a real gain resets the wait
    assert again.update(0.4) == (False, False)
    assert again.update(0.5) == (False, True)  # equal is no improvement for either
