"""Pre-training losses on hand-built inputs: known minima, decomposition, priors, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrbench.baselines.losses import (
    LOCAL_PARTS,
    UNIFORMITY_PRIORS,
    distribution_prior,
    global_infonce,
    image_spatial_weights,
    local_alignment_term,
    local_intra_sample_contrastive,
    local_uniformity_term,
    lovt_local_loss,
    lovt_local_terms,
    moment_matching_prior,
    sliced_wasserstein_prior,
    within_sample_uniformity_prior,
)
from cxrbench.errors import CxrbenchError
from cxrbench.representation import gaussian_potential_uniformity, l2_normalize, within_sample_uniformity


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _simplex(b: int, d: int) -> torch.Tensor:
    """B unit vectors forming a regular simplex (pairwise cosine -1/(B-1)), B <= D."""
    e = torch.eye(d)[:b]
    return l2_normalize(e - e.mean(0, keepdim=True))


def _local_inputs(b: int = 3, n: int = 5, d: int = 8, seed: int = 0):
    g = _gen(seed)
    z = torch.randn(b, n, d, generator=g)
    z_att = z + 0.5 * torch.randn(b, n, d, generator=g)
    pool = torch.softmax(torch.randn(b, n, generator=g), -1)
    return z, z_att, pool


# --------------------------------------------------------------------------------------------- global
def test_global_infonce_minimum_is_aligned_simplex():
    b, d, tau = 6, 8, 0.1
    z = _simplex(b, d).double()  # float64: the loss is ~3e-5, below float32 cancellation accuracy
    analytic_min = math.log(1 + (b - 1) * math.exp(-b / ((b - 1) * tau)))
    assert global_infonce(z, z, tau).item() == pytest.approx(analytic_min, rel=1e-4)
    # orthogonal, perfectly aligned pairs are close to the minimum; shuffled pairs are far above it
    e = torch.eye(d, dtype=torch.float64)[:b]
    aligned = global_infonce(e, e, tau).item()
    assert aligned == pytest.approx(math.log(1 + (b - 1) * math.exp(-1 / tau)), rel=1e-4)
    assert analytic_min <= aligned < 1e-3
    shuffled = global_infonce(e, e.roll(1, 0), tau).item()
    assert shuffled > 5.0
    rand = torch.randn(b, d, generator=_gen(0))
    assert (
        analytic_min
        <= global_infonce(rand, rand, tau).item()
        < global_infonce(rand, rand.roll(1, 0), tau).item()
    )


def test_global_infonce_matches_formula_and_direction_weights():
    g = _gen(1)
    a, r = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    s = F.cosine_similarity(a[:, None], r[None], dim=-1) / 0.1
    l_i2r = -(s.diag() - s.logsumexp(1)).mean()
    l_r2i = -(s.diag() - s.logsumexp(0)).mean()
    assert global_infonce(a, r).item() == pytest.approx((0.75 * l_i2r + 0.25 * l_r2i).item(), rel=1e-5)
    assert global_infonce(a, r, weight_i2r=1.0).item() == pytest.approx(l_i2r.item(), rel=1e-5)
    # swapping the modalities swaps the directions
    assert global_infonce(r, a, weight_i2r=0.25).item() == pytest.approx(
        global_infonce(a, r).item(), rel=1e-5
    )


# ---------------------------------------------------------------------------------------------- local
def test_image_spatial_weights():
    w = image_spatial_weights((7, 7))
    cells = torch.stack(torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij"), -1).reshape(
        49, 2
    )
    dist = torch.cdist(cells, cells) / math.hypot(6, 6)  # normalised by the grid diagonal
    assert w.shape == (49, 49)
    assert torch.allclose(w.sum(-1), torch.ones(49), atol=1e-6)
    assert (w[dist > 0.5 + 1e-6] == 0).all()
    assert (w[dist <= 0.5 - 1e-6] > 0).all()
    assert (w.diagonal() == w.max(-1).values).all()
    # ratio of weights within a row is exp(-(d1 - d0))
    assert (w[0, 1] / w[0, 0]).item() == pytest.approx(math.exp(-1 / math.hypot(6, 6)), rel=1e-5)
    assert torch.equal(image_spatial_weights((1, 1)), torch.ones(1, 1))


def test_local_loss_perfect_alignment_is_minimal():
    b, n, d, tau = 2, 5, 8, 0.3
    z = torch.eye(d)[:n].expand(b, n, d).clone()
    expected = math.log(1 + (n - 1) * math.exp(-1 / tau))
    assert local_intra_sample_contrastive(z, z, tau=tau).item() == pytest.approx(expected, rel=1e-5)
    assert local_intra_sample_contrastive(z, z.roll(1, 1), tau=tau).item() > expected + 2.0
    rand, att, _ = _local_inputs()
    assert (
        local_intra_sample_contrastive(rand, rand).item() < local_intra_sample_contrastive(rand, att).item()
    )


def test_local_loss_matches_naive_formula():
    z, z_att, pool = _local_inputs(b=2, n=4, d=6)
    weights = torch.softmax(torch.randn(4, 4, generator=_gen(3)), -1)
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])
    tau = 0.3
    total = 0.0
    for i in range(2):
        idx = mask[i].nonzero().squeeze(1)
        p = pool[i, idx] / pool[i, idx].sum()
        w = weights[idx][:, idx]
        w = w / w.sum(-1, keepdim=True)
        s = F.cosine_similarity(z[i, idx][:, None], z_att[i, idx][None], dim=-1) / tau
        l_n = -(w * s).sum(-1) + s.logsumexp(-1)
        total += (p * l_n).sum().item()
    got = local_intra_sample_contrastive(z, z_att, weights, pool, mask, tau)
    assert got.item() == pytest.approx(total / 2, rel=1e-5)


def test_alignment_plus_uniformity_equals_local_loss_exactly():
    z, z_att, pool = _local_inputs(b=3, n=9, d=8)
    weights = image_spatial_weights((3, 3))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 4:] = False
    for w, m in [(None, None), (weights, None), (None, mask), (weights, mask)]:
        full = local_intra_sample_contrastive(z, z_att, w, pool, m)
        parts = local_alignment_term(z, z_att, w, pool, m) + local_uniformity_term(z, z_att, pool, m)
        assert torch.equal(full, parts)


def test_local_loss_ignores_masked_padding_and_is_permutation_invariant():
    z, z_att, pool = _local_inputs(b=2, n=4, d=6)
    padded_z = torch.cat([z, 100 * torch.randn(2, 3, 6, generator=_gen(5))], 1)
    padded_att = torch.cat([z_att, torch.zeros(2, 3, 6)], 1)
    padded_pool = torch.cat([pool, torch.full((2, 3), 0.7)], 1)
    mask = torch.cat([torch.ones(2, 4), torch.zeros(2, 3)], 1).bool()
    plain = local_intra_sample_contrastive(z, z_att, None, pool)
    assert local_intra_sample_contrastive(
        padded_z, padded_att, None, padded_pool, mask
    ).item() == pytest.approx(plain.item(), rel=1e-6)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = local_intra_sample_contrastive(z[:, perm], z_att[:, perm], None, pool[:, perm])
    assert permuted.item() == pytest.approx(plain.item(), rel=1e-6)


def _lovt_inputs(seed: int = 0):
    g = _gen(seed)
    b, grid, s, d = 3, (3, 3), 4, 8
    regions = torch.randn(b, 9, d, generator=g)
    regions_att = regions + torch.randn(b, 9, d, generator=g)
    sentences = torch.randn(b, s, d, generator=g)
    sentences_att = sentences + torch.randn(b, s, d, generator=g)
    sentences[2, 1:] = 0.0  # padding: sample 2 keeps a single sentence
    sentences_att[2, 1:] = 0.0
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    image_pool = torch.softmax(torch.randn(b, 9, generator=g), -1)
    sentence_pool = torch.softmax(torch.randn(b, s, generator=g).masked_fill(~mask, -1e9), -1)
    return regions, regions_att, sentences, sentences_att, mask, image_pool, sentence_pool, grid


def test_lovt_local_loss_combines_four_terms():
    *tensors, grid = _lovt_inputs()
    terms = lovt_local_terms(*tensors, grid=grid)
    assert sorted(terms) == ["image_att2l", "image_l2att", "report_att2l", "report_l2att"]
    loss = lovt_local_loss(*tensors, grid=grid)
    assert loss.item() == pytest.approx(0.375 * sum(t.item() for t in terms.values()), rel=1e-6)
    regions, regions_att, sentences, sentences_att, mask, image_pool, sentence_pool = tensors
    spatial = image_spatial_weights(grid)
    expected_image = local_intra_sample_contrastive(regions, regions_att, spatial, image_pool)
    assert terms["image_l2att"].item() == pytest.approx(expected_image.item(), rel=1e-6)
    expected_report = local_intra_sample_contrastive(sentences_att, sentences, None, sentence_pool, mask)
    assert terms["report_att2l"].item() == pytest.approx(expected_report.item(), rel=1e-6)
    # the ablation parts add up to the full loss; grid defaults to square
    parts = lovt_local_loss(*tensors, part="alignment") + lovt_local_loss(*tensors, part="uniformity")
    assert parts.item() == pytest.approx(loss.item(), rel=1e-5)
    assert set(LOCAL_PARTS) == {"full", "alignment", "uniformity"}
    with pytest.raises(ValueError):
        lovt_local_loss(*tensors, part="negatives")
    with pytest.raises(ValueError):
        lovt_local_loss(*tensors, grid=(2, 4))


# ----------------------------------------------------------------------------------------------- priors
def test_gaussian_prior_reuses_representation_statistic():
    regions = torch.randn(3, 6, 8, generator=_gen(0))
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False], [True] + [False] * 5])
    prior = within_sample_uniformity_prior(regions, mask=mask)
    assert prior.item() == pytest.approx(within_sample_uniformity(regions, mask=mask).item(), rel=1e-6)
    per_sample = gaussian_potential_uniformity(l2_normalize(regions), mask=mask)
    assert prior.item() == pytest.approx(per_sample[:2].mean().item(), rel=1e-6)
    collapsed = torch.randn(1, 1, 8).expand(2, 6, 8)
    assert within_sample_uniformity_prior(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert within_sample_uniformity_prior(torch.eye(8)[:6][None]).item() == pytest.approx(-4.0)


def test_sliced_wasserstein_prefers_spread_over_collapsed():
    b, n, d = 4, 64, 8
    spread = torch.randn(b, n, d, generator=_gen(0))  # normalised Gaussians: uniform on the sphere
    collapsed = torch.randn(b, 1, d, generator=_gen(1)).expand(b, n, d)
    low = sliced_wasserstein_prior(spread, generator=_gen(2)).item()
    high = sliced_wasserstein_prior(collapsed, generator=_gen(2)).item()
    assert 0.0 <= low < high / 5
    # reproducible with a generator
    assert sliced_wasserstein_prior(spread, generator=_gen(2)).item() == low


def test_sliced_wasserstein_ignores_masked_items():
    regions = torch.randn(2, 6, 8, generator=_gen(0))
    other = regions.clone()
    other[:, 4:] = 50 * torch.randn(2, 2, 8, generator=_gen(1))
    mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
    a = sliced_wasserstein_prior(regions, generator=_gen(3), mask=mask)
    b = sliced_wasserstein_prior(other, generator=_gen(3), mask=mask)
    assert torch.equal(a, b)


def test_moment_matching_closed_form():
    b, n, d = 2, 5, 6
    regions = torch.randn(b, n, d, generator=_gen(0), dtype=torch.float64)
    x = l2_normalize(regions)
    expected = []
    for i in range(b):
        mu = x[i].mean(0)
        cov = (x[i] - mu).T @ (x[i] - mu) / n
        expected.append(mu.pow(2).sum() + (cov - torch.eye(d, dtype=torch.float64) / d).pow(2).sum())
    assert moment_matching_prior(regions).item() == pytest.approx(
        torch.stack(expected).mean().item(), rel=1e-10
    )
    collapsed = torch.randn(1, 1, d).expand(b, n, d)
    assert moment_matching_prior(collapsed).item() == pytest.approx(1 + 1 / d, rel=1e-5)
    assert moment_matching_prior(torch.eye(d)[None]).item() < moment_matching_prior(collapsed).item()


@pytest.mark.parametrize("name", sorted(UNIFORMITY_PRIORS))
def test_priors_are_permutation_invariant(name):
    regions = torch.randn(3, 6, 8, generator=_gen(0))
    perm = torch.tensor([3, 5, 0, 1, 4, 2])
    kwargs = {"generator": _gen(7)} if name == "sliced_wasserstein" else {}
    before = distribution_prior(name, regions, **kwargs)
    kwargs = {"generator": _gen(7)} if name == "sliced_wasserstein" else {}
    after = distribution_prior(name, regions[:, perm], **kwargs)
    assert after.item() == pytest.approx(before.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(UNIFORMITY_PRIORS))
def test_minimising_each_prior_spreads_regions_within_samples(name):
    start = torch.randn(2, 1, 8, generator=_gen(0)) + 0.05 * torch.randn(2, 12, 8, generator=_gen(1))
    regions = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([regions], lr=0.05)
    g = _gen(2)
    for _ in range(60):
        opt.zero_grad()
        kwargs = {"generator": g} if name == "sliced_wasserstein" else {}
        distribution_prior(name, regions, **kwargs).backward()
        opt.step()
    assert within_sample_uniformity(regions.detach()) < within_sample_uniformity(start) - 1.0


def test_distribution_prior_registry():
    assert set(UNIFORMITY_PRIORS) >= {"gaussian_potential", "sliced_wasserstein", "moment_matching"}
    with pytest.raises(CxrbenchError, match="available"):
        distribution_prior("gaussian", torch.randn(2, 3, 4))


# -------------------------------------------------------------------------------------------- gradients
def test_all_losses_have_finite_gradients_with_dropped_sentences():
    regions, regions_att, sentences, sentences_att, mask, image_pool, sentence_pool, grid = _lovt_inputs()
    mask = mask.clone()
    mask[1] = False  # a report whose sentences were all dropped
    z_img = regions.mean(1)
    z_rep = sentences.sum(1)
    leaves = [
        t.clone().requires_grad_(True) for t in (regions, regions_att, sentences, sentences_att, z_img, z_rep)
    ]
    r, ra, s, sa, zi, zr = leaves
    losses = {
        "global": global_infonce(zi, zr),
        "lovt": lovt_local_loss(r, ra, s, sa, mask, image_pool, sentence_pool, grid=grid),
        "lovt_alignment": lovt_local_loss(r, ra, s, sa, mask, image_pool, sentence_pool, part="alignment"),
        "lovt_uniformity": lovt_local_loss(r, ra, s, sa, mask, image_pool, sentence_pool, part="uniformity"),
    }
    for name in UNIFORMITY_PRIORS:
        kwargs = {"generator": _gen(0)} if name == "sliced_wasserstein" else {}
        losses[f"{name}_regions"] = distribution_prior(name, r, **kwargs)
        losses[f"{name}_sentences"] = distribution_prior(name, s, mask=mask, **kwargs)
    collapsed = torch.ones(2, 4, 8, requires_grad=True)
    for name in UNIFORMITY_PRIORS:
        kwargs = {"generator": _gen(0)} if name == "sliced_wasserstein" else {}
        losses[f"{name}_collapsed"] = distribution_prior(name, collapsed, **kwargs)
    for name, loss in losses.items():
        assert torch.isfinite(loss), name
        for leaf in [*leaves, collapsed]:
            leaf.grad = None
        loss.backward()
        for leaf in [*leaves, collapsed]:
            if leaf.grad is not None:
                assert torch.isfinite(leaf.grad).all(), name
    # nothing defined at all: the prior is 0, not NaN, and still backpropagates
    empty = torch.randn(2, 3, 4, requires_grad=True)
    none_valid = torch.zeros(2, 3, dtype=torch.bool)
    for name in UNIFORMITY_PRIORS:
        value = distribution_prior(name, empty, mask=none_valid)
        value.backward()
        assert value.item() == 0.0
        assert torch.isfinite(empty.grad).all()
