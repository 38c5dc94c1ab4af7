"""Encoder families: how each one is recognised in a state dict and which architectures it offers.

A checkpoint names no architecture, so the loader asks every family where its stem could sit
(`stem_keys`), converts foreign key layouts to the family's own (`convert`, e.g. Hugging Face Swin ->
timm), reads the sizes that identify an architecture (`signature`) and scores each candidate by the
tensors whose shapes fit. A family lists its architectures as named variants: a signature that
matches no variant is reported, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from torch import Tensor

from cxrbench.errors import CxrbenchError

StateDict = Mapping[str, Tensor]


def _identity(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return state


@dataclass(frozen=True)
class Family:
    """One encoder family as the checkpoint loader sees it.

    `stem_keys`: key suffixes of the family's first weight; whatever precedes one in a state dict is a
    candidate prefix when `stem_ok(tensor)` holds. `signature(state)` reads an un-prefixed, converted
    state dict and returns what tells its variants apart (None: not this family). `variants` maps
    architecture names to signatures. `ignored`: key prefixes that are not backbone (classifiers),
    never reported as unexpected. `default_arch`: used when the signature matches no variant (None:
    refuse). `default_preset`: the preprocessing preset its checkpoints imply (None: ask the user).
    """

    name: str
    stem_keys: tuple[str, ...]
    signature: Callable[[StateDict], Hashable | None]
    variants: dict[str, Hashable] = field(default_factory=dict)
    stem_ok: Callable[[Tensor], bool] = lambda t: t.ndim == 4
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] = _identity
    ignored: tuple[str, ...] = ()
    default_arch: str | None = None
    default_preset: str | None = None
    presets: dict[str, str] = field(default_factory=dict)  # arch -> preset its layout implies

    def arch_for(self, state: StateDict) -> str | None:
        """The variant whose signature the state dict has (the default arch when none matches)."""
        sig = self.signature(state)
        if sig is None:
            return None
        for arch, variant in self.variants.items():
            if variant == sig:
                return arch
        return self.default_arch

    def preset_for(self, arch: str) -> str | None:
        return self.presets.get(arch, self.default_preset)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make a family known to checkpoint detection (families are tried in registration order)."""
    if family.name in _FAMILIES:
        raise CxrbenchError(f"encoder family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def list_families() -> tuple[Family, ...]:
    return tuple(_FAMILIES.values())


def family_of(arch: str) -> Family | None:
    """The family offering architecture `arch` (None for an architecture registered without one)."""
    for family in _FAMILIES.values():
        if arch in family.variants:
            return family
    return None


def stem_candidates(family: Family, state: StateDict) -> list[str]:
    """Prefixes under which `family`'s stem appears in `state`, in file order."""
    found: list[str] = []
    for key, value in state.items():
        for stem in family.stem_keys:
            if key.endswith(stem) and family.stem_ok(value):
                prefix = key[: -len(stem)]
                if (prefix == "" or prefix.endswith(".")) and prefix not in found:
                    found.append(prefix)
    return found


def count_blocks(state: StateDict, pattern: str, n_groups: int) -> tuple[int, ...]:
    """Blocks per group from keys: `pattern` holds `{g}` (group, from 0 or as given) and one `(\\d+)`."""
    import re

    counts = []
    for g in range(n_groups):
        regex = re.compile("^" + pattern.format(g=g))
        counts.append(len({m.group(1) for k in state if (m := regex.match(k))}))
    return tuple(counts)
