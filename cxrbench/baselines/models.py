"""Image and report encoders with the pooling, projections and cross-modal attention of the baselines.

The image side wraps `ResNetEncoder` (the class `cxrbench evaluate` loads), so exporting the trained
backbone is just its state dict. Local image features are the conv5 regions (7 x 7 at 224 px);
local report features are sentences (max over each sentence's tokens). Global features pool the
local ones (attention pooling with 8 heads and the average as query, the average, or the max), then
2-layer MLP projections (with or without BatchNorm) map both modalities into the shared space. LoVT's
learned cross-modal attention (`CrossAttention`) relates the two modalities' local representations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.encoders import ResNetEncoder
from cxrbench.errors import CxrbenchError

PROJECTIONS = ("mlp", "mlp_nonorm", "linear")
POOLINGS = ("attention", "avg", "max")


def _masked_apply(fn: Callable[[Tensor], Tensor], x: Tensor, mask: Tensor | None) -> Tensor:
    """fn on the valid items of x (..., d) only (BatchNorm statistics see no padding); zeros elsewhere."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        return fn(flat).reshape(*lead, -1)
    keep = mask.reshape(-1)
    computed = fn(flat[keep])
    out = computed.new_zeros(flat.shape[0], computed.shape[-1])
    out[keep] = computed
    return out.reshape(*lead, -1)


def _reference_init(linear: nn.Linear, nonlinearity: str) -> None:
    """The reference's projection init: Kaiming normal (fan_out), zero bias."""
    nn.init.kaiming_normal_(linear.weight, mode="fan_out", nonlinearity=nonlinearity)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class Projection(nn.Module):
    """The reference's projection head (d_hidden 2048, d_z 512: docs/protocol.md).

    "mlp": Linear -> BatchNorm -> ReLU -> Linear (LoVT, CLIP*); "mlp_nonorm": Linear -> ReLU -> Linear
    (ConVIRT, the reference's projection_norm null); "linear": one Linear without bias.
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, kind: str = "mlp"):
        super().__init__()
        if kind not in PROJECTIONS:
            raise CxrbenchError(f"projection must be one of {', '.join(PROJECTIONS)}, not {kind!r}")
        if kind == "linear":
            self.net: nn.Module = nn.Linear(d_in, d_out, bias=False)
            return
        first, last = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)
        _reference_init(first, "relu")
        _reference_init(last, "linear")
        norm = [nn.BatchNorm1d(d_hidden)] if kind == "mlp" else []
        self.net = nn.Sequential(first, *norm, nn.ReLU(inplace=True), last)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (..., d_in). With a mask only the valid items are projected (BatchNorm sees no padding)."""
        return _masked_apply(self.net, x, mask)


class GlobalPooling(nn.Module):
    """Pools B x N x C local features into B x C, returning the per-item pooling weights B x N too.

    "attention": multi-head attention (8 heads) whose single query is the (masked) average of the
    items; the weights are the head-averaged attention. "avg": the masked mean (uniform weights).
    "max": the masked element-wise max (ConVIRT's report side: over sentences that are each a max over
    their tokens, so the max over all tokens); it has no per-item weights, uniform ones are returned.
    """

    def __init__(self, dim: int, kind: str = "attention", heads: int = 8):
        super().__init__()
        if kind not in POOLINGS:
            raise CxrbenchError(f"pooling must be one of {', '.join(POOLINGS)}, not {kind!r}")
        self.kind = kind
        if kind == "attention":
            if dim % heads:
                raise CxrbenchError(
                    f"attention pooling: feature size {dim} is not divisible by {heads} heads"
                )
            self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask
        weights = valid.to(x.dtype) / valid.sum(-1, keepdim=True).clamp_min(1).to(x.dtype)
        mean = (weights[..., None] * x).sum(1)
        if self.kind == "avg":
            return mean, weights
        if self.kind == "max":
            lowest = torch.finfo(x.dtype).min
            pooled = x.masked_fill(~valid[..., None], lowest).amax(1)
            return pooled.masked_fill(~valid.any(-1, keepdim=True), 0.0), weights
        keys = valid | ~valid.any(-1, keepdim=True)  # a sample without items attends to its padding
        pooled, attn = self.attention(mean[:, None], x, x, key_padding_mask=~keys, need_weights=True)
        return pooled[:, 0], attn[:, 0]


def cross_attention(queries: Tensor, keys: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """A parameter-free cross-modal attention, the measurement `cxrbench analyze` uses for any method.

    softmax_m(<q_n, k_m> / sqrt(D)) over the valid m, values = keys: B x N x D (queries) and B x M x D
    (keys) -> B x N x D. Training uses LoVT's learned `CrossAttention` instead. A sample without any
    valid key attends to all keys (its rows are masked out of the losses anyway).
    """
    mask = None
    if key_mask is not None:
        key_mask = key_mask | ~key_mask.any(-1, keepdim=True)
        mask = key_mask[:, None, :].expand(-1, queries.shape[1], -1)
    return F.scaled_dot_product_attention(queries, keys, keys, attn_mask=mask)


class CrossAttention(nn.Module):
    """LoVT's learned cross-modal attention, built as the reference builds it (symmetric variant).

    One key, one value and one output projection (Linear d_z -> d_z with bias, Kaiming-normal fan_out
    init, zero bias) shared by both modalities, scaled dot-product scores <K a_n, K b_m> / sqrt(d_z)
    (no separate query projection: a bilinear similarity), softmax over the other modality's valid
    items, attended = Out(sum_m p_nm V b_m), then BatchNorm1d over d_z. Padded query items get a zero
    attention vector, as in the reference; unlike the reference, BatchNorm statistics here skip them.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        for linear in (self.key, self.value, self.output):
            _reference_init(linear, "linear")
        self.norm = nn.BatchNorm1d(dim)
        self.scale = 1.0 / math.sqrt(dim)

    def _attend(
        self, scores: Tensor, values: Tensor, query_mask: Tensor | None, key_mask: Tensor | None
    ) -> Tensor:
        if key_mask is not None:
            key_mask = key_mask | ~key_mask.any(-1, keepdim=True)  # no valid key: attend to all
            scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if query_mask is not None:
            probs = probs * query_mask[..., None].to(probs.dtype)
        return _masked_apply(lambda x: self.norm(self.output(x)), probs @ values, query_mask)

    def forward(
        self, a: Tensor, b: Tensor, mask_a: Tensor | None = None, mask_b: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """a: B x N x d (e.g. regions), b: B x M x d (sentences) -> (b attended by each a_n: B x N x d,
        a attended by each b_m: B x M x d)."""
        scores = self.key(a) @ self.key(b).transpose(-1, -2) * self.scale  # B x N x M
        attended_b = self._attend(scores, self.value(b), mask_a, mask_b)
        attended_a = self._attend(scores.transpose(-1, -2), self.value(a), mask_b, mask_a)
        return attended_b, attended_a


class ImageModel(nn.Module):
    """ResNet backbone -> conv5 regions B x N x C (row-major grid) and their pooled global feature."""

    def __init__(self, arch: str, pooling: str):
        super().__init__()
        self.backbone = ResNetEncoder(arch)
        self.dim = self.backbone.feature_info.channels["conv5"]
        self.pool = GlobalPooling(self.dim, pooling)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        fmap = self.backbone(images)["conv5"]
        grid = (fmap.shape[2], fmap.shape[3])
        regions = fmap.flatten(2).transpose(1, 2)
        pooled, weights = self.pool(regions)
        return regions, pooled, weights, grid


class ReportModel(nn.Module):
    """A Hugging Face BERT-style encoder; sentence features = max over each sentence's tokens."""

    def __init__(
        self, bert: nn.Module, pooling: str, freeze_layers: int = 0, freeze_embeddings: bool = False
    ):  # pooling "max" = the max over every token of the report
        super().__init__()
        self.bert = bert
        self.dim = bert.config.hidden_size
        self.pool = GlobalPooling(self.dim, pooling)
        if freeze_embeddings:
            for p in bert.embeddings.parameters():
                p.requires_grad_(False)
        for layer in bert.encoder.layer[:freeze_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tokens = self.bert(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        mask = batch["sentence_mask"]
        n_sent = mask.shape[1]
        index = batch["sentence_index"].masked_fill(batch["sentence_index"] < 0, n_sent)  # n_sent: dropped
        index = index[..., None].expand(-1, -1, tokens.shape[-1])
        sentences = tokens.new_zeros(tokens.shape[0], n_sent + 1, tokens.shape[-1])
        sentences = sentences.scatter_reduce(1, index, tokens, reduce="amax", include_self=False)[:, :n_sent]
        sentences = sentences * mask[..., None]
        pooled, weights = self.pool(sentences, mask)
        return sentences, pooled, weights, mask


@dataclass
class PretrainOutputs:
    """Everything the losses need, already projected (d_z) except where noted."""

    image_global: Tensor  # B x d_z
    report_global: Tensor  # B x d_z
    image_local: Tensor | None  # B x N x d_z (conv5 regions, row-major); None without local losses
    sentence_local: Tensor | None  # B x S x d_z
    sentence_mask: Tensor  # B x S bool
    image_pool_weights: Tensor  # B x N
    sentence_pool_weights: Tensor  # B x S
    grid: tuple[int, int]
    image_attended: Tensor | None = None  # B x N x d_z: report attended by each region
    sentence_attended: Tensor | None = None  # B x S x d_z: image attended by each sentence
    global_tau: Tensor | None = None  # learnable temperature (CLIP), else None


class PretrainModel(nn.Module):
    """Both encoders, poolings, projections and (for LoVT's local losses) the learned cross-attention.

    Modules are created in a fixed order (encoders, global projections, local projections, attention,
    temperature), so two methods that share the first ones start from the same weights for one seed.
    """

    def __init__(
        self,
        image: ImageModel,
        report: ReportModel,
        d_hidden: int,
        d_z: int,
        projection: str = "mlp",
        local: bool = True,
        cross_attention: bool = False,
        learnable_tau: float | None = None,
    ):
        super().__init__()
        self.image, self.report = image, report
        self.image_global_proj = Projection(image.dim, d_hidden, d_z, projection)
        self.report_global_proj = Projection(report.dim, d_hidden, d_z, projection)
        # Local projections only where a loss uses them (DDP and the optimiser see no idle parameters).
        self.image_local_proj = Projection(image.dim, d_hidden, d_z, projection) if local else None
        self.report_local_proj = Projection(report.dim, d_hidden, d_z, projection) if local else None
        self.attention = CrossAttention(d_z) if cross_attention and local else None
        self.log_tau = (
            None if learnable_tau is None else nn.Parameter(torch.tensor(float(learnable_tau)).log())
        )

    @property
    def cross_attention(self) -> bool:
        """Whether the model has LoVT's learned cross-attention (it fills image/sentence_attended)."""
        return self.attention is not None

    def forward(self, batch: dict[str, Tensor]) -> PretrainOutputs:
        regions, image_pooled, image_weights, grid = self.image(batch["images"])
        sentences, report_pooled, sentence_weights, mask = self.report(batch)
        image_local = sentence_local = None
        if self.image_local_proj is not None and self.report_local_proj is not None:
            image_local = self.image_local_proj(regions)
            sentence_local = self.report_local_proj(sentences, mask)
        out = PretrainOutputs(
            image_global=self.image_global_proj(image_pooled),
            report_global=self.report_global_proj(report_pooled),
            image_local=image_local,
            sentence_local=sentence_local,
            sentence_mask=mask,
            image_pool_weights=image_weights,
            sentence_pool_weights=sentence_weights,
            grid=grid,
            global_tau=None if self.log_tau is None else self.log_tau.exp().clamp_min(0.01),
        )
        if self.attention is not None and image_local is not None and sentence_local is not None:
            out.image_attended, out.sentence_attended = self.attention(
                image_local, sentence_local, None, mask
            )
        return out
