"""The ViT family: a timm VisionTransformer returning the patch grids of four tapped blocks.

Every published ViT layout (timm, open_clip, OpenAI CLIP, Hugging Face DINOv2; vit_layouts.py) is
mapped onto timm's key names, so one forward serves all. The encoder's own output is the tapped
blocks' patch grids (class and register tokens dropped, final norm applied, all resized to the
nominal stride 16); its neck (pyramid.py) makes the contract's stages from them and trains with the
head. Positional embeddings keep the checkpoint's grid and are interpolated to the input's grid at
every forward (bicubic, as timm does), so any protocol resolution works.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cxrbench.encoders.features import FeatureInfo
from cxrbench.encoders.pyramid import GRID_STRIDE, SimplePyramid, pyramid_info
from cxrbench.encoders.registry import register_encoder, register_encoder_pattern
from cxrbench.errors import CxrbenchError

# Named sizes: (width, depth, attention heads), as timm and the ViT papers name them.
SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
# Attention heads are not stored in the weights: the head count of a known width, else width/64.
HEADS_BY_WIDTH = {w: h for w, _, h in SIZES.values()} | {1536: 24, 1408: 16}
# The blocks MMSeg taps in a 12-block ViT; other depths tap the ends of the four quarters.
TAPS_12 = (3, 5, 7, 11)
_NAMED = re.compile(r"^vit_(tiny|small|base|large|huge)_patch(\d+)$")
_GENERIC = re.compile(r"^vit_w(\d+)_d(\d+)_h(\d+)_patch(\d+)$")


def tap_blocks(depth: int) -> tuple[int, ...]:
    """The four tapped blocks (0-based): 3, 5, 7, 11 of 12, else the last block of each quarter."""
    if depth == 12:
        return TAPS_12
    return tuple(max(0, math.ceil((k + 1) * depth / 4) - 1) for k in range(4))


def default_heads(width: int) -> int:
    return HEADS_BY_WIDTH.get(width, max(1, width // 64))


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes a ViT's tensors and forward; detected from a checkpoint's keys and shapes.

    `pos_grid` is the side of the checkpoint's positional-embedding grid (e.g. 37 for a 518-px
    DINOv2); `no_embed_class` means the positional embedding covers patches only (timm's DINOv2 with
    registers); `pre_norm` is CLIP's ln_pre (its patch embedding has no bias).
    """

    width: int
    depth: int
    heads: int
    patch: int
    mlp_hidden: int
    pos_grid: int
    class_token: bool = True
    registers: int = 0
    no_embed_class: bool = False
    layer_scale: bool = False
    qkv_bias: bool = True
    pre_norm: bool = False
    final_norm: bool = True
    act: str = "gelu"
    norm_eps: float = 1e-6
    in_chans: int = 3

    @property
    def arch(self) -> str:
        """The architecture name: `vit_base_patch16` for a named size, else `vit_w{W}_d{D}_h{H}_patch{P}`."""
        for size, shape in SIZES.items():
            if shape == (self.width, self.depth, self.heads):
                return f"vit_{size}_patch{self.patch}"
        return f"vit_w{self.width}_d{self.depth}_h{self.heads}_patch{self.patch}"


def parse_arch(name: str) -> tuple[int, int, int, int] | None:
    """(width, depth, heads, patch) of a ViT architecture name, None if `name` is not one."""
    if m := _NAMED.match(name):
        width, depth, heads = SIZES[m.group(1)]
        return width, depth, heads, int(m.group(2))
    if m := _GENERIC.match(name):
        width, depth, heads, patch = map(int, m.groups())
        if min(width, depth, heads, patch) < 1 or width % heads:
            raise CxrbenchError(f"ViT architecture {name!r}: width must be a multiple of the head count")
        return width, depth, heads, patch
    return None


def config_for_arch(name: str, resolution: int = 224) -> ViTConfig:
    """The timm-default ViT of a name (class token, no registers, GELU), positional grid for `resolution`."""
    shape = parse_arch(name)
    if shape is None:
        raise CxrbenchError(f"{name!r} is not a ViT architecture name (e.g. vit_base_patch16)")
    width, depth, heads, patch = shape
    return ViTConfig(width, depth, heads, patch, mlp_hidden=4 * width, pos_grid=max(1, resolution // patch))


class ViTEncoder(VisionTransformer):
    """timm's VisionTransformer (same key names, no classifier) whose forward returns tapped grids.

    `default_preset` names the input normalisation its weights expect ("imagenet" or "clip"), for
    the preprocessing presets to pick up.
    """

    def __init__(self, config: ViTConfig, default_preset: str = "imagenet"):
        super().__init__(
            img_size=config.pos_grid * config.patch,
            patch_size=config.patch,
            in_chans=config.in_chans,
            num_classes=0,
            global_pool="",
            embed_dim=config.width,
            depth=config.depth,
            num_heads=config.heads,
            # a hair above the exact ratio, so that timm's int(width * ratio) gives mlp_hidden
            mlp_ratio=(config.mlp_hidden + 0.5) / config.width,
            qkv_bias=config.qkv_bias,
            init_values=1e-5 if config.layer_scale else None,
            class_token=config.class_token,
            no_embed_class=config.no_embed_class,
            reg_tokens=config.registers,
            pre_norm=config.pre_norm,
            final_norm=config.final_norm,
            dynamic_img_size=True,
            act_layer=config.act,
            norm_layer=partial(nn.LayerNorm, eps=config.norm_eps),
        )
        self.config = config
        self.arch = config.arch
        self.default_preset = default_preset
        self.taps = tap_blocks(config.depth)
        self.tap_names = tuple(f"block{i}" for i in self.taps)
        names = tuple(dict.fromkeys(self.tap_names))
        # timm's own feature_info (a list) is replaced by the contract's description of forward().
        self.feature_info = FeatureInfo(
            channels={n: config.width for n in names},
            strides={n: GRID_STRIDE for n in names},
            probe=names[-1],
        )
        self.neck_info = pyramid_info(config.width)

    def build_neck(self, stages: Sequence[str]) -> SimplePyramid:
        """The simple feature pyramid for `stages` (freshly initialised; it belongs to the head)."""
        return SimplePyramid(self.config.width, self.tap_names, stages)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """{"block<i>": B x width x H/16 x W/16} for each tapped block i.

        A 1-channel ViT gets the channel mean of a 3-channel input. An input that is not a multiple
        of the patch size is resized (bilinear) to the nearest one; a grid that is not at stride 16
        (patch 14 or 32) is resized (bilinear) to H/16 x W/16.
        """
        if x.shape[1] != self.config.in_chans and self.config.in_chans == 1:
            x = x.mean(dim=1, keepdim=True)  # a 1-channel ViT: the grey image the 3 channels repeat
        height, width = x.shape[-2:]
        patch = self.config.patch
        grid = (max(1, round(height / patch)), max(1, round(width / patch)))
        if (grid[0] * patch, grid[1] * patch) != (height, width):
            x = F.interpolate(
                x, size=(grid[0] * patch, grid[1] * patch), mode="bilinear", align_corners=False
            )
        target = (max(1, height // GRID_STRIDE), max(1, width // GRID_STRIDE))
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        out: dict[str, Tensor] = {}
        wanted = dict(zip(self.taps, self.tap_names))
        for i, block in enumerate(self.blocks[: max(self.taps) + 1]):
            x = (
                checkpoint(block, x, use_reentrant=False)
                if self.grad_checkpointing and self.training
                else block(x)
            )
            if i in wanted:
                out[wanted[i]] = self._grid(self.norm(x), grid, target)
        return out

    def _grid(self, tokens: Tensor, grid: tuple[int, int], target: tuple[int, int]) -> Tensor:
        patches = tokens[:, self.num_prefix_tokens :]
        fmap = patches.reshape(patches.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
        if grid != target:
            fmap = F.interpolate(fmap, size=target, mode="bilinear", align_corners=False)
        return fmap


def _registered(name: str):
    def build() -> ViTEncoder:
        return ViTEncoder(config_for_arch(name))

    build.__name__ = name
    build.__doc__ = f"A {name} (timm defaults, 224-px positional grid)."
    return register_encoder(build)


ARCHS = tuple(
    _registered(name).__name__
    for name in (
        "vit_tiny_patch16",
        "vit_small_patch16",
        "vit_small_patch14",
        "vit_base_patch16",
        "vit_base_patch14",
        "vit_base_patch32",
        "vit_large_patch16",
        "vit_large_patch14",
        "vit_huge_patch14",
    )
)


@register_encoder_pattern
def _generic_vit(name: str):
    """Builders for the names `vit_w{W}_d{D}_h{H}_patch{P}` (any ViT shape, e.g. tiny test models)."""
    if _GENERIC.match(name) is None:
        return None
    return lambda: ViTEncoder(config_for_arch(name))


def with_shape(config: ViTConfig, arch: str) -> ViTConfig:
    """`config` with the width, depth, heads and patch an architecture name fixes (--arch)."""
    width, depth, heads, patch = parse_arch(arch) or (config.width, config.depth, config.heads, config.patch)
    return replace(config, width=width, depth=depth, heads=heads, patch=patch)
