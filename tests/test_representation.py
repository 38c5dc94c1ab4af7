"""Representation statistics on hand-built features with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from cxrbench.representation import (
    alignment,
    between_sample_uniformity,
    effective_rank,
    gaussian_potential_uniformity,
    global_uniformity,
    grid_distances,
    l2_normalize,
    masked_mean,
    mean_within_cosine,
    spatial_smoothness,
    within_sample_uniformity,
)


def _one_hot_regions(b: int, n: int, d: int) -> torch.Tensor:
    """B x N x D: every image holds N distinct standard basis vectors (orthogonal regions)."""
    return torch.eye(d)[:n].expand(b, n, d).clone()


def _naive_potential(z: torch.Tensor, t: float) -> float:
    n = z.shape[0]
    values = [math.exp(-t * (z[i] - z[j]).pow(2).sum().item()) for i in range(n) for j in range(n) if i != j]
    return math.log(sum(values) / len(values))


def _smooth_map(b: int, h: int, w: int, d: int = 6) -> torch.Tensor:
    """Regions whose features vary slowly with grid position, so neighbours are similar."""
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    r, c = rows.reshape(-1) / h * math.pi, cols.reshape(-1) / w * math.pi
    feats = torch.stack([r.cos(), r.sin(), c.cos(), c.sin(), (r + c).cos(), torch.ones_like(r)], -1)[:, :d]
    return (feats + 0.01 * torch.randn(b, h * w, d, generator=torch.Generator().manual_seed(0))).contiguous()


def test_collapse_is_maximum_of_uniformity_and_rank_one():
    regions = torch.randn(1, 1, 16).expand(3, 7, 16).clone()
    assert torch.allclose(gaussian_potential_uniformity(l2_normalize(regions)), torch.zeros(3), atol=1e-6)
    assert within_sample_uniformity(regions).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(effective_rank(regions), torch.ones(3), atol=1e-4)
    assert torch.allclose(mean_within_cosine(regions), torch.ones(3), atol=1e-6)
    random_regions = torch.randn(3, 7, 16)
    assert within_sample_uniformity(random_regions) < within_sample_uniformity(regions)


@pytest.mark.parametrize("t", [0.5, 2.0, 1000.0])
def test_orthogonal_regions_closed_form_and_full_rank(t):
    b, n, d = 2, 5, 8
    regions = _one_hot_regions(b, n, d)
    # ||e_i - e_j||^2 = 2, so log mean exp(-2t) = -2t exactly (also for large t: logsumexp is stable).
    assert torch.allclose(gaussian_potential_uniformity(regions, t), torch.full((b,), -2 * t))
    assert within_sample_uniformity(regions, t).item() == pytest.approx(-2 * t)
    assert torch.allclose(effective_rank(regions), torch.full((b,), float(n)), atol=1e-5)
    assert torch.allclose(mean_within_cosine(regions), torch.zeros(b), atol=1e-7)
    assert global_uniformity(torch.eye(d)[:n], t).item() == pytest.approx(-2 * t)


def test_potential_matches_naive_formula_and_is_batched():
    z = l2_normalize(torch.randn(2, 3, 6, 5, dtype=torch.float64))
    got = gaussian_potential_uniformity(z, t=2.0)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert got[i, j].item() == pytest.approx(_naive_potential(z[i, j], 2.0), rel=1e-10)


def test_potential_mask_equals_subset_and_undefined_is_nan():
    z = l2_normalize(torch.randn(2, 6, 4, dtype=torch.float64))
    mask = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    got = gaussian_potential_uniformity(z, mask=mask)
    assert got[0].item() == pytest.approx(_naive_potential(z[0, mask[0]], 2.0), rel=1e-10)
    assert got[1].isnan()  # one valid region: no pair
    # the undefined sample is skipped by the average
    assert within_sample_uniformity(z, mask=mask).item() == pytest.approx(got[0].item(), rel=1e-10)
    with pytest.raises(ValueError):
        gaussian_potential_uniformity(z, mask=mask[:, :3])


def test_between_sample_uniformity_closed_form_and_chunking():
    # Two images with the same three orthogonal regions: of the 18 cross-image ordered pairs, 6 are
    # identical (distance 0) and 12 are orthogonal (distance 2).
    regions = _one_hot_regions(2, 3, 4)
    t = 2.0
    expected = math.log((6 + 12 * math.exp(-2 * t)) / 18)
    assert between_sample_uniformity(regions, t).item() == pytest.approx(expected, rel=1e-6)
    # within each image all pairs are orthogonal
    assert within_sample_uniformity(regions, t).item() == pytest.approx(-2 * t)
    random_regions = torch.randn(5, 7, 8)
    full = between_sample_uniformity(random_regions)
    assert between_sample_uniformity(random_regions, chunk_size=3).item() == pytest.approx(
        full.item(), rel=1e-5
    )
    # equals the potential over all pairs restricted to different images
    z = l2_normalize(random_regions).reshape(35, 8).double()
    sample = torch.arange(5).repeat_interleave(7)
    dist = torch.cdist(z, z).pow(2)
    different = sample[:, None] != sample[None, :]
    naive = torch.exp(-2 * dist[different]).mean().log().item()
    assert full.item() == pytest.approx(naive, rel=1e-5)


def test_alignment_values():
    a = torch.randn(4, 8)
    assert alignment(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(a, -a).item() == pytest.approx(4.0, rel=1e-6)
    assert alignment(a, -a, alpha=1).item() == pytest.approx(2.0, rel=1e-6)
    e = torch.eye(4)
    assert alignment(e, e.roll(1, 0)).item() == pytest.approx(2.0, rel=1e-6)
    mask = torch.tensor([True, False, True, False])
    b = a.clone()
    b[1] = -a[1]
    assert alignment(a, b, mask=mask).item() == pytest.approx(0.0, abs=1e-6)
    regions = torch.randn(2, 5, 8)
    assert alignment(regions, regions).item() == pytest.approx(0.0, abs=1e-6)


def test_effective_rank_known_spectrum():
    # rows e0, e0, e1: singular values sqrt(2) and 1
    x = torch.eye(3)[[0, 0, 1]][None]
    p = torch.tensor([math.sqrt(2), 1.0]) / (math.sqrt(2) + 1)
    expected = math.exp(-(p * p.log()).sum().item())
    assert effective_rank(x).item() == pytest.approx(expected, rel=1e-6)
    # masking the duplicate leaves two orthogonal rows
    assert effective_rank(x, mask=torch.tensor([[True, False, True]])).item() == pytest.approx(2.0, rel=1e-6)


def test_permutation_changes_only_spatial_smoothness():
    h = w = 4
    regions = _smooth_map(3, h, w)
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(1))
    permuted = regions[:, perm]
    batch_perm = torch.tensor([2, 0, 1])
    other = regions + 0.3 * torch.randn(regions.shape, generator=torch.Generator().manual_seed(2))
    unchanged = [
        (within_sample_uniformity(regions), within_sample_uniformity(permuted)),
        (between_sample_uniformity(regions), between_sample_uniformity(permuted)),
        (mean_within_cosine(regions), mean_within_cosine(permuted)),
        (effective_rank(regions), effective_rank(permuted)),
        (alignment(regions, other), alignment(permuted, other[:, perm])),
        (global_uniformity(regions.mean(1)), global_uniformity(regions.mean(1)[batch_perm])),
    ]
    for before, after in unchanged:
        assert torch.allclose(before, after, atol=1e-5)
    smooth = spatial_smoothness(regions, (h, w))
    shuffled = spatial_smoothness(permuted, (h, w))
    assert sorted(smooth) == [1, 2, 3]
    assert smooth[1] > smooth[3]  # neighbours are more alike than distant regions
    assert abs(smooth[1] - shuffled[1]) > 0.05


def test_grid_distances():
    cheb = grid_distances((3, 4), "chebyshev")
    eucl = grid_distances((3, 4), "euclidean")
    assert cheb.shape == (12, 12)
    # cell (0, 0) = 0 and cell (2, 3) = 11
    assert cheb[0, 11].item() == 3.0
    assert eucl[0, 11].item() == pytest.approx(math.hypot(2, 3))
    assert eucl[0, 5].item() == pytest.approx(math.sqrt(2))  # (0,0) -> (1,1)
    assert torch.equal(cheb, cheb.T)
    with pytest.raises(ValueError):
        grid_distances((2, 2), "manhattan")


def test_gradients_finite_at_collapse_and_with_masked_zero_padding():
    regions = torch.randn(1, 1, 8).expand(2, 5, 8).clone()
    regions[1, 3:] = 0.0
    regions.requires_grad_(True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    loss = within_sample_uniformity(regions, mask=mask) + between_sample_uniformity(regions, mask=mask)
    loss = loss + alignment(regions, regions.flip(1), mask=mask)
    loss.backward()
    assert torch.isfinite(regions.grad).all()


def test_masked_mean_empty_is_zero_and_differentiable():
    values = torch.tensor([float("nan"), 1.0], requires_grad=True)
    out = masked_mean(values, torch.tensor([False, False]))
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(values.grad).all()


def test_half_precision_inputs_are_upcast():
    regions = torch.randn(2, 5, 8)
    half = within_sample_uniformity(regions.half())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(within_sample_uniformity(regions).item(), abs=1e-2)
