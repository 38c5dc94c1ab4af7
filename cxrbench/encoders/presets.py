"""Preprocessing presets: how an encoder expects its input (channels, scaling, normalisation).

Encoders were pre-trained on differently prepared pixels: the protocol's ResNets on grey images
normalised with the downstream dataset's own mean/std (preset `dataset`, the default for ResNets,
so their predictions never change), ImageNet models with ImageNet's per-channel statistics, CLIP
models with CLIP's, torchxrayvision's DenseNet on one channel scaled to [-1024, 1024]. A wrong
preset silently handicaps an encoder, so the preset is taken from the checkpoint when its format
says it (a Hugging Face `preprocessor_config.json`, a torchxrayvision 1-channel stem, a ResNet),
from `--preset NAME` otherwise, and an ambiguous case is an error listing the presets. The chosen
preset is recorded in every run record and is part of the run key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from cxrbench.encoders.families import family_of
from cxrbench.errors import CheckpointError, CxrbenchError
from cxrbench.io_utils import stable_hash

HF_PREPROCESSOR_CONFIG = "preprocessor_config.json"
DATASET_PRESET = "dataset"


@dataclass(frozen=True)
class Preprocessing:
    """uint8 grey 0..255 -> `low`..`high` (linear), minus `mean`, divided by `std`, as `in_chans` channels.

    `mean`/`std` None means the downstream dataset's train-split statistics (the protocol's way); one
    value applies to every channel, three are per channel (the grey image repeated)."""

    name: str
    in_chans: int
    low: float = 0.0
    high: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = "preset"  # where it came from: "preset", "family default", or a config file path

    def describe(self) -> dict:
        """The JSON form stored in run records."""
        return asdict(self)

    @property
    def key(self) -> str | None:
        """What the run key adds for this preset: nothing for `dataset` (the protocol's inputs, so
        existing ResNet run keys stay valid), otherwise a digest of the exact values."""
        if self.name == DATASET_PRESET:
            return None
        values = asdict(self)
        values.pop("source")
        return f"{self.name}:{stable_hash(values)[:12]}"

    def apply(self, images: Tensor, dataset_mean: float, dataset_std: float) -> Tensor:
        """uint8 B x R x R -> float B x in_chans x R x R."""
        if self.mean is None:  # the protocol's inputs, bit for bit as before presets existed
            x = images.float().div_(255.0).sub_(dataset_mean).div_(dataset_std)
            return x.unsqueeze(1).expand(-1, self.in_chans, -1, -1)
        x = images.float().div_(255.0)
        if (self.low, self.high) != (0.0, 1.0):
            x = x.mul_(self.high - self.low).add_(self.low)
        x = x.unsqueeze(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x.expand(-1, max(len(self.mean), 1), -1, -1)
        out = (x - mean) / std
        return out if out.shape[1] == self.in_chans else out.expand(-1, self.in_chans, -1, -1)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PRESETS: dict[str, Preprocessing] = {
    DATASET_PRESET: Preprocessing(DATASET_PRESET, 3),
    "imagenet": Preprocessing("imagenet", 3, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "clip": Preprocessing("clip", 3, mean=CLIP_MEAN, std=CLIP_STD),
    # torchxrayvision: xrv.datasets.normalize(img, 255) = (2 * img / 255 - 1) * 1024, one channel
    "xrv": Preprocessing("xrv", 1, low=-1024.0, high=1024.0, mean=(0.0,), std=(1.0,)),
    # MedCLIP's image processor: its CheXpert statistics, grey repeated to 3 channels
    "medclip": Preprocessing("medclip", 3, mean=(0.5862785803043838,), std=(0.27950088968644304,)),
    # [-1, 1]: mean 0.5, std 0.5 (e.g. open_clip models trained so, many MAE-style ViTs)
    "half": Preprocessing("half", 3, mean=(0.5,), std=(0.5,)),
}


def describe_preset(preset: Preprocessing) -> str:
    """One line: name, channels, scaling and normalisation (for the CLI)."""
    if preset.mean is None:
        norm = "the dataset's train mean/std"
    else:
        fmt = lambda values: ", ".join(f"{v:g}" for v in values)  # noqa: E731
        norm = f"mean ({fmt(preset.mean)}), std ({fmt(preset.std or ())})"
    where = f" [{preset.source}]" if preset.source != "preset" else ""
    return (
        f"preset {preset.name}{where}: {preset.in_chans} channel(s), 0..255 -> [{preset.low:g}, {preset.high:g}], "
        f"normalised with {norm}"
    )


def preset_names() -> str:
    return ", ".join(PRESETS)


def get_preset(name: str) -> Preprocessing:
    try:
        return PRESETS[name]
    except KeyError:
        raise CxrbenchError(
            f"unknown preprocessing preset {name!r}; choose one of {preset_names()}"
        ) from None


def preset_from_hf_config(path: Path) -> Preprocessing:
    """The preset a Hugging Face `preprocessor_config.json` describes (rescale factor, mean, std)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON preprocessor config ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object with image_mean and image_std")
    scale = float(config.get("rescale_factor", 1 / 255)) * 255 if config.get("do_rescale", True) else 255.0
    if config.get("do_normalize", True):
        mean, std = config.get("image_mean"), config.get("image_std")
        if not _numbers(mean) or not _numbers(std) or len(mean) != len(std):
            raise CheckpointError(
                f"{path}: image_mean and image_std must be lists of numbers of one length, got {mean!r}, {std!r}"
            )
    else:
        mean, std = [0.0], [1.0]
    return Preprocessing(
        "hf-preprocessor",
        3,
        high=scale,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        source=str(path),
    )


def hf_preprocessor_config(spec: str | Path) -> Path | None:
    """The `preprocessor_config.json` of a Hugging Face model folder (given, or holding the file given)."""
    path = Path(spec)
    for folder in (path, path.parent) if path.exists() else ():
        candidate = folder / HF_PREPROCESSOR_CONFIG
        if folder.is_dir() and candidate.is_file():
            return candidate
    return None


def resolve_preprocessing(
    spec: str | Path,
    arch: str,
    in_chans: int,
    preset: str | None = None,
    builtin: bool = False,
    layout_preset: str | None = None,
) -> Preprocessing:
    """The preset a run of this encoder uses: `preset` if given, else what the checkpoint says.

    Order: the explicit name; a Hugging Face preprocessor config beside the weights; the family's
    own (ResNet: `dataset`; a torchxrayvision 1-channel DenseNet: `xrv`); the one the checkpoint's
    key layout implies (`layout_preset`: a ViT in the OpenAI-CLIP or open_clip layout expects CLIP's
    statistics, a timm ViT ImageNet's); for built-in weights ("random", "imagenet") `dataset`.
    Anything else is ambiguous: an error listing the presets."""
    if preset is not None:
        chosen = get_preset(preset)
    elif not builtin and (config := hf_preprocessor_config(spec)) is not None:
        chosen = preset_from_hf_config(config)
    else:
        family = family_of(arch)
        name = family.preset_for(arch) if family is not None else None
        if name is None and not builtin:
            name = layout_preset
        if name is None and builtin:
            name = DATASET_PRESET if in_chans == 3 else None
        if name is None:
            raise CheckpointError(
                f"{spec}: the checkpoint does not say how its {arch} encoder expects its input; pass "
                f"--preset NAME, one of {preset_names()} (`cxrbench encoders` lists each one's values)"
            )
        chosen = PRESETS[name]
        chosen = Preprocessing(**{**asdict(chosen), "source": "family default"})
    if chosen.in_chans != in_chans:
        raise CxrbenchError(
            f"preset {chosen.name!r} gives {chosen.in_chans}-channel input but the {arch} encoder takes "
            f"{in_chans} channel(s); choose a {in_chans}-channel preset: "
            + ", ".join(n for n, p in PRESETS.items() if p.in_chans == in_chans)
        )
    return chosen


def _numbers(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )
