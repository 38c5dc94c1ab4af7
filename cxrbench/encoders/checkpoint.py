"""Reading checkpoint files safely and finding the encoder inside them.

Any checkpoint must work without the run folders or accounts of the training code that wrote it, so
files are read without executing pickled code (weights_only / safetensors), common containers
(Lightning, DDP, MoCo/LoVT-style sub-modules) are unwrapped, and the backbone's key prefix and depth
are detected from the keys and shapes themselves.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cxrbench.encoders.registry import create_encoder
from cxrbench.encoders.resnet import DEFAULT_ARCH, RESNET_LAYOUTS
from cxrbench.errors import CheckpointError

# Containers that training frameworks wrap a state dict in, in the order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "encoder")
_ARCH_BY_LAYOUT = {layout: arch for arch, layout in RESNET_LAYOUTS.items()}


def read_checkpoint(path: Path) -> object:
    """Read a checkpoint without executing pickled code (weights_only); errors become CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle (it contains Python objects other than tensors, or is not a "
            "PyTorch file); re-save it as a plain state dict: torch.save(model.state_dict(), path)"
        ) from exc
    except Exception as exc:  # the unpickler raises IndexError/KeyError/... on foreign bytes
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or truncated or corrupt ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def extract_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    """Unwrap Lightning/trainer containers down to a flat {name: tensor} dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found a {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _contains_tensors(inner):
            return extract_state_dict(inner, path)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {keys})")
    return tensors


def detect_arch(state: Mapping[str, Tensor]) -> str | None:
    """ResNet depth from block type and per-layer block counts of an (un-prefixed) state dict."""
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    counts = []
    for layer in range(1, 5):
        pattern = re.compile(rf"^layer{layer}\.(\d+)\.")
        indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        counts.append(len(indices))
    return _ARCH_BY_LAYOUT.get((kind, tuple(counts)))


@dataclass(frozen=True)
class PrefixChoice:
    """Where the backbone sits in a state dict: its key prefix, its arch, and equally good prefixes."""

    prefix: str
    arch: str
    alternatives: tuple[str, ...]


def choose_prefix(
    state: Mapping[str, Tensor], path: Path, prefix: str | None = None, arch: str | None = None
) -> PrefixChoice:
    """Pick the key prefix (and arch) that loads the most encoder tensors with matching shapes.

    Candidates are the prefixes of a '...conv1.weight' with 3 input channels (a ResNet stem); `prefix`
    and `arch` override the detection. Ties keep file order: online/query networks come first.
    """
    if prefix is not None:
        candidates = [prefix]
    else:
        candidates = []
        for key, value in state.items():
            if key.endswith("conv1.weight") and value.ndim == 4 and value.shape[1] == 3:
                cand = key[: -len("conv1.weight")]
                if (cand == "" or cand.endswith(".")) and cand not in candidates:
                    candidates.append(cand)
        if not candidates:
            n_4d = sum(v.ndim == 4 for v in state.values())
            raise CheckpointError(
                f"{path}: loaded 0% of the backbone: no ResNet stem (a '...conv1.weight' with 3 input channels) among "
                f"{len(state)} tensors ({n_4d} convolution weights); this does not look like a ResNet checkpoint"
            )
    scored = []
    for cand in candidates:
        sub = strip_prefix(state, cand)
        cand_arch = arch or detect_arch(sub) or DEFAULT_ARCH
        shapes = backbone_shapes(cand_arch)
        score = sum(1 for k, v in sub.items() if k in shapes and shapes[k] == v.shape)
        scored.append((score, cand, cand_arch))
    best = max(s[0] for s in scored)
    winners = [s for s in scored if s[0] == best]
    return PrefixChoice(winners[0][1], winners[0][2], tuple(s[1] for s in winners[1:]))


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under `prefix`, with the prefix removed from their keys."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def backbone_shapes(arch: str) -> dict[str, torch.Size]:
    """Tensor shapes of an `arch` encoder's state dict (built on the meta device: no memory, no RNG)."""
    with torch.device("meta"):
        encoder = create_encoder(arch)
    return {k: v.shape for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}


def _contains_tensors(obj: Mapping) -> bool:
    return any(
        isinstance(v, Tensor) or (isinstance(v, Mapping) and _contains_tensors(v)) for v in obj.values()
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
