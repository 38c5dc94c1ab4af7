"""Representation statistics: uniformity, alignment, effective rank and spatial smoothness.

This is the one implementation shared by the pre-training losses (`cxrbench.baselines.losses`) and by
`cxrbench analyze`, so a statistic reported by the analysis is exactly the quantity a loss optimises.

Conventions: region tensors are B x N x D with the regions of a H x W grid in row-major order
(n = row * W + col), i.e. `feature_map.flatten(2).transpose(1, 2)` of a B x D x H x W map. Boolean
masks mark valid items (True = keep). Half-precision inputs are computed in float32. A statistic that
is undefined for a sample (e.g. a pair statistic over fewer than two valid items) is NaN there.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "alignment",
    "between_sample_uniformity",
    "effective_rank",
    "gaussian_potential_uniformity",
    "global_uniformity",
    "grid_distances",
    "l2_normalize",
    "masked_mean",
    "mean_within_cosine",
    "spatial_smoothness",
    "within_sample_uniformity",
]


def _as_float(x: Tensor) -> Tensor:
    """Upcast half precision so that exponentials and sums stay accurate under AMP."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _item_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """The (..., N) validity mask of the items of x (..., N, D); all True when mask is None."""
    if mask is None:
        return torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match items shape {tuple(x.shape[:-1])}")
    return mask.to(device=x.device, dtype=torch.bool)


def _pair_mask(valid: Tensor) -> Tensor:
    """Valid off-diagonal pairs (..., N, N) from item validity (..., N)."""
    n = valid.shape[-1]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=valid.device)
    return off_diagonal & valid[..., :, None] & valid[..., None, :]


def _nan_where(defined: Tensor, value: Tensor) -> Tensor:
    return torch.where(defined, value, torch.full_like(value, float("nan")))


def l2_normalize(z: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """z / max(||z||, eps) along `dim`: projects onto the unit hypersphere (zero vectors stay zero)."""
    z = _as_float(z)
    return z / z.norm(dim=dim, keepdim=True).clamp_min(eps)


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of `values` over the entries where `valid` is True; 0 (still part of the graph) if none.

    Averages per-sample statistics over the samples where they are defined, without letting the NaN of
    an undefined sample reach a loss or its gradient (NaNs of valid entries still propagate).
    """
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp_min(1).to(total.dtype)


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances (..., N, M) via the Gram trick (memory N x M, not N x M x D)."""
    sq = a.pow(2).sum(-1)[..., :, None] + b.pow(2).sum(-1)[..., None, :] - 2.0 * a @ b.transpose(-1, -2)
    return sq.clamp_min(0.0)


def _potential_logsumexp(a: Tensor, b: Tensor, t: float, valid: Tensor) -> tuple[Tensor, Tensor]:
    """log sum over valid pairs of exp(-t ||a_n - b_m||^2), and the number of valid pairs.

    The single place where the Gaussian potential is evaluated. Invalid pairs get the most negative
    finite logit (not -inf), so rows without any valid pair stay finite and have finite gradients.
    """
    logits = -t * _sq_dists(a, b)
    logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    return torch.logsumexp(logits, dim=(-2, -1)), valid.sum(dim=(-2, -1))


def gaussian_potential_uniformity(z: Tensor, t: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Uniformity of a set of representations (Wang & Isola 2020), batched over leading dimensions.

    U(z) = log mean_{n != m} exp(-t ||z_n - z_m||^2) over the valid pairs (mask[n] and mask[m]).

    z: (..., N, D), meant to be L2-normalised (the statistic is defined on the unit hypersphere; it is
    not normalised here so that callers control it). mask: (..., N) bool or None. Returns (...).
    Computed with logsumexp, so it is numerically stable for any t and differentiable. Lower means more
    uniformly spread; 0 is its maximum, reached when all items coincide (collapse). For one-hot
    (orthogonal) unit vectors ||z_n - z_m||^2 = 2 and U = -2t; on the sphere U >= -2t N/(N-1), reached
    by a regular simplex (N <= D + 1). NaN where fewer than two items are valid.
    """
    if z.dim() < 2:
        raise ValueError(f"expected z of shape (..., N, D), got {tuple(z.shape)}")
    z = _as_float(z)
    valid = _pair_mask(_item_mask(z, mask)).expand(*z.shape[:-1], z.shape[-2])
    lse, count = _potential_logsumexp(z, z, t, valid)
    value = lse - count.clamp_min(1).to(lse.dtype).log()
    return _nan_where(count > 0, value)


def global_uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity of global representations over a batch: U(l2_normalize(z)) for z of shape B x D."""
    if z.dim() != 2:
        raise ValueError(f"expected z of shape B x D, got {tuple(z.shape)}")
    return gaussian_potential_uniformity(l2_normalize(z), t)


def within_sample_uniformity(regions: Tensor, t: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Per-sample (within-image) uniformity, averaged over samples.

    mean_i log mean_{n != m} exp(-t ||z_in - z_im||^2) on L2-normalised regions B x N x D. High (near 0)
    means the regions of an image collapse onto each other; localized tasks reward low values. Samples
    with fewer than two valid regions are skipped; NaN when no sample is defined.
    """
    if regions.dim() != 3:
        raise ValueError(f"expected regions of shape B x N x D, got {tuple(regions.shape)}")
    per_sample = gaussian_potential_uniformity(l2_normalize(regions), t, mask)
    defined = _item_mask(regions, mask).sum(-1) >= 2
    return _nan_where(defined.any(), masked_mean(per_sample, defined))


def between_sample_uniformity(
    regions: Tensor, t: float = 2.0, mask: Tensor | None = None, chunk_size: int = 4096
) -> Tensor:
    """Uniformity of region representations across images: pairs of regions from different images only.

    log mean_{i != j, n, m} exp(-t ||z_in - z_jm||^2) on L2-normalised regions B x N x D. Evaluated in
    row chunks of `chunk_size` regions, so memory is chunk_size x (B*N) rather than (B*N)^2, which lets
    the analysis use hundreds of images. NaN when fewer than two images have valid regions.
    """
    if regions.dim() != 3:
        raise ValueError(f"expected regions of shape B x N x D, got {tuple(regions.shape)}")
    b, n, d = regions.shape
    flat = l2_normalize(regions).reshape(b * n, d)
    valid_item = _item_mask(regions, mask).reshape(b * n)
    sample = torch.arange(b, device=regions.device).repeat_interleave(n)
    lses, counts = [], []
    for start in range(0, b * n, chunk_size):
        stop = min(start + chunk_size, b * n)
        valid = (
            (sample[start:stop, None] != sample[None, :]) & valid_item[start:stop, None] & valid_item[None, :]
        )
        lse, count = _potential_logsumexp(flat[start:stop], flat, t, valid)
        lses.append(lse)
        counts.append(count)
    lse = torch.logsumexp(torch.stack(lses), dim=0)
    count = torch.stack(counts).sum()
    return _nan_where(count > 0, lse - count.clamp_min(1).to(lse.dtype).log())


def alignment(
    a: Tensor, b: Tensor, alpha: float = 2.0, mask: Tensor | None = None, normalize: bool = True
) -> Tensor:
    """Alignment of paired representations (Wang & Isola 2020): mean_i ||a_i - b_i||^alpha.

    a, b: (..., D) paired along all leading dimensions (e.g. image/report B x D, or regions and their
    attended sentences B x N x D); mask (...) selects the pairs. L2-normalised first unless
    normalize=False. 0 is perfect alignment; for unit vectors and alpha=2 the maximum is 4.
    """
    if a.shape != b.shape:
        raise ValueError(f"paired shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if normalize:
        a, b = l2_normalize(a), l2_normalize(b)
    a, b = _as_float(a), _as_float(b)
    sq = (a - b).pow(2).sum(-1)
    dist = sq if alpha == 2 else sq.clamp_min(1e-24).pow(alpha / 2)
    valid = _item_mask(a, mask)
    return _nan_where(valid.any(), masked_mean(dist, valid))


def mean_within_cosine(regions: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean off-diagonal cosine similarity of the regions within each sample: (..., N, D) -> (...).

    1 for collapsed regions, 0 for mutually orthogonal ones. NaN where fewer than two are valid.
    """
    x = l2_normalize(regions)
    valid = _pair_mask(_item_mask(x, mask))
    cos = x @ x.transpose(-1, -2)
    count = valid.sum(dim=(-2, -1))
    total = torch.where(valid, cos, torch.zeros_like(cos)).sum(dim=(-2, -1))
    return _nan_where(count > 0, total / count.clamp_min(1).to(total.dtype))


def effective_rank(regions: Tensor, mask: Tensor | None = None, normalize: bool = True) -> Tensor:
    """Effective rank of each sample's region matrix (Roy & Vetterli 2007): (..., N, D) -> (...).

    erank = exp(H(p)), p_k = sigma_k / sum_j sigma_j over the singular values of the (L2-normalised,
    uncentred) N x D region matrix, H the Shannon entropy. 1 for collapsed regions, N for N <= D
    orthogonal regions; a continuous count of the directions the regions span. Masked regions are
    zeroed, which removes them from the spectrum. Computed in float64 for a clean rank-1 limit.
    """
    x = l2_normalize(regions) if normalize else _as_float(regions)
    valid = _item_mask(x, mask)
    sigma = torch.linalg.svdvals((x * valid[..., None]).double())
    p = sigma / sigma.sum(-1, keepdim=True).clamp_min(torch.finfo(sigma.dtype).tiny)
    erank = (-torch.special.xlogy(p, p).sum(-1)).exp().to(x.dtype)
    return _nan_where(valid.any(-1) & (sigma.sum(-1) > 0), erank)


def grid_distances(
    grid: tuple[int, int], metric: str = "euclidean", device: torch.device | str | None = None
) -> Tensor:
    """Distances (H*W) x (H*W) between the cells of an H x W grid, in cell units, row-major order.

    metric: "euclidean" (sqrt(dr^2 + dc^2)) or "chebyshev" (max(|dr|, |dc|): the ring index around a
    cell, so every distance is an integer and the 8 neighbours are at distance 1).
    """
    h, w = grid
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    dr = (rows.reshape(-1)[:, None] - rows.reshape(-1)[None, :]).abs()
    dc = (cols.reshape(-1)[:, None] - cols.reshape(-1)[None, :]).abs()
    if metric == "euclidean":
        return torch.sqrt(dr.pow(2) + dc.pow(2))
    if metric == "chebyshev":
        return torch.maximum(dr, dc)
    raise ValueError(f"unknown grid metric {metric!r}; use 'euclidean' or 'chebyshev'")


def spatial_smoothness(regions: Tensor, grid: tuple[int, int]) -> dict[int, float]:
    """Mean cosine similarity of region pairs as a function of their Chebyshev grid distance.

    regions: B x (H*W) x D in row-major grid order. Returns {distance: mean over images and over the
    ordered region pairs at that distance of cos(z_n, z_m)} for distances 1 .. max(H, W) - 1. Chebyshev
    distance is used so every distance is an integer ring (distance 1 = the 8 neighbours). A curve that
    falls with distance means neighbouring regions share information while distant ones stay distinct.
    Unlike the other statistics this depends on where each region sits, so permuting regions changes it.
    """
    h, w = grid
    if regions.dim() != 3 or regions.shape[1] != h * w:
        raise ValueError(
            f"expected regions of shape B x {h * w} x D for grid {grid}, got {tuple(regions.shape)}"
        )
    with torch.no_grad():
        x = l2_normalize(regions)
        cos = (x @ x.transpose(-1, -2)).mean(0)
        dist = grid_distances(grid, "chebyshev", device=regions.device).round().long()
        return {d: cos[dist == d].mean().item() for d in range(1, max(h, w))}
