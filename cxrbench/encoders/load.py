"""`load_encoder`: "random", "imagenet" or any checkpoint file -> an encoder and a LoadReport.

The loader refuses loudly when too little of the backbone was found (MIN_FRACTION) instead of
silently benchmarking a mostly random network, and it owns the random initialisation: the same
`seed` always gives the same weights, so every command scores the same 'random' encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cxrbench.encoders.checkpoint import (
    check_tensor_values,
    choose_prefix,
    extract_state_dict,
    read_checkpoint,
    strip_prefix,
)
from cxrbench.encoders.families import family_of
from cxrbench.encoders.hf_folder import read_hf_folder
from cxrbench.encoders.imagenet import find_imagenet_weights
from cxrbench.encoders.registry import create_encoder
from cxrbench.encoders.resnet import DEFAULT_ARCH
from cxrbench.encoders.vit_layouts import choose_vit, not_backbone
from cxrbench.errors import CheckpointError
from cxrbench.io_utils import sha256_file

BUILTIN_ENCODERS = ("random", "imagenet")
RANDOM_INIT_SEED = 0
MIN_FRACTION = 0.9


def is_builtin(spec: str | Path) -> bool:
    """True for the encoder specs that name an initialisation rather than a file ("random", "imagenet")."""
    return str(spec) in BUILTIN_ENCODERS


@dataclass(frozen=True)
class LoadReport:
    """What was loaded from where: printed by the CLI and stored with every run for provenance.

    `source` is the user's spec ("random", "imagenet" or the file path), `path` the file actually read
    (None for random init). `missing`/`unexpected` exclude BatchNorm `num_batches_tracked` counters;
    `unexpected` holds keys under the prefix that do not fit the encoder (shape mismatches included),
    except what its family ignores (a classifier's `fc.*`, a ViT's `head.*`, CLIP's `proj`, ...); a
    ViT's keys are timm's, whatever layout the file used. `alternatives` lists other prefixes that would
    have loaded as many tensors (e.g. a momentum encoder): pass `prefix` to choose one of them.
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
    encoder: nn.Module
    report: LoadReport


def load_encoder(
    spec: str | Path, arch: str | None = None, prefix: str | None = None, seed: int = RANDOM_INIT_SEED
) -> LoadedEncoder:
    """Build an encoder from "random", "imagenet", a checkpoint file or a Hugging Face model folder
    (never downloads anything).

    The network is initialised from `seed` (torch's CPU generator, restored afterwards): this is the
    whole of "random", and the value of any backbone tensor a checkpoint lacks. `arch` and `prefix`
    override the auto-detection from the checkpoint's keys.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if not is_builtin(spec):
            return _load_file(Path(spec), source=str(spec), arch=arch, prefix=prefix)
        arch = arch or DEFAULT_ARCH
        if str(spec) == "imagenet":
            return _load_file(find_imagenet_weights(arch), source="imagenet", arch=arch, prefix=prefix)
        encoder = create_encoder(arch)
        total = len(_param_keys(encoder))
        return LoadedEncoder(encoder, LoadReport("random", arch, None, None, 0, total))


def format_load_report(report: LoadReport) -> str:
    """Human-readable summary of a LoadReport for the CLI."""
    if report.path is None:
        return f"encoder: {report.arch}, random initialisation (torchvision init from a fixed seed)"
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
    hf_config = None
    weights = path
    if path.is_dir():
        folder = read_hf_folder(path)
        state, hf_config, weights = folder.state, folder.config, folder.weights
    else:
        state = extract_state_dict(read_checkpoint(path), path)
    vit = choose_vit(state, path, prefix=prefix, arch=arch, hf_config=hf_config)
    if vit is not None:
        family, encoder, sub = "ViT", vit.build(), vit.state
        chosen_arch, chosen_prefix, alternatives = vit.arch, vit.prefix, vit.alternatives
        ignored = not_backbone
    else:
        choice = choose_prefix(state, path, prefix=prefix, arch=arch)
        encoder, sub = create_encoder(choice.arch), strip_prefix(state, choice.prefix)
        chosen_arch, chosen_prefix, alternatives = choice.arch, choice.prefix, choice.alternatives
        cnn_family = family_of(choice.arch)
        if cnn_family is not None:
            sub = cnn_family.convert(sub)
        family = cnn_family.name if cnn_family is not None else choice.arch
        ignored_prefixes = cnn_family.ignored if cnn_family is not None else ("fc.",)
        ignored = lambda k: k.startswith(ignored_prefixes)  # noqa: E731
    target = encoder.state_dict()
    matched = {k: v for k, v in sub.items() if k in target and v.shape == target[k].shape}
    param_keys = _param_keys(encoder)
    loaded = [k for k in param_keys if k in matched]
    missing = tuple(k for k in param_keys if k not in matched)
    unexpected = tuple(
        k for k in sub if k not in matched and not ignored(k) and not k.endswith("num_batches_tracked")
    )
    fraction = len(loaded) / len(param_keys)
    if fraction < MIN_FRACTION:
        raise CheckpointError(
            f"{path}: only {len(loaded)}/{len(param_keys)} ({100 * fraction:.0f}%) of the {chosen_arch} "
            f"backbone tensors were found under prefix {chosen_prefix!r} (need {100 * MIN_FRACTION:.0f}%); "
            f"missing e.g. {', '.join(missing[:4])}. Is this a {family} checkpoint? Pass the prefix or arch "
            "explicitly if auto-detection picked the wrong one"
        )
    check_tensor_values(matched, target, path)
    encoder.load_state_dict(matched, strict=False)
    report = LoadReport(
        source=source,
        arch=chosen_arch,
        sha256=sha256_file(weights),
        prefix=chosen_prefix,
        n_loaded=len(loaded),
        n_total=len(param_keys),
        missing=missing,
        unexpected=unexpected,
        fraction_loaded=fraction,
        path=str(weights),
        alternatives=alternatives,
    )
    return LoadedEncoder(encoder, report)


def _param_keys(encoder: nn.Module) -> list[str]:
    return [k for k in encoder.state_dict() if not k.endswith("num_batches_tracked")]
