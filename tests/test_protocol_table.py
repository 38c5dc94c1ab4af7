"""The protocol table: validated when it is read, and docs/protocol.md checked against it (the document's
task and profile tables must state exactly what cxrbench.protocol.tasks runs, and every head and metric
the tasks name must be described)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cxrbench.errors import CxrbenchError
from cxrbench.protocol.tasks import PROFILES, TASKS, TASKS_BY_ID, HeadCaps, Profile, Task, _parse_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"

TASK_COLUMNS = {  # document column -> (Task field, parser of the cell)
    "task id": ("task_id", str),
    "dataset": ("dataset", str),
    "head": ("head", str),
    "mode": ("mode", str),
    "train %": ("percent", int),
    "val %": ("val_fraction", lambda cell: int(cell) / 100),
    "metric": ("metric", str),
    "batch": ("batch_size", int),
    "default lr": ("default_lr", float),
    "lr grid": ("lr_grid", lambda cell: tuple(float(v) for v in cell.split(","))),
    "max epochs": ("max_epochs", int),
    "patience": ("patience", int),
    "warm-up steps": ("warmup_steps", int),
}
PROFILE_COLUMNS = {  # document column -> (Profile field, words that stand for None)
    "resolution": ("resolution", ()),
    "max epochs": ("max_epochs", ("task",)),
    "patience": ("patience", ("task",)),
    "warm-up steps": ("warmup_steps", ("task",)),
    "batch": ("batch_size", ("task",)),
    "learning rates": ("max_lrs", ("grid",)),
    "seeds": ("default_seeds", ()),
    "train images": ("max_train_images", ("all",)),
    "eval images": ("max_eval_images", ("all",)),
}
HEAD_CAP_COLUMNS = {  # document column -> HeadCaps field ("profile": the profile's own cap)
    "max epochs": "max_epochs",
    "patience": "patience",
    "warm-up steps": "warmup_steps",
    "batch": "batch_size",
    "train images": "max_train_images",
    "eval images": "max_eval_images",
}


HEADER = "task_id dataset head mode % metric batch epochs pat warmup lr lr_grid"
GOOD = "covid_linear covid_rural linear frozen 100 dice 8 100 20 0 3e-2 3e-2,1e-2"


def test_table_rows_parse_to_tasks_and_bad_rows_fail_naming_the_row():
    (task,) = _parse_table(f"{HEADER}\n{GOOD}")
    assert (task.percent, task.batch_size, task.default_lr, task.lr_grid) == (100, 8, 3e-2, (3e-2, 1e-2))
    bad = {
        GOOD.replace(" 20 0 ", " 20 "): "row 1: 11 cells",
        GOOD.replace(" frozen ", " frozn "): "mode 'frozn'",
        GOOD.replace(" 20 0 ", " 20 5 "): "only fine-tune tasks warm up",
        GOOD.replace(" 8 100 ", " x 100 "): r"row 1 \(covid_linear\)",
        GOOD.replace(" 100 dice", " 0 dice"): "percent 0",
    }
    for row, message in bad.items():
        with pytest.raises(CxrbenchError, match=message):
            _parse_table(f"{HEADER}\n{row}")
    with pytest.raises(CxrbenchError, match="repeats ids"):
        _parse_table(f"{HEADER}\n{GOOD}\n{GOOD}")
    with pytest.raises(CxrbenchError, match="header"):
        _parse_table(f"{HEADER.replace('pat', 'patience')}\n{GOOD}")


def _table(first_column: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose first header cell is `first_column`, as dicts."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |")]
    assert len(starts) == 1, f"expected one table starting with {first_column!r} in {DOC}"
    header = [c.strip() for c in lines[starts[0]].strip("|").split("|")]
    rows = []
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), f"{DOC}: row {line!r} has {len(cells)} cells"
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def test_task_table_states_every_task_and_value_of_the_registry():
    rows = _table("task id")
    assert list(rows[0]) == list(TASK_COLUMNS)
    assert [r["task id"] for r in rows] == [t.task_id for t in TASKS]  # same tasks, same order
    for row, task in zip(rows, TASKS, strict=True):
        for column, (field, parse) in TASK_COLUMNS.items():
            assert parse(row[column]) == getattr(task, field), f"{task.task_id}: {column} {row[column]!r}"


def test_task_table_covers_every_task_setting():
    documented = {field for field, _ in TASK_COLUMNS.values()}
    fields = {f.name for f in dataclasses.fields(Task)}
    assert fields - documented == {"warmup_lr"}  # one value for all tasks, stated under the table
    assert {t.warmup_lr for t in TASKS} == {1e-3}
    assert "Every warm-up runs at lr 1e-3." in DOC.read_text(encoding="utf-8")


def _profile_value(cell: str, none_words: tuple[str, ...]) -> object:
    if cell in none_words:
        return () if cell == "none" else None
    if cell[:1].isalpha() and cell != "default":  # per-head caps: "yolo 4, unet 8"
        return tuple((head, int(n)) for head, n in (pair.split() for pair in cell.split(",")))
    return 1 if cell == "default" else int(cell)


def test_profile_table_states_every_profile_setting():
    rows = {r["profile"]: r for r in _table("profile")}
    assert list(rows) == list(PROFILES)
    assert {f.name for f in dataclasses.fields(Profile)} == {"name", "head_caps"} | {
        f for f, _ in PROFILE_COLUMNS.values()
    }
    for name, profile in PROFILES.items():
        for column, (field, none_words) in PROFILE_COLUMNS.items():
            value = _profile_value(rows[name][column], none_words)
            assert value == getattr(profile, field), f"profile {name}: {column} {rows[name][column]!r}"


def test_head_caps_table_states_every_head_cap_of_every_profile():
    rows = _table("caps of profile")
    assert list(rows[0]) == ["caps of profile", "head", *HEAD_CAP_COLUMNS]
    stated = {(r["caps of profile"], r["head"]): r for r in rows}
    assert list(stated) == [(name, c.head) for name, p in PROFILES.items() for c in p.head_caps]
    assert {f.name for f in dataclasses.fields(HeadCaps)} == {"head", *HEAD_CAP_COLUMNS.values()}
    for (name, head), row in stated.items():
        (caps,) = [c for c in PROFILES[name].head_caps if c.head == head]
        for column, field in HEAD_CAP_COLUMNS.items():
            value = _profile_value(row[column], ("profile",))
            assert value == getattr(caps, field), f"profile {name}, head {head}: {column} {row[column]!r}"


def test_head_caps_tighten_the_profile_for_one_head_only():
    demo = PROFILES["demo"]
    base = dataclasses.replace(demo, head_caps=())
    capped = dataclasses.replace(
        demo, head_caps=[{"head": "unet", "max_epochs": 1, "max_train_images": 500, "batch_size": 4}]
    )
    (caps,) = capped.head_caps
    assert isinstance(caps, HeadCaps) and hash(capped)  # mappings become HeadCaps; still hashable
    unet, linear = TASKS_BY_ID["covid_unet_frozen"], TASKS_BY_ID["covid_linear"]
    assert capped.apply(linear) == base.apply(linear)
    assert (capped.apply(unet).max_epochs, capped.apply(unet).batch_size) == (1, 4)
    assert capped.apply(unet).patience == base.apply(unet).patience
    assert capped.max_images(unet, "train") == base.max_train_images  # a cap never raises a value
    assert capped.max_images(linear, "test") == base.max_eval_images
    with pytest.raises(CxrbenchError, match="head_caps entry"):
        dataclasses.replace(demo, head_caps=[{"head": "unet", "epochs": 1}])
    with pytest.raises(CxrbenchError, match="twice"):
        dataclasses.replace(demo, head_caps=[HeadCaps("unet"), HeadCaps("unet", max_epochs=1)])


@pytest.mark.parametrize("kind", ["head", "metric"])
def test_every_head_and_metric_a_task_names_is_described(kind):
    text = DOC.read_text(encoding="utf-8")
    for name in sorted({getattr(t, kind) for t in TASKS}):
        assert re.search(rf"^- \*\*{name}\*\* ", text, re.MULTILINE), (
            f"{DOC} does not describe {kind} {name!r}"
        )


def _share(cell: str) -> float:
    """'all' -> 100; 'first 10%' / 'seeded 1%' -> the percentage."""
    return 100.0 if cell == "all" else float(cell.split()[1].rstrip("%"))


FIDELITY_OURS = {  # fidelity-table column -> (Task field, parser of the cell)
    "batch: ours": ("batch_size", int),
    "lr: ours": ("default_lr", float),
    "lr grid: ours": ("lr_grid", lambda cell: tuple(float(v) for v in cell.split(","))),
    "max epochs: ours": ("max_epochs", int),
    "patience: ours": ("patience", int),
    "warm-up steps: ours": ("warmup_steps", int),
    "train subset: ours": ("percent", _share),
    "val subset: ours": ("val_fraction", lambda cell: _share(cell) / 100),
}


def test_fidelity_table_states_our_value_of_every_task_and_names_its_only_difference():
    rows = _table("task")
    assert [r["task"] for r in rows] == [t.task_id for t in TASKS]
    for row, task in zip(rows, TASKS, strict=True):
        for column, (field, parse) in FIDELITY_OURS.items():
            assert parse(row[column]) == getattr(task, field), f"{task.task_id}: {column} {row[column]!r}"
        # our subsets are seeded prefixes, the reference's its list's first rows; the val share is
        # the first images of the list in both
        assert row["train subset: ours"].startswith("seeded") == (task.percent < 100)
        assert task.val_fraction == 1 or row["val subset: ours"].startswith("first")
        differing = [c[: -len(": ours")] for c in FIDELITY_OURS if row[c] != row[c.replace("ours", "ref")]]
        grid_fixed = row["lr grid: ref"] == "fixed" and len(task.lr_grid) == 1
        expected = (["train subset"] if task.percent < 100 else []) + (["lr grid"] if grid_fixed else [])
        assert sorted(differing) == sorted(expected), f"{task.task_id}: ref and ours differ in {differing}"
