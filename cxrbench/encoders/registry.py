"""Encoder architectures by name: `@register_encoder` adds a builder, `create_encoder` calls it.

A new family is one module whose builder functions carry the decorator (as resnet.py does) plus its
import in the package's __init__; checkpoint loading, heads and the CLI then accept its names.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cxrbench.errors import CxrbenchError

EncoderBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, EncoderBuilder] = {}
# Families whose names form a pattern (e.g. vit_w64_d2_h1_patch16): name -> builder, or None.
_PATTERNS: list[Callable[[str], EncoderBuilder | None]] = []


def register_encoder(builder: EncoderBuilder) -> EncoderBuilder:
    """Register `builder` under its function name (e.g. `def resnet50(): ...` -> "resnet50")."""
    name = builder.__name__
    if name in _BUILDERS:
        raise CxrbenchError(f"encoder architecture {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder


def register_encoder_pattern(resolve: Callable[[str], EncoderBuilder | None]):
    """Register a resolver for names no single builder covers (it returns None for other names)."""
    _PATTERNS.append(resolve)
    return resolve


def list_encoders() -> tuple[str, ...]:
    """Registered architecture names, in registration order."""
    return tuple(_BUILDERS)


def create_encoder(name: str, **kwargs) -> nn.Module:
    """A freshly initialised encoder of architecture `name` (torch's global RNG draws its weights)."""
    builder = _BUILDERS.get(name) or next((b for r in _PATTERNS if (b := r(name)) is not None), None)
    if builder is None:
        raise CxrbenchError(f"unknown encoder architecture {name!r}; choose one of {', '.join(_BUILDERS)}")
    return builder(**kwargs)
