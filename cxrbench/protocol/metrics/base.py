"""The `Metric` contract and the registry that training, rescoring and the leaderboard look metrics up in.

A metric is scored in two steps so that one run's test split can be re-aggregated over any set of
images (bootstrap replicates, repeated images included) without its predictions: `per_image_stats`
turns predictions into JSON-ready per-image sufficient statistics (a run record's
``test_per_image``), and `aggregate` reduces any selection of images to the metric values. The
registry key is the metric's name, which is also its primary value key and the task's ``metric``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from cxrbench.errors import CxrbenchError

from .ragged import float_array
from .targets import TARGET_KINDS, TargetKind


class Metric(ABC):
    """What the protocol needs to know about a task metric.

    Subclasses set the class attributes and implement the five methods; register an instance with
    `register_metric`. Values are floats in [0, 1] or NaN where undefined.
    """

    name: ClassVar[str]  # registry key, primary value key, per-image display key
    display_name: ClassVar[str]  # how reports name it ("mAP", "FROC", "Dice")
    target: ClassVar[TargetKind]  # the form of predictions and ground truth it scores
    counts_dtype: ClassVar[type] = np.int64  # dtype of bootstrap draw counts its `bootstrap` is fastest with

    @property
    def prediction_keys(self) -> tuple[str, ...]:
        """Arrays a predictions file must hold for this metric to re-score it."""
        return self.target.prediction_keys

    @abstractmethod
    def per_image_stats(self, predictions: object, targets: object) -> dict:
        """JSON-serialisable per-image statistics (lists, one entry per image); the per-image display
        score sits under `name` (None where undefined)."""

    @abstractmethod
    def prepare(self, per_image: dict) -> object:
        """Arrays built once from the JSON form; `aggregate` and `bootstrap` accept them in its place."""

    @abstractmethod
    def is_prepared(self, data: object) -> bool:
        """Whether `data` is what `prepare` returns (rather than the JSON form)."""

    @abstractmethod
    def aggregate(self, data: object, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
        """Values over the images `indices` (None = all; repeats count as separate images); the primary
        value under `name`, secondary values under their own keys."""

    @abstractmethod
    def bootstrap(
        self,
        prepared: object,
        indices: np.ndarray,
        counts: np.ndarray | None = None,
        primary_only: bool = False,
    ) -> dict[str, np.ndarray]:
        """Values of every replicate at once: row r equals ``aggregate(prepared, indices[r])`` (R x m
        indices; `counts`, R x n draw counts of the n images, built when None, fastest as
        `counts_dtype`). `primary_only` returns just the primary key."""

    def prepared(self, data: object) -> object:
        """`data` as `prepare` returns it (prepared data passes through)."""
        return data if self.is_prepared(data) else self.prepare(data)

    def per_image_scores(self, per_image: dict) -> np.ndarray:
        """The per-image display score (NaN where undefined)."""
        return float_array(per_image[self.name])

    def empty_per_image_stats(self) -> dict:
        """Per-image statistics of zero images (a predictions file of an empty split)."""
        return self.per_image_stats(*self.target.empty())


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric, *, replace: bool = False) -> Metric:
    """Make `metric` available under `metric.name` to tasks, training, rescoring and the leaderboard."""
    if not isinstance(metric, Metric) or inspect.isabstract(type(metric)):
        raise CxrbenchError(f"register_metric: {metric!r} is not a complete Metric instance")
    name = getattr(metric, "name", None)
    if not isinstance(name, str) or not name:
        raise CxrbenchError(f"register_metric: {type(metric).__name__} needs a non-empty `name`")
    if TARGET_KINDS.get(getattr(metric.target, "name", None)) is not metric.target:
        raise CxrbenchError(
            f"register_metric: {name!r} has target {metric.target!r}, not one of {list(TARGET_KINDS)}"
        )
    if name in _REGISTRY and not replace and _REGISTRY[name] is not metric:
        raise CxrbenchError(f"metric {name!r} is already registered; pass replace=True to override it")
    _REGISTRY[name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a registered metric (for tests that register their own)."""
    _REGISTRY.pop(name, None)


def metric_names() -> list[str]:
    return list(_REGISTRY)


def get_metric(name: str) -> Metric:
    """The registered metric called `name` (a task's ``metric``, a record's ``metric``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CxrbenchError(f"unknown metric kind {name!r}; expected one of {', '.join(_REGISTRY)}") from None
