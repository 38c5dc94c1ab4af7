"""Image-report pre-training losses: global InfoNCE, LoVT local loss, its decomposition, and priors.

Pure functions of already-projected representations (encoders, projections and the cross-modal
attention live with the models), so each loss can be unit-tested on hand-built tensors. All
similarities s(a, b) are cosine similarities. Uniformity statistics come from `cxrbench.representation`,
the same code `cxrbench analyze` reports.

Local inputs: z_local B x N x D local representations of one modality (image regions in row-major grid
order, or sentences) and z_attended B x N x D where z_attended[:, m] is the cross-modal attended
representation for local item m (the other modality attended with item m as the query). Masks are
B x N bool (True = valid, e.g. real rather than padded sentences).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cxrbench.errors import CxrbenchError
from cxrbench.representation import (
    _item_mask,
    gaussian_potential_uniformity,
    grid_distances,
    l2_normalize,
    masked_mean,
)

__all__ = [
    "LOCAL_PARTS",
    "UNIFORMITY_PRIORS",
    "distribution_prior",
    "float32_loss",
    "float32_outside_autocast",
    "global_infonce",
    "image_spatial_weights",
    "local_alignment_term",
    "local_intra_sample_contrastive",
    "local_negatives_term",
    "local_within_sample_uniformity",
    "lovt_local_loss",
    "lovt_local_terms",
    "moment_matching_prior",
    "sliced_wasserstein_prior",
    "within_sample_uniformity_prior",
]

LOCAL_PARTS = ("full", "alignment", "negatives")  # the LoVT local loss and its two components

_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def float32_outside_autocast() -> Iterator[None]:
    """Leave every enabled autocast region (CPU and CUDA) for the duration of the block.

    Under bf16 autocast the similarity matmuls of a loss run in bf16: near collapse (cosines of 0.999)
    that rounds the Gaussian prior to 0 and turns its gradient. Losses are cheap, so they run in float32.
    """
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _as_float32(value: object) -> object:
    if isinstance(value, Tensor) and value.is_floating_point() and value.element_size() < 4:
        return value.float()  # float16 / bfloat16 up; float64 stays
    return value


def float32_loss(fn: _F) -> _F:
    """Decorator: the loss runs outside autocast, its half-precision tensor inputs cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> Any:
        with float32_outside_autocast():
            return fn(*(_as_float32(a) for a in args), **{k: _as_float32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- global
@float32_loss
def global_infonce(z_img: Tensor, z_rep: Tensor, tau: float = 0.1, weight_i2r: float = 0.75) -> Tensor:
    """Global image-report InfoNCE (ConVIRT / CLIP*), negatives from the other modality of the batch.

    L_i2r = -1/B sum_i log( exp(s(z_i^img, z_i^rep)/tau) / sum_j exp(s(z_i^img, z_j^rep)/tau) ),
    L_r2i the same with the modalities swapped, L = weight_i2r L_i2r + (1 - weight_i2r) L_r2i
    (0.75 / 0.25, tau = 0.1 in docs/protocol.md). z_img, z_rep: B x D, pair i is (z_img[i], z_rep[i]).
    With unit-norm similarities the minimum is reached by perfectly aligned pairs forming a regular
    simplex: log(1 + (B - 1) exp(-B / ((B - 1) tau))) for B <= D + 1.
    """
    if z_img.dim() != 2 or z_img.shape != z_rep.shape:
        raise ValueError(f"expected two B x D tensors, got {tuple(z_img.shape)} and {tuple(z_rep.shape)}")
    logits = l2_normalize(z_img) @ l2_normalize(z_rep).T / tau
    target = torch.arange(logits.shape[0], device=logits.device)
    loss_i2r = F.cross_entropy(logits, target)
    loss_r2i = F.cross_entropy(logits.T, target)
    return weight_i2r * loss_i2r + (1.0 - weight_i2r) * loss_r2i


# ---------------------------------------------------------------------------------------------- local
def image_spatial_weights(
    grid: tuple[int, int],
    max_dist: float = 0.5,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """LoVT's image-side target weights (H*W) x (H*W): w_nm proportional to 1[d_nm <= max_dist] exp(-d_nm).

    d_nm is the Euclidean distance between region centres (row-major grid, one unit per cell) divided by
    sqrt(H^2 + W^2), as the reference implementation normalises "by the grid diagonal" (so d < 1).
    Rows are normalised to sum to 1 (row n holds the targets of region n); the diagonal always has the
    largest weight, so a region's own attended representation stays its main positive while its
    neighbours count as softer positives rather than negatives. The same row-normalised matrix serves
    both image directions (l2att and att2l), as in the reference.
    """
    h, w = grid
    dist = grid_distances(grid, "euclidean", device=device).to(dtype)
    d = dist / math.hypot(h, w)
    weights = torch.where(d <= max_dist, torch.exp(-d), torch.zeros_like(d))
    return weights / weights.sum(-1, keepdim=True)


def _local_parts(
    z_local: Tensor,
    z_attended: Tensor,
    weights: Tensor | None,
    pool_weights: Tensor | None,
    mask: Tensor | None,
    tau: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-item alignment and uniformity parts, the pooling weights, and which samples are non-empty."""
    if z_local.dim() != 3 or z_local.shape != z_attended.shape:
        raise ValueError(
            f"expected two B x N x D tensors, got {tuple(z_local.shape)} and {tuple(z_attended.shape)}"
        )
    bsz, n, _ = z_local.shape
    valid = _item_mask(z_local, mask)
    sims = l2_normalize(z_local) @ l2_normalize(z_attended).transpose(-1, -2) / tau  # s(z_n, z'_m)/tau
    if weights is None:
        weights = torch.eye(n, device=sims.device, dtype=sims.dtype)
    weights = weights.to(device=sims.device, dtype=sims.dtype).expand(bsz, n, n) * valid[:, None, :]
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(sims.dtype).tiny)
    align = -(weights * sims).sum(-1)
    uniform = torch.logsumexp(sims.masked_fill(~valid[:, None, :], torch.finfo(sims.dtype).min), dim=-1)
    if pool_weights is None:
        pool = valid.to(sims.dtype)
    else:
        pool = pool_weights.detach().to(device=sims.device, dtype=sims.dtype) * valid
    pool = pool / pool.sum(-1, keepdim=True).clamp_min(torch.finfo(sims.dtype).tiny)
    return align, uniform, pool, valid.any(-1)


def _pool_and_average(per_item: Tensor, pool: Tensor, non_empty: Tensor) -> Tensor:
    """sum_n pool_n per_item_n per sample, averaged over the samples with at least one valid item."""
    return masked_mean((pool * per_item).sum(-1), non_empty)


@float32_loss
def local_alignment_term(
    z_local: Tensor,
    z_attended: Tensor,
    weights: Tensor | None = None,
    pool_weights: Tensor | None = None,
    mask: Tensor | None = None,
    tau: float = 0.3,
) -> Tensor:
    """The local *alignment* part of the LoVT local loss: a_n = -sum_m w_nm s(z_n, z'_m)/tau.

    Pulls each local representation towards its (spatially weighted) cross-modal positives. Pooled and
    averaged exactly like `local_intra_sample_contrastive`, so alignment + negatives == that loss. Alone
    it is minimised by any collapse where z_n = z'_n (e.g. a constant output).
    """
    align, _, pool, non_empty = _local_parts(z_local, z_attended, weights, pool_weights, mask, tau)
    return _pool_and_average(align, pool, non_empty)


@float32_loss
def local_negatives_term(
    z_local: Tensor,
    z_attended: Tensor,
    pool_weights: Tensor | None = None,
    mask: Tensor | None = None,
    tau: float = 0.3,
) -> Tensor:
    """The *negatives* part of the LoVT local loss: u_n = log sum_m exp(s(z_n, z'_m)/tau).

    The contrastive denominator over the intra-sample cross-modal candidates (the sum runs over valid m
    only; it does not depend on the target weights w). Alone it is NOT a uniformity loss: it reaches
    its lower bound -1/tau + log N when every z_n equals v and every z'_m equals -v (a collapse), so it
    only spreads representations when paired with the alignment part. See
    `local_within_sample_uniformity` for a term that does spread them.
    """
    _, uniform, pool, non_empty = _local_parts(z_local, z_attended, None, pool_weights, mask, tau)
    return _pool_and_average(uniform, pool, non_empty)


@float32_loss
def local_within_sample_uniformity(
    z_local: Tensor,
    pool_weights: Tensor | None = None,
    mask: Tensor | None = None,
    tau: float = 0.3,
) -> Tensor:
    """Local uniformity without alignment: u_n = log mean_{m != n} exp(s(z_n, z_m)/tau), one modality.

    What the negatives of LoVT's local loss enforce once the positives are aligned (z'_m = z_m): each
    local representation is pushed away from the other items of its own sample and modality. Pooled
    like the LoVT terms (detached pooling weights over the items with another valid item), averaged over
    the samples with >= 2 valid items (0 when there is none). Maximal (1/tau) for a collapsed sample;
    as s = 1 - ||a - b||^2 / 2 on the sphere, it is a Gaussian potential with t = 1/(2 tau) per item.
    """
    if z_local.dim() != 3:
        raise ValueError(f"expected B x N x D local representations, got {tuple(z_local.shape)}")
    n = z_local.shape[1]
    valid = _item_mask(z_local, mask)
    z = l2_normalize(z_local)
    sims = z @ z.transpose(-1, -2) / tau
    others = valid[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=z.device)
    count = others.sum(-1)
    lse = torch.logsumexp(sims.masked_fill(~others, torch.finfo(sims.dtype).min), dim=-1)
    per_item = lse - count.clamp_min(1).to(sims.dtype).log()
    has_other = valid & (count > 0)
    per_item = per_item.masked_fill(~has_other, 0.0)
    if pool_weights is None:
        pool = has_other.to(sims.dtype)
    else:
        pool = pool_weights.detach().to(device=sims.device, dtype=sims.dtype) * has_other
    pool = pool / pool.sum(-1, keepdim=True).clamp_min(torch.finfo(sims.dtype).tiny)
    return _pool_and_average(per_item, pool, has_other.any(-1))


@float32_loss
def local_intra_sample_contrastive(
    z_local: Tensor,
    z_attended: Tensor,
    weights: Tensor | None = None,
    pool_weights: Tensor | None = None,
    mask: Tensor | None = None,
    tau: float = 0.3,
) -> Tensor:
    """One direction of LoVT's local loss, negatives only from the same sample.

    l_n = -sum_m w_nm s(z_n, z'_m)/tau + log sum_m exp(s(z_n, z'_m)/tau)   (alignment + uniformity)
    L = 1/|B'| sum_{i in B'} sum_n p_in l_in

    weights: target weights w (N x N or B x N x N; identity when None), restricted to valid m and
    renormalised so each row sums to 1. pool_weights p: B x N attention-pooling weights, detached here,
    restricted to valid n and renormalised to sum to 1 (uniform over valid items when None). B' are the
    samples with at least one valid item. Equals local_alignment_term + local_negatives_term exactly.
    """
    align, uniform, pool, non_empty = _local_parts(z_local, z_attended, weights, pool_weights, mask, tau)
    return _pool_and_average(align, pool, non_empty) + _pool_and_average(uniform, pool, non_empty)


def _local_term(
    part: str,
    z_local: Tensor,
    z_attended: Tensor,
    weights: Tensor | None,
    pool_weights: Tensor | None,
    mask: Tensor | None,
    tau: float,
) -> Tensor:
    if part == "alignment":
        return local_alignment_term(z_local, z_attended, weights, pool_weights, mask, tau)
    if part == "negatives":
        return local_negatives_term(z_local, z_attended, pool_weights, mask, tau)
    return local_intra_sample_contrastive(z_local, z_attended, weights, pool_weights, mask, tau)


@float32_loss
def lovt_local_terms(
    image_regions: Tensor,
    image_attended: Tensor,
    sentences: Tensor,
    sentence_attended: Tensor,
    sentence_mask: Tensor | None = None,
    image_pool_weights: Tensor | None = None,
    sentence_pool_weights: Tensor | None = None,
    *,
    grid: tuple[int, int] | None = None,
    tau: float = 0.3,
    max_dist: float = 0.5,
    part: str = "full",
) -> dict[str, Tensor]:
    """The four unweighted directions of LoVT's local loss (for logging; `lovt_local_loss` sums them).

    image_regions B x N x D (grid row-major; `grid` defaults to square), image_attended B x N x D (the
    report attended with each region as query), sentences B x S x D, sentence_attended B x S x D (the
    image attended with each sentence as query). Image side uses `image_spatial_weights(grid,
    max_dist)`, report side the identity and `sentence_mask`. Terms: image_l2att (region n vs attended
    m; targets w_nm), image_att2l (attended n vs region m; the same row-normalised w_nm, as the
    reference builds it), report_l2att, report_att2l. `part` picks the full loss ("full"), only its
    alignment part ("alignment") or only its negatives part ("negatives").
    """
    if part not in LOCAL_PARTS:
        raise ValueError(f"unknown local loss part {part!r}; use one of {', '.join(LOCAL_PARTS)}")
    n = image_regions.shape[1]
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} image regions are not a square grid; pass grid=(H, W)")
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not match {n} image regions")
    spatial = image_spatial_weights(grid, max_dist, device=image_regions.device)
    return {
        "image_l2att": _local_term(
            part, image_regions, image_attended, spatial, image_pool_weights, None, tau
        ),
        "image_att2l": _local_term(
            part, image_attended, image_regions, spatial, image_pool_weights, None, tau
        ),
        "report_l2att": _local_term(
            part, sentences, sentence_attended, None, sentence_pool_weights, sentence_mask, tau
        ),
        "report_att2l": _local_term(
            part, sentence_attended, sentences, None, sentence_pool_weights, sentence_mask, tau
        ),
    }


@float32_loss
def lovt_local_loss(
    image_regions: Tensor,
    image_attended: Tensor,
    sentences: Tensor,
    sentence_attended: Tensor,
    sentence_mask: Tensor | None = None,
    image_pool_weights: Tensor | None = None,
    sentence_pool_weights: Tensor | None = None,
    *,
    grid: tuple[int, int] | None = None,
    tau: float = 0.3,
    max_dist: float = 0.5,
    term_weight: float = 0.375,
    part: str = "full",
) -> Tensor:
    """LoVT's local loss: term_weight * (image_l2att + image_att2l + report_l2att + report_att2l).

    Each term is `local_intra_sample_contrastive` (tau 0.3; image side with spatial weights, report
    side with identity weights and the sentence mask; each weighted by the detached attention-pooling
    weights of its modality); each weighted 0.375 as in docs/protocol.md. part="alignment" / "negatives"
    keeps only that component of every term (the decomposition; see docs/baselines.md for which of them
    a collapse minimises). See `lovt_local_terms` for the inputs.
    """
    terms = lovt_local_terms(
        image_regions,
        image_attended,
        sentences,
        sentence_attended,
        sentence_mask,
        image_pool_weights,
        sentence_pool_weights,
        grid=grid,
        tau=tau,
        max_dist=max_dist,
        part=part,
    )
    return term_weight * torch.stack(list(terms.values())).sum()


# ----------------------------------------------------------------------------- distribution priors
# The follow-up paper replaces the intra-sample negatives by a distribution prior enforcing uniformity
# of the region representations within each sample. Its exact equations are not public: the priors
# below are this project's implementation of the described method. Each takes B x N x D local
# representations (regions or sentences) and an optional B x N mask, L2-normalises them, is minimised
# (lower = more uniform within each sample), and averages over the samples with >= 2 valid items
# (0 when there is none).


def _defined_samples(regions: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if regions.dim() != 3:
        raise ValueError(f"expected B x N x D local representations, got {tuple(regions.shape)}")
    valid = _item_mask(regions, mask)
    return valid, valid.sum(-1) >= 2


@float32_loss
def within_sample_uniformity_prior(regions: Tensor, t: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Gaussian-potential prior: Wang & Isola uniformity computed within each sample.

    L = mean_i log mean_{n != m} exp(-t ||z_in - z_im||^2) on L2-normalised local representations,
    i.e. `cxrbench.representation.gaussian_potential_uniformity` per sample (the statistic
    `cxrbench analyze` reports as within-sample uniformity). 0 when the sample's regions collapse, -2t
    for mutually orthogonal ones, bounded below by -2t N/(N-1) (a regular simplex). This is this project's implementation
    of the described method; the paper's exact equations are not public.
    """
    valid, defined = _defined_samples(regions, mask)
    per_sample = gaussian_potential_uniformity(l2_normalize(regions), t, valid)
    return masked_mean(per_sample, defined)


@float32_loss
def sliced_wasserstein_prior(
    regions: Tensor,
    n_projections: int = 64,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Distribution-matching prior: sliced Wasserstein-2 distance to the uniform law on the hypersphere.

    For each sample i with k valid L2-normalised items x_1..x_k, draw k targets y_j = g_j / ||g_j||,
    g_j ~ N(0, I_D) (uniform on S^{D-1}) and P random unit directions theta_p (shared by the batch):
    SW_i = 1/(P k) sum_p sum_j (sort(theta_p . x)_j - sort(theta_p . y)_j)^2,
    the squared sliced Wasserstein-2 distance (1-D optimal transport = matching sorted projections);
    L = mean_i SW_i. Unlike the Gaussian potential it matches the whole within-sample distribution
    (also its spread along every direction), not only pairwise repulsion. Projections of unit vectors
    have variance about 1/D, so the value scales like 1/D (about 2/D for a collapsed sample): choose
    its weight accordingly. Stochastic; pass a `generator` for reproducibility. This is this project's
    implementation of the described method; the paper's exact equations are not public.
    """
    valid, defined = _defined_samples(regions, mask)
    x = l2_normalize(regions)
    bsz, n, d = x.shape
    draw = {"generator": generator, "device": x.device, "dtype": x.dtype}
    target = l2_normalize(torch.randn(bsz, n, d, **draw))
    theta = l2_normalize(torch.randn(n_projections, d, **draw))
    # Projections of unit vectors lie in [-1, 1]: padding with 2 sorts invalid items last on both sides,
    # where they cancel exactly and pass no gradient.
    invalid = ~valid[..., None]
    proj_x = (x @ theta.T).masked_fill(invalid, 2.0).sort(dim=1).values
    proj_y = (target @ theta.T).masked_fill(invalid, 2.0).sort(dim=1).values
    count = (valid.sum(-1) * n_projections).clamp_min(1).to(x.dtype)
    per_sample = (proj_x - proj_y).pow(2).sum(dim=(1, 2)) / count
    return masked_mean(per_sample, defined)


@float32_loss
def moment_matching_prior(regions: Tensor, mask: Tensor | None = None) -> Tensor:
    """Distribution-matching prior by moments: within-sample mean -> 0 and covariance -> I/D.

    For each sample, on its k valid L2-normalised items with mean mu and covariance
    C = 1/k sum_n (x_n - mu)(x_n - mu)^T (the first two moments of the uniform law on S^{D-1} are 0
    and I/D): L_i = ||mu||^2 + ||C - I/D||_F^2, computed through the k x k Gram matrix (no D x D
    matrix). L = mean_i L_i. 1 + 1/D for a collapsed sample; with k <= D items it is minimised by a
    centred regular simplex. This is this project's implementation of the described method; the
    paper's exact equations are not public.
    """
    valid, defined = _defined_samples(regions, mask)
    x = l2_normalize(regions) * valid[..., None]
    dim = x.shape[-1]
    k = valid.sum(-1).clamp_min(1).to(x.dtype)
    mu = x.sum(1) / k[:, None]
    centred = (x - mu[:, None, :]) * valid[..., None]
    gram = centred @ centred.transpose(-1, -2)
    cov_sq_norm = gram.pow(2).sum(dim=(1, 2)) / k.pow(2)  # ||C||_F^2
    cov_trace = centred.pow(2).sum(dim=(1, 2)) / k
    per_sample = mu.pow(2).sum(-1) + cov_sq_norm - 2.0 * cov_trace / dim + 1.0 / dim
    return masked_mean(per_sample, defined)


UNIFORMITY_PRIORS: dict[str, Callable[..., Tensor]] = {
    "gaussian_potential": within_sample_uniformity_prior,
    "sliced_wasserstein": sliced_wasserstein_prior,
    "moment_matching": moment_matching_prior,
}


def distribution_prior(name: str, regions: Tensor, **kwargs: object) -> Tensor:
    """Apply the within-sample distribution prior registered as `name` in UNIFORMITY_PRIORS."""
    try:
        prior = UNIFORMITY_PRIORS[name]
    except KeyError:
        known = ", ".join(sorted(UNIFORMITY_PRIORS))
        raise CxrbenchError(f"unknown distribution prior {name!r}; available: {known}") from None
    return prior(regions, **kwargs)
