"""The Swin family (timm's `SwinTransformer`, as `features_only` reads it) behind the feature contract.

Sub-module names equal timm's (`patch_embed`, `layers.N`), so a timm Swin state dict loads
unchanged; a Hugging Face `SwinModel` state dict (MedCLIP's vision tower) is renamed to timm's
layout on load (query/key/value fused into qkv, each stage's patch merging moved to the start of the
next stage, as timm places it). conv2..conv5 are the outputs of stages 0..3 (strides 4, 8, 16, 32,
channels-first, without the final norm, as timm's `features_only` gives them); conv1 is conv2
upsampled 2x (the patch embedding is a stride-4 patchify convolution, see upsampled.py).

Other input sizes than the variant's nominal one work as in timm with `strict_img_size=False`:
each stage pads its map to a multiple of the window and builds the attention mask per forward.
Stochastic depth is off (drop_path_rate 0), so fine-tuning is deterministic like the other families.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn

from cxrbench.encoders.families import Family, StateDict, count_blocks, register_family
from cxrbench.encoders.features import FeatureInfo
from cxrbench.encoders.registry import register_encoder
from cxrbench.encoders.upsampled import stride2_from_stride4


@dataclass(frozen=True)
class SwinConfig:
    """What identifies a timm Swin: patch size, width, blocks and heads per stage, window, input channels."""

    patch_size: int
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    in_chans: int = 3
    img_size: int = 224  # the nominal size (sets where a stage's window is clamped to its map)

    @property
    def signature(self) -> tuple:
        return (self.patch_size, self.embed_dim, self.depths, self.num_heads, self.window_size, self.in_chans)


SWIN_VARIANTS: dict[str, SwinConfig] = {
    "swin_tiny_patch4_window7_224": SwinConfig(4, 96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_small_patch4_window7_224": SwinConfig(4, 96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_base_patch4_window7_224": SwinConfig(4, 128, (2, 2, 18, 2), (4, 8, 16, 32), 7),
    "swin_base_patch4_window12_384": SwinConfig(4, 128, (2, 2, 18, 2), (4, 8, 16, 32), 12, img_size=384),
    "swin_large_patch4_window7_224": SwinConfig(4, 192, (2, 2, 18, 2), (6, 12, 24, 48), 7),
    "swin_large_patch4_window12_384": SwinConfig(4, 192, (2, 2, 18, 2), (6, 12, 24, 48), 12, img_size=384),
}


class SwinEncoder(nn.Module):
    """timm Swin patch embedding and stages (no final norm, no classifier), five stages."""

    def __init__(self, config: SwinConfig):
        super().__init__()
        net = SwinTransformer(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            num_classes=0,
            embed_dim=config.embed_dim,
            depths=config.depths,
            num_heads=config.num_heads,
            window_size=config.window_size,
            strict_img_size=False,
            drop_path_rate=0.0,
        )
        self.config = config
        self.in_chans = config.in_chans
        self.patch_embed, self.layers = net.patch_embed, net.layers
        widths = [config.embed_dim * 2**i for i in range(len(config.depths))]
        self.feature_info = FeatureInfo.from_channels([widths[0], *widths])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's own checkpointing of each stage's blocks."""
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.patch_embed(x)
        maps = []
        for layer in self.layers:
            x = layer(x)
            maps.append(x.permute(0, 3, 1, 2).contiguous())  # timm's Swin works channels-last
        c2, c3, c4, c5 = maps
        return {"conv1": stride2_from_stride4(c2), "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c5}


def swin_signature(state: StateDict) -> tuple | None:
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or "layers.0.blocks.0.attn.relative_position_bias_table" not in state:
        return None
    depths = count_blocks(state, r"layers\.{g}\.blocks\.(\d+)\.", 4)
    if not all(depths):
        return None
    tables = [state[f"layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(4)]
    window = (round(tables[0].shape[0] ** 0.5) + 1) // 2
    heads = tuple(int(t.shape[1]) for t in tables)
    return (int(proj.shape[-1]), int(proj.shape[0]), depths, heads, window, int(proj.shape[1]))


# Hugging Face SwinModel -> timm SwinTransformer key names, for the transformers-4 layout (published
# checkpoints such as MedCLIP's: attention.self.query, attention.output.dense, intermediate.dense) and
# the transformers-5 one (attention.q_proj, attention.o_proj, mlp.fc1).
_HF_RENAMES = (
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.", "layers."),
    (r"\.attention\.self\.relative_position_bias_table$", ".attn.relative_position_bias_table"),
    (
        r"\.attention\.relative_position_bias\.relative_position_bias_table$",
        ".attn.relative_position_bias_table",
    ),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
)
_HF_QKV = re.compile(r"^(.*)\.attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")
_QKV_PART = {"query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v"}
_HF_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.(.*)$")


def from_huggingface(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face SwinModel state dict in timm's layout (a timm state dict is returned unchanged).

    Both merge patches in the same (row offset, column offset) order, so the reduction weights carry
    over as they are; `relative_position_index` buffers are recomputed by timm and dropped here."""
    if "embeddings.patch_embeddings.projection.weight" not in state:
        return state
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.endswith("relative_position_index"):
            continue
        match = _HF_QKV.match(key)
        if match:
            qkv.setdefault((match.group(1), match.group(3)), {})[_QKV_PART[match.group(2)]] = value
            continue
        new = key
        for pattern, repl in _HF_RENAMES:
            new = re.sub(pattern, repl, new)
        down = _HF_DOWNSAMPLE.match(new)
        if down:  # HF merges patches at the end of stage i, timm at the start of stage i + 1
            new = f"layers.{int(down.group(1)) + 1}.downsample.{down.group(2)}"
        out[new] = value
    for (block, kind), parts in qkv.items():
        block = re.sub(r"^encoder\.layers\.", "layers.", block)
        if set(parts) == {"q", "k", "v"}:
            out[f"{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def register_swin_variant(name: str, config: SwinConfig) -> None:
    """Add a Swin size (registry builder `name` + checkpoint detection), e.g. a tiny one for tests."""
    SWIN_VARIANTS[name] = config
    SWIN_FAMILY.variants[name] = config.signature

    def builder() -> SwinEncoder:
        return SwinEncoder(config)

    builder.__name__ = name
    register_encoder(builder)


SWIN_FAMILY = register_family(
    Family(
        name="swin",
        stem_keys=("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
        signature=swin_signature,
        variants={},
        convert=from_huggingface,
        ignored=("head.", "norm.", "pooler."),
    )
)
for _name, _config in list(SWIN_VARIANTS.items()):
    register_swin_variant(_name, _config)
