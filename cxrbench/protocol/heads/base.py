"""The `Head` contract and the registry that tasks name heads from.

A head is everything task-specific between the encoder's features and the metric: which feature
stages it reads, which form of targets it learns from (masks or boxes), its training loss, and how
its raw output becomes predictions in the metrics API form. The training loop only talks to this
contract, so a new head is one module (a `Head` subclass) plus one `register_head` line.

Heads never call the encoder: with a frozen encoder the features can be cached and fed straight in.
"""

from __future__ import annotations

import inspect
from abc import ABCMeta, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from cxrbench.encoders import FeatureInfo
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.metrics.targets import TARGET_KINDS, TargetKind


class Head(nn.Module, metaclass=ABCMeta):
    """A task head: an nn.Module that also describes itself to the training loop.

    Subclasses set `name`, `target` and `required_stages` and implement `build`, `forward`,
    `training_loss` and `to_predictions`.
    """

    name: ClassVar[str]  # the registry key tasks use (Task.head)
    target: ClassVar[TargetKind]  # masks or boxes: what it is trained on and predicts
    required_stages: ClassVar[tuple[str, ...]]  # encoder feature stages `forward` reads

    @classmethod
    def prediction_keys(cls) -> tuple[str, ...]:
        """Arrays its predictions occupy in a run's predictions file."""
        return cls.target.prediction_keys

    @classmethod
    @abstractmethod
    def build(cls, feature_info: FeatureInfo, n_classes: int, image_size: int) -> Head:
        """The head for an encoder with `feature_info`, `n_classes` outputs and square inputs of
        `image_size` pixels."""

    @abstractmethod
    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int] | None = None) -> object:
        """Raw output from the `required_stages` features; `out_size` is the input image size."""

    @abstractmethod
    def training_loss(self, output: object, targets: object) -> Tensor:
        """Scalar loss of a batch: `targets` as `TaskSplit.targets` gives them, on the head's device
        (a bool B x C x H x W tensor for masks, a list of K_i x 4 xyxy pixel box tensors for boxes)."""

    @abstractmethod
    def to_predictions(self, output: object) -> object:
        """Predictions of a batch in the metrics API form of `target`, on the CPU as numpy: a bool
        B x C x H x W array for masks, a list of (boxes N x 4, scores N) per image for boxes."""


_REGISTRY: dict[str, type[Head]] = {}


def register_head(head: type[Head], *, replace: bool = False) -> type[Head]:
    """Make the `Head` subclass `head` available to tasks as `head.name`; returns it (usable as a
    class decorator)."""
    if not (inspect.isclass(head) and issubclass(head, Head)) or inspect.isabstract(head):
        raise CxrbenchError(f"register_head: {head!r} is not a concrete Head subclass")
    name = getattr(head, "name", None)
    if not isinstance(name, str) or not name:
        raise CxrbenchError(f"register_head: {head.__name__} needs a non-empty `name`")
    if TARGET_KINDS.get(getattr(getattr(head, "target", None), "name", None)) is not getattr(
        head, "target", None
    ):
        raise CxrbenchError(f"register_head: {name!r} needs `target` set to one of {list(TARGET_KINDS)}")
    stages = getattr(head, "required_stages", None)
    if not isinstance(stages, tuple) or not stages or not all(isinstance(s, str) for s in stages):
        raise CxrbenchError(f"register_head: {name!r} needs `required_stages`, a non-empty tuple of names")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not head:
        raise CxrbenchError(f"head {name!r} is already registered; pass replace=True to override it")
    _REGISTRY[name] = head
    return head


def unregister_head(name: str) -> None:
    """Remove a registered head (for tests that register their own)."""
    _REGISTRY.pop(name, None)


def head_names() -> list[str]:
    return list(_REGISTRY)


def get_head(name: str) -> type[Head]:
    """The registered head class a task names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CxrbenchError(f"unknown head kind {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def build_head(name: str, feature_info: FeatureInfo, n_classes: int, image_size: int = 224) -> Head:
    """Construct the head a task names; `image_size` matters only to heads that work in pixels (YOLO)."""
    return get_head(name).build(feature_info, n_classes, image_size)
