"""The 18-task protocol as frozen dataclasses, and the profiles that scale it.

The table below is the single source of the protocol (docs/protocol.md describes it and is checked
against it): the CLI, the runner and the leaderboard read it. A profile scales images, epochs and
resolution without forking code (`demo` runs every code path of `full` in minutes on a laptop CPU).
The protocol hash identifies exact settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import stable_hash

if TYPE_CHECKING:
    from cxrbench.datasets.split_scheme import SplitIdentity

# 2: metrics as the reference computed them (mAP by the mean-average-precision package's rules,
# sequential FROC, Kaggle score without a 0.5 cut, per-image Dice over positive images, the smp
# binary Dice loss).
PROTOCOL_VERSION = 2
# The metric definitions (cxrbench/protocol/metrics); a change bumps it and PROTOCOL_VERSION. Run
# records carry it; the leaderboard refuses older ones (`cxrbench rescore` recomputes them).
METRICS_VERSION = 2
MODES = ("frozen", "finetune")
# A validation share never leaves fewer images than this (the full RSNA share is 534 images).
MIN_VALIDATION_IMAGES = 64


@dataclass(frozen=True)
class Task:
    """One evaluation task: dataset, head, training regime, metric and optimisation settings.

    `head` and `metric` name entries of the head and metric registries (cxrbench.protocol.heads,
    cxrbench.protocol.metrics).
    """

    task_id: str
    dataset: str
    head: str  # a registered head: "yolo" | "linear" | "unet"
    mode: str  # "frozen" | "finetune"
    percent: float  # share of the train split (nested subsets)
    metric: str  # a registered metric: "map" | "froc" | "dice"
    batch_size: int
    default_lr: float
    lr_grid: tuple[float, ...]
    max_epochs: int
    patience: int
    warmup_steps: int = 0  # fine-tune only: head-only steps with the encoder frozen
    warmup_lr: float = 1e-3
    # share of the validation split used: its first round(n * share) images in list order (the
    # reference's `val_subset`); early stopping, the plateau schedule and the lr choice see only these
    val_fraction: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 0 < self.percent <= 100:
            problems.append(f"percent {self.percent} is not in (0, 100]")
        if self.batch_size < 1 or self.patience < 1:
            problems.append(f"batch_size {self.batch_size} and patience {self.patience} must be at least 1")
        if self.max_epochs < 0:  # 0 scores the untrained head
            problems.append(f"max_epochs {self.max_epochs} is negative")
        if not self.lr_grid or min(self.lr_grid) <= 0 or self.default_lr <= 0 or self.warmup_lr <= 0:
            problems.append("learning rates must be positive and the lr grid non-empty")
        if not 0 < self.val_fraction <= 1:
            problems.append(f"val_fraction {self.val_fraction} is not in (0, 1]")
        if self.warmup_steps < 0 or (self.frozen and self.warmup_steps):
            problems.append(f"warmup_steps {self.warmup_steps}: only fine-tune tasks warm up, never < 0")
        if problems:
            raise CxrbenchError(f"task {self.task_id!r}: " + "; ".join(problems))

    @property
    def frozen(self) -> bool:
        return self.mode == "frozen"

    def validation_count(self, n: int) -> int:
        """How many of the `n` validation images (in list order) the task validates on: the first
        round(n * val_fraction), as the reference's `apply_subset`, but never fewer than
        MIN_VALIDATION_IMAGES (all of a smaller split): a share of a phantom's or a small download's
        few images would leave early stopping and the lr choice a split without findings."""
        share = round(n * self.val_fraction)
        return n if self.val_fraction >= 1 else max(share, min(n, MIN_VALIDATION_IMAGES))


# One row per task, in protocol order. Columns: task id, dataset, head, encoder mode, % of the train
# split, primary metric, batch size, max epochs, early-stopping patience (pat), fine-tune warm-up steps,
# default lr, lr grid (comma-separated). Every warm-up runs at lr 1e-3.
# fmt: off
_TABLE = """
task_id                dataset     head   mode       % metric batch epochs pat warmup lr   lr_grid
rsna_yolo_finetune_1   rsna        yolo   finetune   1 map        8    500  20    100 1e-4 3e-4,1e-4
rsna_yolo_finetune_10  rsna        yolo   finetune  10 map       64    100  10    100 3e-4 3e-4,1e-3
rsna_yolo_finetune_100 rsna        yolo   finetune 100 map       64     50  10    100 1e-4 3e-4,1e-4
rsna_yolo_frozen_1     rsna        yolo   frozen     1 map        8    500  20      0 1e-3 1e-3,3e-4
rsna_yolo_frozen_10    rsna        yolo   frozen    10 map       64    100  10      0 1e-3 1e-3
rsna_yolo_frozen_100   rsna        yolo   frozen   100 map       64     50  10      0 1e-3 3e-4,1e-3
rsna_seg_linear_1      rsna        linear frozen     1 dice       8    500  20      0 1e-2 3e-2,1e-2,3e-3,1e-4
rsna_seg_linear_10     rsna        linear frozen    10 dice      64    100  10      0 3e-2 3e-2,1e-2,3e-3,1e-3
rsna_seg_linear_100    rsna        linear frozen   100 dice      64     50  10      0 1e-2 3e-2,1e-2,3e-3,1e-3
covid_unet_finetune    covid_rural unet   finetune 100 dice       8    100  20     20 1e-4 1e-4,3e-4
covid_unet_frozen      covid_rural unet   frozen   100 dice       8    100  20      0 3e-4 1e-4,3e-4,1e-3
covid_linear           covid_rural linear frozen   100 dice       8    100  20      0 3e-2 3e-2,1e-2,3e-3,1e-3
siim_unet_finetune     siim        unet   finetune 100 dice      64     50  10    100 1e-3 3e-5,1e-5
siim_unet_frozen       siim        unet   frozen   100 dice      64     50  10      0 1e-3 3e-5,1e-5
object_yolo_finetune   object_cxr  yolo   finetune 100 froc      64    100  10    100 3e-4 1e-3,3e-4
object_yolo_frozen     object_cxr  yolo   frozen   100 froc      64    100  10      0 1e-3 1e-3,3e-3
object_seg_linear      object_cxr  linear frozen   100 dice      64    100  10      0 1e-2 3e-1,1e-1,3e-2,1e-2
nih_seg_linear         nih         linear frozen   100 dice      64    100  10      0 1e-2 1e-1,3e-2,1e-2
"""
_COLUMNS = ["task_id", "dataset", "head", "mode", "%", "metric", "batch", "epochs", "pat", "warmup", "lr", "lr_grid"]
# fmt: on
# Validation shares per dataset (the rest validate on the whole split): the reference's dataset
# configs configs/dataset/rsna*.yaml and rsna_seg*.yaml set `val_subset: 0.1` for every RSNA task.
_VAL_FRACTION = {"rsna": 0.1}


def _parse_table(text: str) -> tuple[Task, ...]:
    """The tasks of `_TABLE`; a malformed row fails at import, naming the row."""
    header, *rows = text.strip().splitlines()
    if header.split() != _COLUMNS:
        raise CxrbenchError(f"task table header {header.split()} differs from {_COLUMNS}")
    tasks = []
    for number, row in enumerate(rows, start=1):
        cells = row.split()
        if len(cells) != len(_COLUMNS):
            raise CxrbenchError(f"task table row {number}: {len(cells)} cells, expected {len(_COLUMNS)}")
        task_id, dataset, head, mode, percent, metric, batch, epochs, patience, warmup, lr, grid = cells
        try:
            task = Task(
                task_id=task_id,
                dataset=dataset,
                head=head,
                mode=mode,
                percent=int(percent),
                metric=metric,
                batch_size=int(batch),
                default_lr=float(lr),
                lr_grid=tuple(float(v) for v in grid.split(",")),
                max_epochs=int(epochs),
                patience=int(patience),
                warmup_steps=int(warmup),
                val_fraction=_VAL_FRACTION.get(dataset, 1.0),
            )
        except ValueError as exc:
            raise CxrbenchError(f"task table row {number} ({task_id}): {exc}") from None
        tasks.append(task)
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise CxrbenchError(f"task table repeats ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    return tuple(tasks)


TASKS: tuple[Task, ...] = _parse_table(_TABLE)
TASKS_BY_ID: dict[str, Task] = {t.task_id: t for t in TASKS}


_CAPS = ("max_epochs", "patience", "warmup_steps", "batch_size", "max_train_images", "max_eval_images")


def _tighter(value: int | None, limit: int | None) -> int | None:
    """The smaller of two caps (None: no cap)."""
    return value if limit is None else limit if value is None else min(value, limit)


@dataclass(frozen=True)
class HeadCaps:
    """Tighter caps for the tasks of one head kind within a profile (None: the profile's own cap).

    A head whose step costs much more than the others' (the 87M-parameter U-Net decoder on a CPU)
    gets fewer images or epochs in a quick profile without shrinking every other task.
    """

    head: str
    max_epochs: int | None = None
    patience: int | None = None
    warmup_steps: int | None = None
    batch_size: int | None = None
    max_train_images: int | None = None
    max_eval_images: int | None = None


@dataclass(frozen=True)
class Profile:
    """How a run scales the protocol. `full` changes nothing; `demo` shrinks everything."""

    name: str
    resolution: int = 224
    max_epochs: int | None = None  # cap on each task's max_epochs
    patience: int | None = None  # cap on each task's patience
    warmup_steps: int | None = None  # cap on fine-tune warm-up steps
    batch_size: int | None = None  # cap on batch size
    max_lrs: int | None = None  # None: the whole lr grid; 1: the default lr only
    default_seeds: int = 5
    max_train_images: int | None = None
    max_eval_images: int | None = None
    head_caps: tuple[HeadCaps, ...] = ()  # tighter caps for one head kind's tasks

    def __post_init__(self) -> None:
        # A sweep config gives mappings in a list: store HeadCaps in a tuple, so the profile hashes.
        caps = []
        for entry in self.head_caps:
            if not isinstance(entry, HeadCaps):
                try:
                    entry = HeadCaps(**entry)
                except TypeError as exc:
                    raise CxrbenchError(
                        f"profile {self.name!r}: head_caps entry {entry!r} is not "
                        f"{{head: NAME, <cap>: value}} with caps among {', '.join(_CAPS)}"
                    ) from exc
            caps.append(entry)
        heads = [c.head for c in caps]
        if len(set(heads)) != len(heads):
            raise CxrbenchError(f"profile {self.name!r}: head_caps names a head twice ({heads})")
        object.__setattr__(self, "head_caps", tuple(caps))

    def caps_for(self, head: str) -> HeadCaps:
        """The caps tasks of `head` run under: the profile's, tightened by its head_caps entry."""
        mine = HeadCaps(head, **{k: getattr(self, k) for k in _CAPS})
        for entry in self.head_caps:
            if entry.head == head:
                return HeadCaps(head, **{k: _tighter(getattr(mine, k), getattr(entry, k)) for k in _CAPS})
        return mine

    def max_images(self, task: Task, split: str) -> int | None:
        """At most this many images of `split` for `task` (None: all)."""
        caps = self.caps_for(task.head)
        return caps.max_train_images if split == "train" else caps.max_eval_images

    def apply(self, task: Task) -> Task:
        """The task as this profile runs it."""
        caps = self.caps_for(task.head)
        cap = lambda value, limit: value if limit is None else min(value, limit)  # noqa: E731
        grid = (
            task.lr_grid if self.max_lrs is None or len(task.lr_grid) <= self.max_lrs else (task.default_lr,)
        )
        return replace(
            task,
            max_epochs=cap(task.max_epochs, caps.max_epochs),
            patience=cap(task.patience, caps.patience),
            warmup_steps=cap(task.warmup_steps, caps.warmup_steps),
            batch_size=cap(task.batch_size, caps.batch_size),
            lr_grid=grid,
        )


PROFILES: dict[str, Profile] = {
    "full": Profile("full"),
    "demo": Profile(
        "demo",
        resolution=96,
        max_epochs=6,
        patience=3,
        warmup_steps=4,
        batch_size=16,
        max_lrs=1,
        default_seeds=2,
        max_train_images=96,
        max_eval_images=48,
        head_caps=(
            HeadCaps(
                "unet", max_epochs=1, warmup_steps=1, batch_size=8, max_train_images=8, max_eval_images=8
            ),
            # more optimisation steps per epoch (the YOLO head needs them to learn within the epoch
            # cap) on fewer images (its fine-tune runs dominate the demo's time otherwise)
            HeadCaps("yolo", batch_size=4, max_train_images=32, max_eval_images=24),
        ),
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise CxrbenchError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}") from None


def select_tasks(spec: str | list[str] | None) -> list[Task]:
    """'all' / None -> all 18; otherwise comma-separated ids (or dataset names) in protocol order."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(TASKS)
    names = [
        s.strip()
        for part in ([spec] if isinstance(spec, str) else spec)
        for s in part.split(",")
        if s.strip()
    ]
    unknown = [n for n in names if n not in TASKS_BY_ID and n not in {t.dataset for t in TASKS}]
    if unknown:
        raise CxrbenchError(f"unknown task(s) {', '.join(unknown)}; run `cxrbench tasks` for the list of ids")
    return [t for t in TASKS if t.task_id in names or t.dataset in names]


def protocol_hash(profile: Profile, splits: SplitIdentity | None = None) -> str:
    """Identifies the exact protocol settings a run used (tasks, profile, protocol and metrics
    versions, and the split of its data: scheme, reference lists hash, subset or not, seed).

    `splits` defaults to the published protocol's: the full reference split lists. One scheme gives
    one hash for all datasets, so a table of many tasks holds one hash."""
    from cxrbench.datasets.split_scheme import full_reference_identity
    from cxrbench.datasets.splits import DEFAULT_SEED

    payload = {
        "version": PROTOCOL_VERSION,
        "metrics_version": METRICS_VERSION,
        "split_seed": DEFAULT_SEED,
        "splits": (splits or full_reference_identity()).as_dict(),
        "tasks": [asdict(t) for t in TASKS],
        "profile": asdict(profile),
    }
    if not profile.head_caps:  # hashes of profiles without head caps stay what they were before them
        del payload["profile"]["head_caps"]
    return stable_hash(payload)[:16]
