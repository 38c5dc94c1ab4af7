"""ResNet image encoders and offline loading of arbitrary pre-training checkpoints.

Any checkpoint file must work without the run folders or accounts of the training code that wrote it,
so the loader unwraps common containers (Lightning, DDP, MoCo/LoVT-style sub-modules), finds the
backbone's key prefix and architecture itself, and refuses loudly when too little of the backbone
was found instead of silently benchmarking a mostly random network.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from cxrbench.errors import CheckpointError, CxrbenchError
from cxrbench.io_utils import sha256_file

STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")
STRIDES = {"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32}
_BLOCKS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
ARCHS = tuple(sorted({name for name in _BLOCKS.values()}, key=lambda n: int(n[6:])))
NAMES = ("random", "imagenet")
MIN_FRACTION = 0.9
IMAGENET_ENV = "CXRBENCH_IMAGENET_WEIGHTS"
IMAGENET_WEIGHTS_NAME = "ResNet50_Weights.IMAGENET1K_V1"
# Containers that training frameworks wrap a state dict in, in the order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "encoder")


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and strides (relative to the input) of each feature stage conv1..conv5."""

    channels: dict[str, int]
    strides: dict[str, int]


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without classifier, returning the five feature stages.

    Sub-module names equal torchvision's, so a torchvision state dict (minus fc.*) loads unchanged.
    """

    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        if arch not in ARCHS:
            raise CxrbenchError(f"unknown encoder architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = type(net.layer1[0]).expansion
        widths = [64, *(64 * 2**i * expansion for i in range(4))]
        self.feature_info = FeatureInfo(channels=dict(zip(STAGES, widths)), strides=dict(STRIDES))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        c1 = self.relu(self.bn1(self.conv1(x)))
        c2 = self.layer1(self.maxpool(c1))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"conv1": c1, "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c5}


@dataclass(frozen=True)
class LoadReport:
    """What was loaded from where: printed by the CLI and stored with every run for provenance.

    `source` is the user's spec ("random", "imagenet" or the file path), `path` the file actually read
    (None for random init). `missing`/`unexpected` exclude BatchNorm `num_batches_tracked` counters;
    `unexpected` holds keys under the prefix that do not fit the encoder (shape mismatches included),
    except a classifier's `fc.*`. `alternatives` lists other prefixes that would have loaded as many
    tensors (e.g. a momentum encoder): pass `prefix` to choose one of them.
    """

    source: str
    arch: str
    sha256: str | None
    prefix: str | None
    n_loaded: int
    n_total: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    fraction_loaded: float = 0.0
    path: str | None = None
    alternatives: tuple[str, ...] = field(default=())


@dataclass
class LoadedEncoder:
    encoder: ResNetEncoder
    report: LoadReport


def load_encoder(spec: str | Path, arch: str | None = None, prefix: str | None = None) -> LoadedEncoder:
    """Build an encoder from "random", "imagenet" or a checkpoint file (never downloads anything).

    "random" uses torchvision's initialisation: seed the global RNG before calling. `arch` and
    `prefix` override the auto-detection from the checkpoint's keys.
    """
    if isinstance(spec, str) and spec in NAMES:
        if spec == "random":
            arch = arch or "resnet50"
            encoder = ResNetEncoder(arch)
            total = len(_param_keys(encoder))
            return LoadedEncoder(encoder, LoadReport("random", arch, None, None, 0, total))
        path = find_imagenet_weights(arch or "resnet50")
        return _load_file(path, source="imagenet", arch=arch or "resnet50", prefix=prefix)
    return _load_file(Path(spec), source=str(spec), arch=arch, prefix=prefix)


def find_imagenet_weights(arch: str = "resnet50") -> Path:
    """Locate torchvision ImageNet weights already on disk ($CXRBENCH_IMAGENET_WEIGHTS, then the hub cache)."""
    env = os.environ.get(IMAGENET_ENV)
    if env:
        if not Path(env).is_file():
            raise CheckpointError(f"${IMAGENET_ENV} points to {env}, which is not a file")
        return Path(env)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(cache.glob(f"{arch}-*.pth"))
    # Prefer IMAGENET1K_V1 (resnet50-0676ba61.pth, the weights the reference protocol used) when both exist.
    found.sort(key=lambda p: "0676ba61" not in p.name)
    if found:
        return found[0]
    weights = IMAGENET_WEIGHTS_NAME if arch == "resnet50" else f"the torchvision {arch} IMAGENET1K_V1 weights"
    raise CheckpointError(
        f"ImageNet weights for {arch} not found (cxrbench never downloads). Download {weights} "
        f"(e.g. `python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\"` "
        f"on a machine with internet) and put the .pth file in {cache}, or set ${IMAGENET_ENV} to its path"
    )


def format_load_report(report: LoadReport) -> str:
    """Human-readable summary of a LoadReport for the CLI."""
    if report.path is None:
        return f"encoder: {report.arch}, random initialisation (torchvision init, seeded by the run)"
    digest = f", sha256 {report.sha256[:12]}" if report.sha256 else ""
    lines = [
        f"encoder: {report.arch} from {report.source} ({report.path}{digest})",
        f"  prefix {report.prefix!r}: loaded {report.n_loaded}/{report.n_total} tensors "
        f"({100 * report.fraction_loaded:.1f}%)",
    ]
    for label, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            lines.append(f"  {label} ({len(keys)}): {shown}")
    if report.alternatives:
        lines.append(
            f"  other prefixes that fit equally well: {', '.join(report.alternatives)} (use --prefix)"
        )
    return "\n".join(lines)


def _load_file(path: Path, source: str, arch: str | None, prefix: str | None) -> LoadedEncoder:
    state = extract_state_dict(read_checkpoint(path), path)
    chosen, alternatives, arch = _choose_prefix(state, prefix, arch, path)
    encoder = ResNetEncoder(arch)
    target = encoder.state_dict()
    sub = {k[len(chosen) :]: v for k, v in state.items() if k.startswith(chosen)}
    matched = {k: v for k, v in sub.items() if k in target and v.shape == target[k].shape}
    param_keys = _param_keys(encoder)
    loaded = [k for k in param_keys if k in matched]
    missing = tuple(k for k in param_keys if k not in matched)
    unexpected = tuple(
        k
        for k in sub
        if k not in matched and not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    )
    fraction = len(loaded) / len(param_keys)
    if fraction < MIN_FRACTION:
        raise CheckpointError(
            f"{path}: only {len(loaded)}/{len(param_keys)} ({100 * fraction:.0f}%) of the {arch} backbone "
            f"tensors were found under prefix {chosen!r} (need {100 * MIN_FRACTION:.0f}%); missing e.g. "
            f"{', '.join(missing[:4])}. Is this a ResNet checkpoint? Pass the prefix or arch explicitly if "
            "auto-detection picked the wrong one"
        )
    encoder.load_state_dict(matched, strict=False)
    report = LoadReport(
        source=source,
        arch=arch,
        sha256=sha256_file(path),
        prefix=chosen,
        n_loaded=len(loaded),
        n_total=len(param_keys),
        missing=missing,
        unexpected=unexpected,
        fraction_loaded=fraction,
        path=str(path),
        alternatives=alternatives,
    )
    return LoadedEncoder(encoder, report)


def read_checkpoint(path: Path) -> object:
    """Read a checkpoint without executing pickled code (weights_only); errors become CheckpointError."""
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
    return _BLOCKS.get((kind, tuple(counts)))


def _choose_prefix(
    state: dict[str, Tensor], prefix: str | None, arch: str | None, path: Path
) -> tuple[str, tuple[str, ...], str]:
    """Pick the key prefix (and arch) that loads the most encoder tensors with matching shapes."""
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
        sub = {k[len(cand) :]: v for k, v in state.items() if k.startswith(cand)}
        cand_arch = arch or detect_arch(sub) or "resnet50"
        shapes = _shapes(cand_arch)
        score = sum(1 for k, v in sub.items() if k in shapes and shapes[k] == v.shape)
        scored.append((score, cand, cand_arch))
    best = max(s[0] for s in scored)
    winners = [s for s in scored if s[0] == best]  # ties keep file order: online/query nets come first
    return winners[0][1], tuple(s[1] for s in winners[1:]), winners[0][2]


def _shapes(arch: str) -> dict[str, torch.Size]:
    with torch.device("meta"):
        encoder = ResNetEncoder(arch)
    return {k: v.shape for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}


def _param_keys(encoder: nn.Module) -> list[str]:
    return [k for k in encoder.state_dict() if not k.endswith("num_batches_tracked")]


def _contains_tensors(obj: Mapping) -> bool:
    return any(
        isinstance(v, Tensor) or (isinstance(v, Mapping) and _contains_tensors(v)) for v in obj.values()
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
