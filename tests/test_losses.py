"""Shared losses against explicit per-sample loops, hand-computed golden values, and batch permutations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vireid.losses import (
    adaptive_weighted_triplet,
    batch_hard_triplet,
    cross_entropy_ls,
    kl_div_temperature,
    logit_standardize,
    pairwise_euclidean,
    symmetric_kl,
    weighted_regularized_triplet,
)

SEEDS = [0, 1, 2]

# ---------------------------------------------------------------------------------------------------------
# Plain references: one anchor at a time, Python lists and math, float64.
# ---------------------------------------------------------------------------------------------------------


def ref_dist(f: torch.Tensor) -> list[list[float]]:
    rows = f.double().tolist()
    out = []
    for a in rows:
        line = []
        for b in rows:
            sq = sum(x * x for x in a) + sum(y * y for y in b) - 2 * sum(x * y for x, y in zip(a, b))
            line.append(math.sqrt(max(sq, 1e-12)))
        out.append(line)
    return out


def ref_triplet(f, y, margin):
    d, y = ref_dist(f), y.tolist()
    losses = []
    for i in range(len(y)):
        pos = [d[i][j] for j in range(len(y)) if y[j] == y[i]]
        neg = [d[i][j] for j in range(len(y)) if y[j] != y[i]]
        losses.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(losses) / len(losses)


def ref_soft_distances(f, y, alpha=1.0):
    d, y = ref_dist(f), y.tolist()
    out = []
    for i in range(len(y)):
        pos = [d[i][j] for j in range(len(y)) if y[j] == y[i]]
        neg = [d[i][j] for j in range(len(y)) if y[j] != y[i]]
        zp = sum(math.exp(alpha * v) for v in pos)
        zn = sum(math.exp(-alpha * v) for v in neg)
        d_pos = sum(math.exp(alpha * v) / zp * v for v in pos)
        d_neg = sum(math.exp(-alpha * v) / zn * v for v in neg)
        out.append((d_pos, d_neg))
    return out


def ref_wrt(f, y):
    terms = [math.log1p(math.exp(dp - dn)) for dp, dn in ref_soft_distances(f, y)]
    return sum(terms) / len(terms)


def ref_adp(f, y, alpha, gamma, square):
    terms = []
    for dp, dn in ref_soft_distances(f, y, alpha):
        delta = dp - dn
        if square == 0:
            terms.append(math.log1p(math.exp(gamma * delta)))
        else:
            s = min(gamma * delta * delta, 88.0)
            terms.append(math.log1p(math.exp(s if delta > 0 else -s)))
    return sum(terms) / len(terms)


def ref_softmax(row, t=1.0):
    m = max(row)
    e = [math.exp((v - m) / t) for v in row]
    z = sum(e)
    return [v / z for v in e]


def ref_kl_rows(student, teacher, t):
    out = []
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist()):
        p, q = ref_softmax(s_row, t), ref_softmax(t_row, t)
        out.append(t * t * sum(qc * (math.log(qc) - math.log(pc)) for pc, qc in zip(p, q)))
    return out


def batch(seed, n_ids=4, per_id=3, dim=6, scale=1.0, dtype=torch.float64):
    """Random features (float64 by default, so that comparisons with the references are tight) and labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    labels = labels[torch.randperm(len(labels), generator=g)]
    feats = torch.randn(len(labels), dim, generator=g, dtype=dtype) * scale
    return feats, labels


# ---------------------------------------------------------------------------------------------------------
# Equivalence with the references
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_distances_match_reference(seed):
    f, _ = batch(seed, dtype=torch.float32)
    got, ref = pairwise_euclidean(f).double(), torch.tensor(ref_dist(f), dtype=torch.float64)
    off = ~torch.eye(len(f), dtype=torch.bool)
    torch.testing.assert_close(got[off], ref[off], rtol=1e-5, atol=1e-5)
    # On the diagonal float32 round-off of |f|^2 + |f|^2 - 2 f.f (about 1e-6) survives the square root.
    assert got.diagonal().max() < 3e-3


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin", [0.3, 1.3])
def test_triplet_matches_reference(seed, margin):
    f, y = batch(seed, scale=0.5)
    assert batch_hard_triplet(f, y, margin).item() == pytest.approx(ref_triplet(f, y, margin), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_wrt_matches_reference(seed):
    f, y = batch(seed)
    assert weighted_regularized_triplet(f, y).item() == pytest.approx(ref_wrt(f, y), rel=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("alpha", "gamma", "square"), [(1, 1, 1), (1, 1, 0), (2.0, 0.5, 1), (0.5, 3.0, 0)])
def test_adp_matches_reference(seed, alpha, gamma, square):
    f, y = batch(seed)
    got = adaptive_weighted_triplet(f, y, alpha=alpha, gamma=gamma, square=square).item()
    assert got == pytest.approx(ref_adp(f, y, alpha, gamma, square), rel=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_float32_losses_agree_with_reference_to_float32_round_off(seed):
    # In float32 the diagonal distance is sqrt of round-off (~1e-3, see above) instead of 1e-6; it enters
    # WRT/ADP through the self term of P(i), which moves the loss by ~1e-5 relative (the release too).
    f, y = batch(seed, dtype=torch.float32)
    assert weighted_regularized_triplet(f, y).item() == pytest.approx(ref_wrt(f, y), rel=1e-4)
    assert adaptive_weighted_triplet(f, y).item() == pytest.approx(ref_adp(f, y, 1, 1, 1), rel=1e-4)
    assert batch_hard_triplet(f, y).item() == pytest.approx(ref_triplet(f, y, 0.3), rel=1e-5)
    half = adaptive_weighted_triplet(f.to(torch.bfloat16), y)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(ref_adp(f, y, 1, 1, 1), rel=0.05)


def test_adp_square_cap_at_88():
    # Far-apart identities with tight clusters: Delta^2 exceeds 88, so each term is log(1 + exp(-88)).
    f = torch.tensor([[0.0], [0.1], [20.0], [20.1]])
    y = torch.tensor([0, 0, 1, 1])
    assert adaptive_weighted_triplet(f, y).item() == pytest.approx(math.log1p(math.exp(-88.0)), rel=1e-4)
    assert adaptive_weighted_triplet(f, y).item() == pytest.approx(ref_adp(f, y, 1, 1, 1), rel=1e-4)


def test_adp_with_unit_parameters_and_square_0_is_wrt():
    f, y = batch(5)
    torch.testing.assert_close(adaptive_weighted_triplet(f, y, square=0), weighted_regularized_triplet(f, y))


@pytest.mark.parametrize("seed", SEEDS)
def test_wrt_equals_release_form_up_to_its_1e6(seed):
    # The release stabilises with the max of the masked distance matrix and adds 1e-6 to each denominator.
    f, y = batch(seed)
    dist = pairwise_euclidean(f).double()
    pos = (y[:, None] == y[None, :]).double()
    neg = 1 - pos

    def release_weights(d, mask):
        m = (d * mask).max(dim=1, keepdim=True).values
        e = torch.exp(d - m)
        return e * mask / ((e * mask).sum(dim=1, keepdim=True) + 1e-6)

    d_ap, d_an = dist * pos, dist * neg
    fp = (d_ap * release_weights(d_ap, pos)).sum(1)
    cn = (d_an * release_weights(-d_an, neg)).sum(1)
    release = F.softplus(fp - cn).mean().item()
    assert weighted_regularized_triplet(f, y).item() == pytest.approx(release, abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_cross_entropy_label_smoothing_matches_smoothed_target_formula(seed, eps):
    g = torch.Generator().manual_seed(seed)
    logits, target = torch.randn(5, 7, generator=g), torch.randint(0, 7, (5,), generator=g)
    losses = []
    for row, t in zip(logits.double().tolist(), target.tolist()):
        p = ref_softmax(row)
        smoothed = [(1 - eps) * (c == t) + eps / len(row) for c in range(len(row))]
        losses.append(-sum(q * math.log(pc) for q, pc in zip(smoothed, p)))
    assert cross_entropy_ls(logits, target, eps).item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_with_temperature_matches_reference(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(4, 5, generator=g) * 2, torch.randn(4, 5, generator=g) * 2
    rows = ref_kl_rows(s, t, temperature)
    per_sample = kl_div_temperature(s, t, temperature, reduction="none")
    torch.testing.assert_close(per_sample.double(), torch.tensor(rows, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert kl_div_temperature(s, t, temperature).item() == pytest.approx(sum(rows) / 4, rel=1e-5)
    assert kl_div_temperature(s, t, temperature, reduction="sum").item() == pytest.approx(sum(rows), rel=1e-5)
    # PyTorch's own KL (input log-probs, target probs, batchmean) agrees.
    torch_kl = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
    assert kl_div_temperature(s, t, temperature).item() == pytest.approx(torch_kl.item() * temperature**2, rel=1e-5)
    sym = symmetric_kl(s, t).item()
    assert sym == pytest.approx((sum(ref_kl_rows(s, t, 1.0)) + sum(ref_kl_rows(t, s, 1.0))) / 4, rel=1e-5)
    assert symmetric_kl(t, s).item() == pytest.approx(sym, rel=1e-6)


def test_kl_target_eps_reproduces_caj_formula():
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    expected = 0.0
    for s_row, t_row in zip(s.double().tolist(), t.double().tolist()):
        p, q = ref_softmax(s_row, 3.0), [v + 1e-7 for v in ref_softmax(t_row, 3.0)]
        expected += 9.0 * sum(qc * (math.log(qc) - math.log(pc)) for pc, qc in zip(p, q))
    got = kl_div_temperature(s, t, 3.0, target_eps=1e-7).item()
    assert got == pytest.approx(expected / 3, rel=1e-5)


def test_logit_standardize_reference():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, -1.0]])
    for row, out in zip(x.tolist(), logit_standardize(x).tolist()):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))  # unbiased
        assert out == pytest.approx([(v - mean) / (std + 1e-7) for v in row], rel=1e-6)
    # Shift and scale of a row do not matter.
    torch.testing.assert_close(logit_standardize(3 * x + 7), logit_standardize(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Golden values worked out by hand
# ---------------------------------------------------------------------------------------------------------


def test_triplet_golden_value():
    # Points (0,0), (3,0), (0,4) of identity 0 and (3,4) of identity 1; distances 3, 4, 5 (3-4-5 triangles).
    # Anchor 0: d+ = max(3, 4) = 4, d- = 5 -> 0;  anchor 1: d+ = max(3, 5) = 5, d- = 4 -> 1.3;
    # anchor 2: d+ = max(4, 5) = 5, d- = 3 -> 2.3;  anchor 3: d+ = d_33 = 1e-6, d- = 3 -> 0. Mean = 0.9.
    f = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [3.0, 4.0]])
    y = torch.tensor([0, 0, 0, 1])
    assert batch_hard_triplet(f, y, margin=0.3).item() == pytest.approx(0.9, abs=1e-6)


def test_cross_entropy_label_smoothing_golden_value():
    # Probabilities (1/4, 1/4, 1/2), target 2, eps 0.3, C = 3: smoothed target (0.1, 0.1, 0.8).
    # Loss = 0.1 ln 4 + 0.1 ln 4 + 0.8 ln 2 = 1.2 ln 2.
    logits = torch.log(torch.tensor([[1.0, 1.0, 2.0]]))
    assert cross_entropy_ls(logits, torch.tensor([2]), 0.3).item() == pytest.approx(1.2 * math.log(2), rel=1e-6)
    assert cross_entropy_ls(logits, torch.tensor([2])).item() == pytest.approx(math.log(2), rel=1e-6)


def test_wrt_golden_value():
    # 1-D points 0, 1 (identity 0) and 3 (identity 1). Anchor 0: P = {0, 1} with d = (0, 1), so
    # D+ = e/(1+e); D- = 3. Anchor 1: D+ = e/(1+e), D- = 2. Anchor 2: D+ = 0, N = {0, 1} with d = (3, 2),
    # weights softmax(-3, -2) = (1, e)/(1+e), so D- = (3 + 2e)/(1+e). (d_ii = 1e-6 instead of 0.)
    e = math.e
    dp = e / (1 + e)
    expected = (
        math.log1p(math.exp(dp - 3)) + math.log1p(math.exp(dp - 2)) + math.log1p(math.exp(-(3 + 2 * e) / (1 + e)))
    ) / 3
    f = torch.tensor([[0.0], [1.0], [3.0]])
    assert weighted_regularized_triplet(f, torch.tensor([0, 0, 1])).item() == pytest.approx(expected, abs=1e-5)


def test_kl_golden_value():
    # softmax(0, 0) = (1/2, 1/2) against softmax(0, ln 3) = (1/4, 3/4): KL(q || p) = 1/4 ln(1/2) + 3/4 ln(3/2).
    s, t = torch.zeros(1, 2), torch.tensor([[0.0, math.log(3.0)]])
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_div_temperature(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert kl_div_temperature(s, s).item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------------------------------------------
# Properties: batch order, gradients, degenerate batches
# ---------------------------------------------------------------------------------------------------------

METRIC_LOSSES = {
    "triplet": lambda f, y: batch_hard_triplet(f, y, 0.3),
    "wrt": weighted_regularized_triplet,
    "adp": adaptive_weighted_triplet,
    "adp_linear": lambda f, y: adaptive_weighted_triplet(f, y, alpha=2.0, gamma=0.5, square=0),
}


@pytest.mark.parametrize("name", list(METRIC_LOSSES))
@pytest.mark.parametrize("seed", SEEDS)
def test_metric_losses_are_invariant_to_batch_order_and_have_finite_gradients(name, seed):
    loss_fn = METRIC_LOSSES[name]
    f, y = batch(seed)
    f.requires_grad_(True)
    loss = loss_fn(f, y)
    (grad,) = torch.autograd.grad(loss, f)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 100))
    assert loss_fn(f[perm], y[perm]).item() == pytest.approx(loss.item(), rel=1e-5)
    # Duplicated rows (distance exactly 0 off the diagonal) keep the gradient finite.
    dup = torch.cat([f, f[:2]])
    (grad_dup,) = torch.autograd.grad(loss_fn(dup, torch.cat([y, y[:2]])), dup)
    assert torch.isfinite(grad_dup).all()


def test_identity_and_kl_losses_are_invariant_to_batch_order():
    g = torch.Generator().manual_seed(3)
    logits, other, target = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.arange(6) % 5
    perm = torch.randperm(6, generator=g)
    for fn in (
        lambda a, b, t: cross_entropy_ls(a, t, 0.1),
        lambda a, b, t: kl_div_temperature(a, b, 4.0),
        lambda a, b, t: symmetric_kl(a, b),
    ):
        assert fn(logits[perm], other[perm], target[perm]).item() == pytest.approx(fn(logits, other, target).item())
    logits.requires_grad_(True)
    other.requires_grad_(True)
    ga, gb = torch.autograd.grad(symmetric_kl(logits, other), (logits, other))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all() and gb.abs().sum() > 0  # mutual: both sides


@pytest.mark.parametrize("name", list(METRIC_LOSSES))
def test_anchors_without_negatives_are_left_out(name):
    loss_fn = METRIC_LOSSES[name]
    f = torch.randn(4, 3, requires_grad=True)
    single = loss_fn(f, torch.zeros(4, dtype=torch.long))
    assert single.item() == 0.0
    single.backward()
    assert torch.isfinite(f.grad).all()
    # One lone identity among others: the lone anchor still has negatives and positives (itself).
    y = torch.tensor([0, 0, 0, 1])
    assert math.isfinite(loss_fn(f, y).item())


def test_argument_errors():
    with pytest.raises(ValueError, match="square"):
        adaptive_weighted_triplet(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), square=2)
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy_ls(torch.randn(2, 3), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="reduction"):
        kl_div_temperature(torch.randn(2, 3), torch.randn(2, 3), reduction="mean")
    with pytest.raises(ValueError, match="temperature"):
        kl_div_temperature(torch.randn(2, 3), torch.randn(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        batch_hard_triplet(torch.randn(4, 2), torch.zeros(4, 1, dtype=torch.long))
