"""Finding a ViT in a checkpoint, in the key layouts ViTs are published in, and mapping it onto timm.

Layouts (each recognised by an anchor key, under any prefix):
- timm: `patch_embed.proj.weight`, `blocks.N...` (timm checkpoints, MAE/EVA/MRM-style `.pth`, Lightning
  `.ckpt`, and open_clip, whose vision tower is a timm ViT under `visual.trunk.`);
- OpenAI CLIP: `class_embedding`, `conv1`, `transformer.resblocks.N...`, `ln_pre`/`ln_post` (CheXzero);
- Hugging Face DINOv2: `embeddings.patch_embeddings.projection.weight`, `encoder.layer.N...` (RAD-DINO;
  read from a model folder with config.json, see hf_folder.py).
Depth, width, patch size, positional grid, registers, layer scale and the like are read from the
tensors; attention heads from the HF config, else the width's usual head count. The prefix that
loads the most tensors wins, as for ResNets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cxrbench.encoders.vit import ViTConfig, ViTEncoder, default_heads, parse_arch, with_shape
from cxrbench.errors import CheckpointError

TIMM, OPENAI_CLIP, HF_DINOV2 = "timm", "openai_clip", "hf_dinov2"
ANCHORS = {
    TIMM: "patch_embed.proj.weight",
    OPENAI_CLIP: "class_embedding",
    HF_DINOV2: "embeddings.patch_embeddings.projection.weight",
}
# The input normalisation each layout's weights were trained with (a hint for the presets).
PRESET_BY_LAYOUT = {TIMM: "imagenet", OPENAI_CLIP: "clip", HF_DINOV2: "imagenet"}
# Keys that belong to a classifier or pooled projection, not the backbone: never "unexpected".
_NOT_BACKBONE = re.compile(r"^(head\.|head_dist\.|fc_norm\.|attn_pool\.|proj$|mask_token$|pooler\.)")


def is_vit_arch(arch: str | None) -> bool:
    return arch is not None and parse_arch(arch) is not None


@dataclass(frozen=True)
class ViTChoice:
    """The ViT found in a checkpoint: where, in which layout, its shape, and its tensors in timm keys."""

    prefix: str
    layout: str
    config: ViTConfig
    state: dict[str, Tensor]  # converted to timm key names; keys it could not convert keep theirs
    alternatives: tuple[str, ...]

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def preset(self) -> str:
        """The normalisation the layout implies; open_clip towers (`visual.trunk.`) expect CLIP's."""
        return "clip" if self.prefix.startswith("visual.trunk.") else PRESET_BY_LAYOUT[self.layout]

    def build(self) -> ViTEncoder:
        return ViTEncoder(self.config, default_preset=self.preset)


def not_backbone(key: str) -> bool:
    """Classifier/projection tensors a checkpoint may carry that no encoder loads (not reported)."""
    return _NOT_BACKBONE.match(key) is not None


def choose_vit(
    state: Mapping[str, Tensor],
    path: Path,
    prefix: str | None = None,
    arch: str | None = None,
    hf_config: Mapping | None = None,
) -> ViTChoice | None:
    """The ViT in `state` (the best-loading prefix), or None when there is none and `arch` is not a ViT.

    `prefix` and `arch` override the detection; `hf_config` is a Hugging Face config.json's content.
    """
    if arch is not None and not is_vit_arch(arch):
        return None
    candidates = _candidates(state, prefix)
    if not candidates:
        if arch is None and hf_config is None:
            return None
        where = f"under prefix {prefix!r}" if prefix is not None else "anywhere"
        raise CheckpointError(
            f"{path}: no ViT found {where}: expected a patch embedding ('patch_embed.proj.weight' of timm/"
            "open_clip, 'conv1.weight' with 'class_embedding' of OpenAI CLIP, or "
            "'embeddings.patch_embeddings.projection.weight' of Hugging Face DINOv2)"
        )
    scored = []
    for cand_prefix, layout in candidates:
        sub = {k[len(cand_prefix) :]: v for k, v in state.items() if k.startswith(cand_prefix)}
        converted = CONVERTERS[layout](sub)
        config = detect_config(converted, layout, path, hf_config)
        if arch is not None:
            config = with_shape(config, arch)
        shapes = vit_shapes(config)
        score = sum(1 for k, v in converted.items() if k in shapes and shapes[k] == v.shape)
        scored.append((score, cand_prefix, layout, config, converted))
    best = max(s[0] for s in scored)
    winners = [s for s in scored if s[0] == best]
    _, chosen_prefix, layout, config, converted = winners[0]
    return ViTChoice(chosen_prefix, layout, config, converted, tuple(s[1] for s in winners[1:]))


def _candidates(state: Mapping[str, Tensor], prefix: str | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for key, value in state.items():
        for layout, anchor in ANCHORS.items():
            if not key.endswith(anchor):
                continue
            cand = key[: -len(anchor)]
            if cand and not cand.endswith("."):
                continue
            # The anchors alone are shared with other families (timm and HF Swin, HF ViT): a ViT also
            # has its blocks where the layout puts them.
            if layout == TIMM and (value.ndim != 4 or not _has(state, f"{cand}blocks.0.")):
                continue
            if layout == OPENAI_CLIP and f"{cand}conv1.weight" not in state:
                continue
            if layout == HF_DINOV2 and not _has(state, f"{cand}encoder.layer.0.norm1."):
                continue
            if prefix is not None and cand != prefix:
                continue
            if (cand, layout) not in found:
                found.append((cand, layout))
    return found


def _has(state: Mapping[str, Tensor], key_prefix: str) -> bool:
    return any(k.startswith(key_prefix) for k in state)


def vit_shapes(config: ViTConfig) -> dict[str, torch.Size]:
    """Tensor shapes of the ViT `config` describes (built on the meta device: no memory, no RNG)."""
    with torch.device("meta"):
        encoder = ViTEncoder(config)
    return {k: v.shape for k, v in encoder.state_dict().items()}


def detect_config(
    state: Mapping[str, Tensor], layout: str, path: Path, hf_config: Mapping | None = None
) -> ViTConfig:
    """The ViT shape from its (timm-key) tensors; heads and norm eps from the HF config where given."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        raise CheckpointError(f"{path}: the ViT patch embedding is missing or not a convolution weight")
    width, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    if depth == 0:
        raise CheckpointError(f"{path}: a ViT patch embedding but no transformer blocks")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_hidden = fc1.shape[0] if fc1 is not None else 4 * width
    class_token = "cls_token" in state
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix_tokens = int(class_token) + registers
    pos_grid, no_embed_class = _pos_grid(state.get("pos_embed"), prefix_tokens, path)
    eps = 1e-5 if layout == OPENAI_CLIP else 1e-6
    heads = default_heads(width)
    if hf_config is not None:
        heads, eps = _hf_heads_and_eps(hf_config, width, heads, eps, path)
        image_size = hf_config.get("image_size")
        if pos_grid is None and isinstance(image_size, int):
            pos_grid = image_size // patch
    return ViTConfig(
        width=width,
        depth=depth,
        heads=heads,
        patch=patch,
        mlp_hidden=mlp_hidden,
        pos_grid=pos_grid or 224 // patch,
        class_token=class_token,
        registers=registers,
        no_embed_class=no_embed_class,
        layer_scale="blocks.0.ls1.gamma" in state,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        pre_norm="norm_pre.weight" in state,
        final_norm="norm.weight" in state,
        act="quick_gelu" if layout == OPENAI_CLIP else "gelu",
        norm_eps=eps,
        in_chans=in_chans,
    )


def _hf_heads_and_eps(
    hf_config: Mapping, width: int, heads: int, eps: float, path: Path
) -> tuple[int, float]:
    """The head count and norm eps a Hugging Face config.json gives, checked against the weights' width
    (a config.json of another model size beside the weights is one message, not an assertion)."""
    config_path = path / "config.json" if path.is_dir() else path
    heads = hf_config.get("num_attention_heads", heads)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or width % heads:
        raise CheckpointError(
            f"{config_path}: num_attention_heads {heads!r} does not fit the weights (hidden width {width}); "
            "expected a positive integer dividing the width (is this config.json of another model?)"
        )
    eps = hf_config.get("layer_norm_eps", eps)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise CheckpointError(f"{config_path}: layer_norm_eps {eps!r} is not a small positive number")
    return heads, float(eps)


def _pos_grid(pos_embed: Tensor | None, prefix_tokens: int, path: Path) -> tuple[int | None, bool]:
    """(side of the positional grid, whether it leaves out the class/register tokens)."""
    if pos_embed is None:
        return None, False
    length = pos_embed.shape[-2]
    for n_extra, no_embed_class in ((prefix_tokens, False), (0, True)):
        side = math.isqrt(max(0, length - n_extra))
        if side > 0 and side * side == length - n_extra:
            return side, no_embed_class and prefix_tokens > 0
    raise CheckpointError(
        f"{path}: positional embedding of {length} tokens is not a square patch grid (plus {prefix_tokens} "
        "class/register tokens)"
    )


def _from_timm(sub: dict[str, Tensor]) -> dict[str, Tensor]:
    return dict(sub)


_CLIP_RENAMES = (
    ("transformer.resblocks.", "blocks."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    (".attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
)


def _from_openai_clip(sub: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI CLIP's visual tower -> timm keys (timm builds it with pre-norm and QuickGELU)."""
    out: dict[str, Tensor] = {}
    for key, value in sub.items():
        if key == "conv1.weight":
            out["patch_embed.proj.weight"] = value
        elif key == "class_embedding" and value.ndim == 1:
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding" and value.ndim == 2:
            out["pos_embed"] = value.unsqueeze(0)
        elif key.startswith("ln_pre."):
            out["norm_pre." + key[len("ln_pre.") :]] = value
        elif key.startswith("ln_post."):
            out["norm." + key[len("ln_post.") :]] = value
        elif key.startswith("transformer.resblocks."):
            for old, new in _CLIP_RENAMES:
                key = key.replace(old, new)
            out[key] = value
        else:
            out[key] = value
    return out


_HF_RENAMES = (
    ("encoder.layer.", "blocks."),
    (".attention.output.dense.", ".attn.proj."),
    (".layer_scale1.lambda1", ".ls1.gamma"),
    (".layer_scale2.lambda1", ".ls2.gamma"),
)


def _from_hf_dinov2(sub: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face Dinov2Model(WithRegisters) -> timm keys (q, k, v fused into qkv)."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in sub.items():
        if m := re.match(
            r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", key
        ):
            qkv.setdefault(f"blocks.{m.group(1)}.attn.qkv.{m.group(3)}", {})[m.group(2)] = value
            continue
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.register_tokens":
            out["reg_token"] = value
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key == "embeddings.mask_token":
            out["mask_token"] = value
        elif key.startswith("layernorm."):
            out["norm." + key[len("layernorm.") :]] = value
        elif key.startswith("encoder.layer."):
            for old, new in _HF_RENAMES:
                key = key.replace(old, new)
            out[key] = value
        else:
            out[key] = value
    for key, parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[key] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:  # incomplete: keep what is there under its own name, reported as unexpected
            for name, value in parts.items():
                out[key.replace("qkv", name)] = value
    if "reg_token" in out and "pos_embed" in out and "cls_token" in out:
        # HF adds the positional embedding to class and patch tokens, then inserts the registers:
        # timm's no_embed_class form of the same (class token absorbs its positional embedding).
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


CONVERTERS: dict[str, Callable[[dict[str, Tensor]], dict[str, Tensor]]] = {
    TIMM: _from_timm,
    OPENAI_CLIP: _from_openai_clip,
    HF_DINOV2: _from_hf_dinov2,
}
