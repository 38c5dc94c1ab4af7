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
    local_negatives_term,
    local_within_sample_uniformity,
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
    dist = torch.cdist(cells, cells) / math.hypot(7, 7)  # normalised by sqrt(H^2 + W^2), as the reference
    assert w.shape == (49, 49)
    assert torch.allclose(w.sum(-1), torch.ones(49), atol=1e-6)
    assert (w[dist > 0.5 + 1e-6] == 0).all()
    assert (w[dist <= 0.5 - 1e-6] > 0).all()
    assert (w.diagonal() == w.max(-1).values).all()
    # ratio of weights within a row is exp(-(d1 - d0))
    assert (w[0, 1] / w[0, 0]).item() == pytest.approx(math.exp(-1 / math.hypot(7, 7)), rel=1e-5)
    assert w[0, 0].item() == pytest.approx(0.0600, abs=5e-4)  # the reference's corner self-weight
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
        parts = local_alignment_term(z, z_att, w, pool, m) + local_negatives_term(z, z_att, pool, m)
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
    parts = lovt_local_loss(*tensors, part="alignment") + lovt_local_loss(*tensors, part="negatives")
    assert parts.item() == pytest.approx(loss.item(), rel=1e-5)
    assert set(LOCAL_PARTS) == {"full", "alignment", "negatives"}
    with pytest.raises(ValueError):
        lovt_local_loss(*tensors, part="uniformity")
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
        "lovt_negatives": lovt_local_loss(r, ra, s, sa, mask, image_pool, sentence_pool, part="negatives"),
        "within_uniformity_regions": local_within_sample_uniformity(r, image_pool),
        "within_uniformity_sentences": local_within_sample_uniformity(s, sentence_pool, mask),
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


# ------------------------------------------------------------------------- LoVT's four local directions
def _hand_spatial_weights_3x3() -> list[list[float]]:
    """The reference's image weights on a 3 x 3 grid, computed with plain loops (no library code)."""
    cells = [(r, c) for r in range(3) for c in range(3)]
    diagonal = math.sqrt(3**2 + 3**2)
    rows = []
    for rn, cn in cells:
        row = []
        for rm, cm in cells:
            d = math.sqrt((rn - rm) ** 2 + (cn - cm) ** 2) / diagonal
            row.append(math.exp(-d) if d <= 0.5 else 0.0)
        total = sum(row)
        rows.append([w / total for w in row])
    return rows


def _hand_direction(queries, candidates, weights, pool, valid, tau) -> float:
    """1/B sum_i sum_n p_in (-sum_m w_nm s(q_in, c_im)/tau + log sum_m exp(s(q_in, c_im)/tau)), by loops."""
    total, samples = 0.0, 0
    for i in range(queries.shape[0]):
        items = [n for n in range(queries.shape[1]) if valid[i][n]]
        if not items:
            continue
        samples += 1
        p_sum = sum(float(pool[i][n]) for n in items)
        for n in items:
            sims = {
                m: F.cosine_similarity(queries[i, n], candidates[i, m], dim=0).item() / tau for m in items
            }
            w_sum = sum(weights[n][m] for m in items)
            align = -sum(weights[n][m] / w_sum * sims[m] for m in items)
            negatives = math.log(sum(math.exp(v) for v in sims.values()))
            total += float(pool[i][n]) / p_sum * (align + negatives)
    return total / samples


def test_four_local_directions_match_hand_computed_weights_on_a_3x3_grid():
    """image_l2att and image_att2l both use the row-normalised matrix W (row n = targets of region n);
    the report directions use the identity. Any transposition or renormalisation of W fails here."""
    hand = _hand_spatial_weights_3x3()
    torch.testing.assert_close(image_spatial_weights((3, 3)), torch.tensor(hand), rtol=0, atol=1e-7)
    w = torch.tensor(hand)
    assert not torch.allclose(w, w.T, atol=1e-3)  # rows normalised: corner, edge and centre rows differ
    assert hand[0][0] == pytest.approx(
        1
        / (
            1
            + 2 * math.exp(-1 / math.sqrt(18))
            + math.exp(-math.sqrt(2 / 18))
            + 2 * math.exp(-2 / math.sqrt(18))
        )
    )
    regions, regions_att, sentences, sentences_att, mask, image_pool, sentence_pool, grid = _lovt_inputs()
    tau = 0.3
    terms = lovt_local_terms(
        regions, regions_att, sentences, sentences_att, mask, image_pool, sentence_pool, grid=grid, tau=tau
    )
    identity = [[float(n == m) for m in range(4)] for n in range(4)]
    all_regions = [[True] * 9 for _ in range(3)]
    expected = {
        "image_l2att": _hand_direction(regions, regions_att, hand, image_pool, all_regions, tau),
        "image_att2l": _hand_direction(regions_att, regions, hand, image_pool, all_regions, tau),
        "report_l2att": _hand_direction(sentences, sentences_att, identity, sentence_pool, mask, tau),
        "report_att2l": _hand_direction(sentences_att, sentences, identity, sentence_pool, mask, tau),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5), name
    transposed = _hand_direction(
        regions_att, regions, [list(r) for r in zip(*hand)], image_pool, all_regions, tau
    )
    assert abs(transposed - expected["image_att2l"]) > 1e-3  # the old bug would be visible


# ----------------------------------------------------------------------------------- float32 losses
def _nearly_collapsed(b: int = 2, n: int = 49, d: int = 64, cosine: float = 0.999) -> torch.Tensor:
    """Regions of a sample around one direction with mean pairwise cosine about `cosine`.

    centre + eps u_n with unit u_n orthogonal to the centre and nearly orthogonal to each other:
    cos = (1 + eps^2 u_n.u_m) / (1 + eps^2), about 1 / (1 + eps^2).
    """
    g = _gen(7)
    centre = l2_normalize(torch.randn(b, 1, d, generator=g))
    noise = torch.randn(b, n, d, generator=g)
    noise = l2_normalize(noise - (noise * centre).sum(-1, keepdim=True) * centre)
    return centre + math.sqrt(1 / cosine - 1) * noise


def _mean_cosine(z: torch.Tensor) -> float:
    z = l2_normalize(z)
    sims = z @ z.transpose(-1, -2)
    n = z.shape[1]
    return ((sims.sum((-1, -2)) - n) / (n * (n - 1))).mean().item()


@pytest.mark.parametrize("regime", ["spread", "nearly_collapsed"])
def test_prior_under_cpu_bf16_autocast_equals_float32(regime):
    regions = torch.randn(2, 49, 64, generator=_gen(1)) if regime == "spread" else _nearly_collapsed()
    if regime == "nearly_collapsed":
        assert _mean_cosine(regions) == pytest.approx(0.999, abs=3e-4)

    def value_and_grad(autocast: bool):
        leaf = regions.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = within_sample_uniformity_prior(leaf)
        value.backward()
        return value.detach(), leaf.grad

    ref_value, ref_grad = value_and_grad(False)
    value, grad = value_and_grad(True)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ref_value, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5)
    if regime == "nearly_collapsed":
        assert ref_value.item() < -1e-3  # -0.0035-ish: not rounded to 0
        # the same statistic left to bf16 autocast is visibly wrong in this regime (why the fix matters)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            naive = gaussian_potential_uniformity(l2_normalize(regions)).mean()
        assert abs(naive.float().item() - ref_value.item()) > 1e-4


def test_every_loss_returns_float32_under_autocast():
    regions, regions_att, sentences, sentences_att, mask, image_pool, sentence_pool, grid = _lovt_inputs()
    args = [t.bfloat16() for t in (regions, regions_att, sentences, sentences_att)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = [
            global_infonce(args[0].mean(1), args[2].mean(1)),
            lovt_local_loss(*args, mask, image_pool, sentence_pool, grid=grid),
            local_within_sample_uniformity(args[0]),
            *(
                distribution_prior(
                    name, args[0], **({"generator": _gen(0)} if name == "sliced_wasserstein" else {})
                )
                for name in UNIFORMITY_PRIORS
            ),
        ]
    assert all(v.dtype == torch.float32 for v in values)
    plain = lovt_local_loss(*(a.float() for a in args), mask, image_pool, sentence_pool, grid=grid)
    assert values[1].item() == pytest.approx(plain.item(), rel=1e-6)


# ------------------------------------------------------------------------- within-sample uniformity
def test_within_sample_uniformity_matches_loops_and_spreads():
    z, _, pool = _local_inputs(b=2, n=5, d=6)
    mask = torch.tensor([[True, True, False, True, True], [True, True, True, True, True]])
    tau = 0.3
    total = 0.0
    for i in range(2):
        items = [n for n in range(5) if mask[i, n]]
        p_sum = sum(pool[i, n].item() for n in items)
        for n in items:
            others = [F.cosine_similarity(z[i, n], z[i, m], dim=0).item() / tau for m in items if m != n]
            total += pool[i, n].item() / p_sum * math.log(sum(math.exp(v) for v in others) / len(others))
    got = local_within_sample_uniformity(z, pool, mask, tau)
    assert got.item() == pytest.approx(total / 2, rel=1e-5)
    collapsed = torch.ones(2, 5, 6)
    assert local_within_sample_uniformity(collapsed, tau=tau).item() == pytest.approx(1 / tau, rel=1e-6)
    orthogonal = torch.eye(6)[:5].expand(2, 5, 6)
    assert local_within_sample_uniformity(orthogonal, tau=tau).item() == pytest.approx(0.0, abs=1e-6)
    single = torch.tensor([[True, False, False, False, False]] * 2)
    assert local_within_sample_uniformity(z, pool, single).item() == 0.0


# ------------------------------------------------------------------------------- ablations vs collapse
def _outputs(regions, regions_att, sentences, sentences_att):
    from cxrbench.baselines.models import PretrainOutputs

    b, n, _ = regions.shape
    s = sentences.shape[1]
    spread = torch.eye(8)[:b]
    return PretrainOutputs(
        image_global=spread,
        report_global=spread,
        image_local=regions,
        sentence_local=sentences,
        sentence_mask=torch.ones(b, s, dtype=torch.bool),
        image_pool_weights=torch.full((b, n), 1 / n),
        sentence_pool_weights=torch.full((b, s), 1 / s),
        grid=(3, 3),
        image_attended=regions_att,
        sentence_attended=sentences_att,
    )


def _local_objective(name: str, outputs) -> float:
    """Everything but the global term of a registered method (the global term is the same for all)."""
    from cxrbench.baselines import get_method
    from cxrbench.baselines.methods import method_loss

    losses = method_loss(get_method(name), outputs)
    return sum(v.item() for k, v in losses.items() if k not in ("loss", "global"))


def test_which_ablation_objectives_a_constant_output_minimises():
    """A constant projection output (its bias: every region v, every sentence v or -v) minimises the
    alignment-only objective (as its name says: nothing keeps it from collapsing) and the old
    negatives-only 'no alignment' objective (regions v, sentences -v), but none of the others."""
    b, d, tau, w = 2, 8, 0.3, 0.375
    v = torch.zeros(d)
    v[0] = 1.0
    same = _outputs(*(v.expand(b, n, d).clone() for n in (9, 9, 4, 4)))
    # regions v, sentences -v: each region's attended report is -v, each sentence's attended image is v
    opposite = _outputs(v.expand(b, 9, d), -v.expand(b, 9, d), -v.expand(b, 4, d), v.expand(b, 4, d))
    # a spread, perfectly aligned alternative: orthogonal-ish items, attended = themselves
    regions = torch.randn(b, 9, d, generator=_gen(3))
    sentences = torch.eye(d)[:4].expand(b, 4, d)
    aligned = _outputs(regions, regions, sentences, sentences)

    minimised = {}
    for name in (
        "lovt",
        "lovt_no_alignment",
        "lovt_no_uniformity",
        "lovt_alignment_prior",
        "uniformity_prior",
    ):
        constant = min(_local_objective(name, same), _local_objective(name, opposite))
        minimised[name] = constant <= _local_objective(name, aligned) + 1e-6
    assert minimised == {
        "lovt": False,
        "lovt_no_alignment": False,
        "lovt_no_uniformity": True,
        "lovt_alignment_prior": False,
        "uniformity_prior": False,
    }
    # the constant reaches the alignment-only lower bound exactly: -1/tau per direction
    assert _local_objective("lovt_no_uniformity", same) == pytest.approx(-4 * w / tau, rel=1e-5)
    # the re-defined lovt_no_alignment is at its maximum (1/tau per item) there, not its minimum
    assert _local_objective("lovt_no_alignment", same) == pytest.approx(2 * w * 2 / tau, rel=1e-5)
    # the old lovt_no_alignment (the negatives part alone) reached its lower bound by collapse:
    # -1/tau + log N per direction, below any aligned configuration
    old = {
        name: lovt_local_loss(
            out.image_local,
            out.image_attended,
            out.sentence_local,
            out.sentence_attended,
            out.sentence_mask,
            grid=(3, 3),
            part="negatives",
        ).item()
        for name, out in (("opposite", opposite), ("aligned", aligned))
    }
    bound = w * (2 * (-1 / tau + math.log(9)) + 2 * (-1 / tau + math.log(4)))
    assert old["opposite"] == pytest.approx(bound, rel=1e-5)
    assert old["opposite"] < old["aligned"]
