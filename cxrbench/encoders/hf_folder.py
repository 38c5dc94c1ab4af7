"""Reading a Hugging Face model folder (config.json + model.safetensors) without transformers' loader.

RAD-DINO and other DINOv2 encoders are published as such folders. The weights are read as plain
tensors (safetensors, or a `pytorch_model.bin` with weights_only) and the config as JSON; nothing
from the folder is executed and nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from cxrbench.encoders.checkpoint import extract_state_dict, read_checkpoint
from cxrbench.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MODEL_TYPES = ("dinov2", "dinov2_with_registers")


@dataclass(frozen=True)
class HFFolder:
    state: dict[str, Tensor]
    config: dict
    weights: Path  # the file the tensors came from (its digest identifies the checkpoint)


def read_hf_folder(folder: Path) -> HFFolder:
    """The tensors and config of a Hugging Face model folder; CheckpointError says what is missing."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} is a folder but has no config.json: expected a Hugging Face model folder "
            f"(config.json and one of {', '.join(WEIGHT_FILES)}) or a checkpoint file"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is not supported; Hugging Face folders of "
            f"{', '.join(MODEL_TYPES)} are (other models: save the backbone's state dict and pass that file)"
        )
    if config.get("use_swiglu_ffn"):
        raise CheckpointError(f"{config_path}: DINOv2 with a SwiGLU MLP (ViT-g) is not supported")
    for name in WEIGHT_FILES:
        weights = folder / name
        if weights.is_file():
            return HFFolder(extract_state_dict(read_checkpoint(weights), weights), config, weights)
    sharded = sorted(p.name for p in folder.glob("*.index.json"))
    hint = f" (sharded weights {sharded[0]} are not supported)" if sharded else ""
    raise CheckpointError(f"{folder}: no {' or '.join(WEIGHT_FILES)} beside config.json{hint}")
