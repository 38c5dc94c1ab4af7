"""Reading checkpoint files safely and finding the encoder inside them.

Any checkpoint must work without the run folders or accounts of the training code that wrote it, so
files are read without executing pickled code (weights_only / safetensors), common containers
(Lightning, DDP, MoCo/LoVT-style sub-modules) are unwrapped, and the backbone's key prefix and depth
are detected from the keys and shapes themselves.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cxrbench.encoders.families import family_of, list_families, stem_candidates
from cxrbench.encoders.registry import create_encoder
from cxrbench.encoders.resnet import detect_arch
from cxrbench.errors import CheckpointError

# Containers that training frameworks wrap a state dict in, in the order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "encoder")
__all__ = [
    "WRAPPER_KEYS",
    "PrefixChoice",
    "check_tensor_values",
    "choose_prefix",
    "detect_arch",
    "extract_state_dict",
    "read_checkpoint",
]


def read_checkpoint(path: Path) -> object:
    """Read a checkpoint without executing pickled code (weights_only); errors become CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(refusal_message(path, exc)) from exc
    except Exception as exc:  # the unpickler raises IndexError/KeyError/... on foreign bytes
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or truncated or corrupt ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file under another name (e.g. `model.pt`): its 8-byte header length is followed by
    a JSON object, where a PyTorch file starts with a zip or pickle signature."""
    try:
        with path.open("rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000


def refusal_message(path: Path, exc: BaseException) -> str:
    """Why a whole-model pickle is refused, with the one-line conversion to run where its code lives.

    The refused global's module (named in the unpickler's message) says which library wrote it; a
    torchxrayvision model gets the command for a torchxrayvision environment."""
    out = path.with_name(path.stem + "-state_dict.pt")
    convert = f"torch.save(torch.load('{path}', weights_only=False).state_dict(), '{out}')"
    if "torchxrayvision" in str(exc):
        return (
            f"{path}: a whole torchxrayvision model (a pickle of Python objects, which cxrbench never "
            "unpickles). Convert it once in your torchxrayvision environment:\n"
            f'  python -c "import torch, torchxrayvision; {convert}"\n'
            f"then evaluate {out} (a plain state dict; its 1-channel DenseNet is detected as xrv_densenet121)"
        )
    return (
        f"{path}: refused to unpickle (it contains Python objects other than tensors, or is not a "
        "PyTorch file). If it is a whole model, convert it once in the environment of the code that "
        f'wrote it:\n  python -c "import torch; {convert}"'
    )


def extract_state_dict(obj: object, path: Path, _seen: frozenset[int] = frozenset()) -> dict[str, Tensor]:
    """Unwrap Lightning/trainer containers down to a flat {name: tensor} dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found a {type(obj).__name__}")
    seen = _seen | {id(obj)}
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and id(inner) not in seen and _contains_tensors(inner):
            return extract_state_dict(inner, path, seen)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {keys})")
    return tensors


def check_tensor_values(matched: Mapping[str, Tensor], target: Mapping[str, Tensor], path: Path) -> None:
    """Refuse backbone tensors whose values cannot be weights: no data (meta, sparse), a non-real
    dtype where the network holds floats (ints, bools and complex would be cast silently), or NaN/inf
    (every run would fail one epoch later, task after task)."""
    for key, value in matched.items():
        if value.is_meta or value.layout != torch.strided:
            raise CheckpointError(
                f"{path}: tensor {key!r} holds no values ({'meta' if value.is_meta else value.layout} tensor); "
                "expected a dense tensor of weights (was the model saved before it was materialised?)"
            )
        if target[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(
                f"{path}: tensor {key!r} has dtype {str(value.dtype).removeprefix('torch.')}; expected a "
                "floating-point dtype (float32/16, bfloat16; a quantized or otherwise converted checkpoint "
                "cannot be scored as is)"
            )
    bad = [k for k, v in matched.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        count = int(sum((~torch.isfinite(matched[k])).sum() for k in bad))
        shown = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise CheckpointError(
            f"{path}: {count} NaN/inf value(s) in {len(bad)} backbone tensor(s) ({shown}); expected finite "
            "weights (a diverged or damaged checkpoint)"
        )


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

    Every registered family (encoders/families.py) proposes the prefixes where its stem appears and
    the architecture its sizes identify; `prefix` and `arch` override the detection. Ties keep file
    order: online/query networks come first.
    """
    forced = family_of(arch) if arch is not None else None
    families = [forced] if forced is not None else list_families()
    scored = []
    unmatched = []  # (family, signature) found in the file but matching no registered variant
    partial = []  # a family's stem without the blocks that identify one of its architectures
    for family in families:
        candidates = [prefix] if prefix is not None else stem_candidates(family, state)
        for cand in candidates:
            sub = family.convert(strip_prefix(state, cand))
            cand_arch = arch or family.arch_for(sub)
            if cand_arch is None:
                signature = family.signature(sub)
                if signature is not None:
                    unmatched.append(f"{family.name} {signature}")
                else:
                    partial.append(f"a {family.name} stem under prefix {cand!r}")
                continue
            shapes = backbone_shapes(cand_arch)
            score = sum(1 for k, v in sub.items() if k in shapes and shapes[k] == v.shape)
            scored.append((score, cand, cand_arch))
    if not scored:
        n_4d = sum(v.ndim == 4 for v in state.values())
        if unmatched:
            known = "; ".join(f"{f.name}: {', '.join(f.variants)}" for f in families if f.variants)
            raise CheckpointError(
                f"{path}: found {', '.join(dict.fromkeys(unmatched))}, which matches no known architecture "
                f"({known}); pass --arch if one of them fits"
            )
        if partial:
            raise CheckpointError(
                f"{path}: found {', '.join(partial)}, but not the blocks of any of its architectures "
                "(an incomplete or different network); pass --arch to load it as one anyway"
            )
        stems = ", ".join(f"{f.name} '...{f.stem_keys[0]}'" for f in families)
        raise CheckpointError(
            f"{path}: loaded 0% of the backbone: no encoder stem ({stems}) among {len(state)} tensors "
            f"({n_4d} convolution weights); this does not look like a checkpoint of a known encoder family"
        )
    best = max(s[0] for s in scored)
    winners = [s for s in scored if s[0] == best]
    return PrefixChoice(
        winners[0][1], winners[0][2], tuple(s[1] for s in winners[1:] if s[1] != winners[0][1])
    )


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under `prefix`, with the prefix removed from their keys."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def backbone_shapes(arch: str) -> dict[str, torch.Size]:
    """Tensor shapes of an `arch` encoder's state dict (built on the meta device: no memory, no RNG)."""
    with torch.device("meta"):
        encoder = create_encoder(arch)
    return {k: v.shape for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}


def _contains_tensors(obj: Mapping, seen: frozenset[int] = frozenset()) -> bool:
    """Whether `obj` holds a tensor at any depth; a dict that contains itself (possible in a pickle)
    is searched once, not until the recursion limit."""
    seen = seen | {id(obj)}
    return any(
        isinstance(v, Tensor) or (isinstance(v, Mapping) and id(v) not in seen and _contains_tensors(v, seen))
        for v in obj.values()
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
