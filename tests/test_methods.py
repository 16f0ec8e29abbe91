"""The distillation methods of issue 20 (DKD, DIST, NST, VID, PKT, CC) against the papers'
formulas written out here with numpy loops, their invariants, float64 gradchecks, and their
wiring in ``HybridLoss`` (DKD's warm-up, VID's variances, both kept in ``state_dict``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import workbench.distill as distill
from tests.test_losses import _adapters, _batch  # the hybrid loss's batch and adapters
from workbench.config.loss_terms import LossWeights
from workbench.distill.feature import (
    VIDVariance,
    feature_channels,
    feature_loss,
    uses_adapter,
    vid_nll,
)
from workbench.distill.hybrid import HybridLoss
from workbench.distill.relation import relation_loss
from workbench.distill.response import dist_relations, dkd_terms, response_loss
from workbench.errors import ConfigError, IncompatibleModelsError, UnknownNameError


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(p[k] * math.log(p[k] / q[k]) for k in range(len(p))))


def _logits(b: int = 6, k: int = 7, seed: int = 0):
    """Student and teacher logits and labels that are never the teacher's top class (so a mask
    built from anything but the labels gives other values)."""
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(b, k, generator=g, dtype=torch.float64)
    t = 3 * torch.randn(b, k, generator=g, dtype=torch.float64)
    labels = (t.argmax(dim=1) + 1 + torch.randint(0, k - 1, (b,), generator=g)) % k
    assert (labels != t.argmax(dim=1)).all()
    return s, t, labels


# ------------------------------------------------------------------------------------ DKD
def _np_dkd_terms(s, t, labels, temperature):
    """Per sample: TCKD = KL(b_t || b_s) of the binary (target, rest) split, NCKD = KL of the
    distributions renormalised over the non-target classes (Zhao et al. 2022, eq. 1-4)."""
    zs, zt, y = _np(s) / temperature, _np(t) / temperature, labels.tolist()
    tckd, nckd, pt = [], [], []
    for i in range(zs.shape[0]):
        p_s, p_t = _softmax(zs[i]), _softmax(zt[i])
        b_s = np.array([p_s[y[i]], 1 - p_s[y[i]]])
        b_t = np.array([p_t[y[i]], 1 - p_t[y[i]]])
        others = [k for k in range(zs.shape[1]) if k != y[i]]
        hat_s = p_s[others] / p_s[others].sum()
        hat_t = p_t[others] / p_t[others].sum()
        tckd.append(_kl(b_t, b_s))
        nckd.append(_kl(hat_t, hat_s))
        pt.append(p_t[y[i]])
    return np.array(tckd), np.array(nckd), np.array(pt)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_matches_the_papers_formula_with_its_defaults(temperature):
    s, t, labels = _logits()
    tckd, nckd, _ = _np_dkd_terms(s, t, labels, temperature)
    expected = temperature**2 * np.mean(1.0 * tckd + 8.0 * nckd)  # alpha = 1, beta = 8
    value = response_loss(s, t, temperature, kind="dkd", labels=labels)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    custom = response_loss(s, t, temperature, kind="dkd", labels=labels, alpha=0.5, beta=2.0)
    assert custom.item() == pytest.approx(
        temperature**2 * np.mean(0.5 * tckd + 2.0 * nckd), rel=1e-9
    )


def test_kd_is_tckd_plus_one_minus_p_target_times_nckd_per_sample():
    s, t, labels = _logits(b=8, k=5, seed=3)
    temperature = 4.0
    tckd, nckd, p_target = dkd_terms(s, t, labels, temperature)
    zs, zt = _np(s) / temperature, _np(t) / temperature
    for i in range(8):
        kd_i = _kl(_softmax(zt[i]), _softmax(zs[i]))
        assert p_target[i].item() == pytest.approx(_softmax(zt[i])[labels[i]], rel=1e-12)
        decoupled = tckd[i].item() + (1 - p_target[i].item()) * nckd[i].item()
        assert decoupled == pytest.approx(kd_i, rel=1e-10, abs=1e-14)
    kd = response_loss(s, t, temperature)  # positional temperature, kind "kd"
    beta_i = (1 - p_target) * nckd
    assert kd.item() == pytest.approx((temperature**2 * (tckd + beta_i)).mean().item(), rel=1e-10)


def test_dkd_terms_match_numpy_and_dkd_needs_labels():
    s, t, labels = _logits(seed=1)
    tckd, nckd, pt = dkd_terms(s, t, labels, 2.0)
    e_tckd, e_nckd, e_pt = _np_dkd_terms(s, t, labels, 2.0)
    np.testing.assert_allclose(_np(tckd), e_tckd, rtol=1e-9)
    np.testing.assert_allclose(_np(nckd), e_nckd, rtol=1e-9)
    np.testing.assert_allclose(_np(pt), e_pt, rtol=1e-12)
    with pytest.raises(ValueError, match="pass labels"):
        response_loss(s, t, 4.0, kind="dkd")
    with pytest.raises(UnknownNameError, match="unknown response kind 'dk'"):
        response_loss(s, t, 4.0, kind="dk")


# ----------------------------------------------------------------------------------- DIST
def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize(("tau", "beta", "gamma"), [(4.0, 1.0, 1.0), (1.0, 2.0, 0.5)])
def test_dist_matches_the_papers_formula(tau, beta, gamma):
    s, t, _ = _logits(b=6, k=5, seed=2)
    p_s = np.stack([_softmax(z) for z in _np(s) / tau])
    p_t = np.stack([_softmax(z) for z in _np(t) / tau])
    inter = 1 - np.mean([_pearson(p_s[i], p_t[i]) for i in range(6)])
    intra = 1 - np.mean([_pearson(p_s[:, k], p_t[:, k]) for k in range(5)])
    expected = beta * tau**2 * inter + gamma * tau**2 * intra
    params = {} if (beta, gamma) == (1.0, 1.0) else {"beta": beta, "gamma": gamma}
    value = response_loss(s, t, tau, kind="dist", **params)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dist_is_zero_for_identical_logits_and_ignores_affine_maps_of_probabilities():
    s, t, _ = _logits(seed=4)
    # 0 up to the reference's eps = 1e-8 beside the norms' product (~1e-3 for probabilities)
    same = response_loss(t, t.clone(), 4.0, kind="dist").item()
    assert same == pytest.approx(0.0, abs=1e-4)
    assert same < 1e-4 * response_loss(s, t, 4.0, kind="dist").item()
    p_s, p_t = F.softmax(s, dim=1), F.softmax(t, dim=1)
    inter, intra = dist_relations(p_s, p_t)
    for a, b in [(3.0, 0.5), (0.2, -7.0)]:
        for moved in (dist_relations(a * p_s + b, p_t), dist_relations(p_s, a * p_t + b)):
            assert moved[0].item() == pytest.approx(inter.item(), rel=1e-6)
            assert moved[1].item() == pytest.approx(intra.item(), rel=1e-6)
    flipped = dist_relations(-p_s, p_t)  # a < 0 is not allowed: the correlation changes sign
    assert flipped[0].item() == pytest.approx(2 - inter.item(), rel=1e-6)


# ------------------------------------------------------------------------------------ NST
def _np_nst(s: np.ndarray, t: np.ndarray) -> float:
    """MMD^2 with k(x, y) = (x . y)^2 between the l2-normalised channel maps of each sample,
    mean over the batch (Huang and Wang 2017, eq. 10)."""
    total = 0.0
    for i in range(s.shape[0]):
        fs = [c.ravel() / np.linalg.norm(c) for c in s[i]]
        ft = [c.ravel() / np.linalg.norm(c) for c in t[i]]

        def k_mean(xs, ys):
            return np.mean([float(x @ y) ** 2 for x in xs for y in ys])

        total += k_mean(fs, fs) + k_mean(ft, ft) - 2 * k_mean(fs, ft)
    return total / s.shape[0]


def test_nst_matches_the_polynomial_kernel_mmd():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    t = torch.randn(3, 6, 5, 5, generator=g, dtype=torch.float64)
    assert feature_loss(s, t, "nst").item() == pytest.approx(_np_nst(_np(s), _np(t)), rel=1e-9)
    # A student map twice the teacher's size is average-pooled over 2x2 blocks first.
    big = torch.randn(3, 4, 10, 10, generator=g, dtype=torch.float64)
    pooled = _np(big).reshape(3, 4, 5, 2, 5, 2).mean(axis=(3, 5))
    assert feature_loss(big, t, "nst").item() == pytest.approx(_np_nst(pooled, _np(t)), rel=1e-9)


def test_nst_is_zero_for_identical_maps_and_uses_the_students_own_maps():
    f = torch.randn(4, 5, 3, 3)
    assert feature_loss(f, f.clone(), "nst").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(2.5 * f, f, "nst").item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert not uses_adapter("nst") and uses_adapter("vid")
    with pytest.raises(IncompatibleModelsError, match="4-D feature maps"):
        feature_loss(torch.randn(4, 5), torch.randn(4, 5), "nst")


# ------------------------------------------------------------------------------------ VID
def test_vid_variance_starts_at_five_and_the_nll_matches_the_gaussian():
    v = VIDVariance(3)
    np.testing.assert_allclose(_np(v()), [5.0, 5.0, 5.0], rtol=1e-6)
    with torch.no_grad():
        v.alpha.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    var = np.log1p(np.exp([-1.0, 0.0, 2.0])) + 1e-5  # softplus + eps
    g = torch.Generator().manual_seed(0)
    mu, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    m, tt = _np(mu), _np(t)
    nll = [
        0.5 * (math.log(var[c]) + (tt[b, c, h, w] - m[b, c, h, w]) ** 2 / var[c])
        for b in range(2)
        for c in range(3)
        for h in range(4)
        for w in range(4)
    ]
    assert vid_nll(mu, t, v()).item() == pytest.approx(np.mean(nll), rel=1e-5)
    assert feature_loss(mu, t, "vid", variance=v()).item() == pytest.approx(np.mean(nll), rel=1e-5)
    # [B, D] features: one variance per feature; [B, T, D]: per last dimension.
    assert feature_channels((3, 4, 4)) == 3 and feature_channels((7, 9)) == 9
    assert feature_channels((5,)) == 5
    with pytest.raises(IncompatibleModelsError, match="3 variances for a teacher feature of 4"):
        vid_nll(torch.randn(2, 4), torch.randn(2, 4), v())


@pytest.mark.parametrize(("residual", "sign"), [(4.0, -1.0), (0.5, 1.0)])
def test_vid_gradient_moves_the_variance_towards_the_squared_residual(residual, sign):
    """d NLL / d sigma^2 = (sigma^2 - r^2) / (2 sigma^4): a residual r^2 above the variance (5)
    pulls it up (negative gradient on alpha), one below pushes it down."""
    v = VIDVariance(2)
    mu = torch.zeros(3, 2, 2, 2)
    target = torch.full((3, 2, 2, 2), residual)
    vid_nll(mu, target, v()).backward()
    assert (torch.sign(v.alpha.grad) == sign).all()


# ------------------------------------------------------------------------------------ PKT
def _np_pkt(s: np.ndarray, t: np.ndarray, eps: float = 1e-7) -> float:
    def probs(f):
        n = f.shape[0]
        k = np.array(
            [
                [
                    (f[i] @ f[j] / (np.linalg.norm(f[i]) * np.linalg.norm(f[j])) + 1) / 2
                    for j in range(n)
                ]
                for i in range(n)
            ]
        )
        return k / k.sum(axis=1, keepdims=True)

    p_s, p_t = probs(s), probs(t)
    n = s.shape[0]
    # KL(teacher || student) of each row, summed, over n^2 entries (the authors' torch.mean).
    return sum(p_t[i, j] * math.log(p_t[i, j] / p_s[i, j]) for i in range(n) for j in range(n)) / (
        n * n
    )


def test_pkt_matches_the_kl_of_the_conditional_probabilities():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.randn(5, 9, generator=g, dtype=torch.float64)
    expected = _np_pkt(_np(s).reshape(5, -1), _np(t))
    assert relation_loss(s, t, "pkt").item() == pytest.approx(expected, rel=1e-5)
    assert relation_loss(t, t.clone(), "pkt").item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------- CC
def _np_cc_matrix(f: np.ndarray, gamma: float, order: int) -> np.ndarray:
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    n = f.shape[0]
    c = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            x = float(f[i] @ f[j])
            c[i, j] = math.exp(-2 * gamma) * sum(
                (2 * gamma) ** p / math.factorial(p) * x**p for p in range(order + 1)
            )
    return c


def test_cc_matches_the_taylor_expanded_rbf_correlation():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 6, generator=g, dtype=torch.float64)
    t = torch.randn(5, 2, 2, 2, generator=g, dtype=torch.float64)
    diff = _np_cc_matrix(_np(s), 0.4, 2) - _np_cc_matrix(_np(t).reshape(5, -1), 0.4, 2)
    assert relation_loss(s, t, "cc").item() == pytest.approx((diff**2).sum() / 25, rel=1e-9)
    assert relation_loss(t, t.clone(), "cc").item() == pytest.approx(0.0, abs=1e-15)
    # A long expansion is the Gaussian RBF exp(-gamma |f_i - f_j|^2) of the unit features.
    u = _np(F.normalize(s, dim=1))
    rbf = np.exp(-0.4 * ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(_np_cc_matrix(_np(s), 0.4, 20), rbf, rtol=1e-12)
    long = relation_loss(s, t, "cc", order=20).item()
    rbf_t = _np(F.normalize(t.reshape(5, -1), dim=1))
    rbf_t = np.exp(-0.4 * ((rbf_t[:, None, :] - rbf_t[None, :, :]) ** 2).sum(-1))
    assert long == pytest.approx(((rbf - rbf_t) ** 2).sum() / 25, rel=1e-9)


# ------------------------------------------------------------------------------- gradchecks
def _double(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_gradchecks_in_float64():
    s, t, labels = _logits(b=4, k=5)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: response_loss(z, t, 4.0, kind="dkd", labels=labels), (s,)
    )
    assert torch.autograd.gradcheck(lambda z: response_loss(z, t, 2.0, kind="dist"), (s,))
    ft = torch.randn(4, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: relation_loss(f, ft, "pkt"), (_double(4, 5),))
    assert torch.autograd.gradcheck(lambda f: relation_loss(f, ft, "cc"), (_double(4, 5),))
    mt = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: feature_loss(f, mt, "nst"), (_double(2, 2, 3, 3),))
    alpha = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    mu, vt = _double(2, 2, 2), torch.randn(2, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, a: vid_nll(m, vt, F.softplus(a) + 1e-5), (mu, alpha))


# --------------------------------------------------------------------------------- the hybrid


def test_dkd_warmup_ramps_the_response_term_linearly_over_the_epochs():
    logits, targets, t_logits, _, _ = _batch()
    hybrid = HybridLoss(
        LossWeights(1.0, 1.0, 0.0, 0.0),
        temperature=4.0,
        response_kind="dkd",
        response_params={"alpha": 1.0, "beta": 8.0},
        warmup_epochs=4,
    )
    full = response_loss(logits, t_logits, 4.0, kind="dkd", labels=targets).item()
    factors = []
    for _ in range(6):
        out = hybrid(logits, targets, t_logits)
        factors.append(out["response"].item() / full)
        hybrid.epoch_end(0.5)
    # mdistiller: min(epoch / warmup, 1) with epochs counted from 1
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rel=1e-6)
    assert int(hybrid.state_dict()["epochs_done"]) == 6
    assert "response_kind=dkd(alpha=1, beta=8), warmup_epochs=4" in repr(hybrid)
    plain = HybridLoss(LossWeights(1.0, 1.0, 0.0, 0.0), temperature=4.0, response_kind="dist")
    assert "epochs_done" not in plain.state_dict()
    out = plain(logits, targets, t_logits)
    assert out["response"].item() == pytest.approx(
        response_loss(logits, t_logits, 4.0, kind="dist").item(), rel=1e-6
    )


def _vid_hybrid() -> HybridLoss:
    return HybridLoss(
        LossWeights(0.5, 0.5, 0.5, 0.0),
        temperature=4.0,
        feature_kind="vid",
        adapters=_adapters(),
        teacher_channels=(6, 5),
        response_kind="dkd",
        warmup_epochs=3,
    )


def test_vid_variances_are_parameters_and_the_term_is_the_sum_of_the_nlls():
    logits, targets, t_logits, s_feats, t_feats = _batch()
    hybrid = _vid_hybrid()
    params = {id(p) for p in hybrid.parameters()}
    assert all(id(v.alpha) in params for v in hybrid.vid_variances)
    out = hybrid(logits, targets, t_logits, s_feats, t_feats)
    expected = sum(
        vid_nll(a(s), t, torch.full((t.shape[1],), 5.0)).item()
        for a, s, t in zip(hybrid.adapters, s_feats, t_feats, strict=True)
    )
    assert out["feature"].item() == pytest.approx(expected, rel=1e-5)
    out["total"].backward()
    assert all(
        v.alpha.grad is not None and v.alpha.grad.abs().sum() > 0 for v in hybrid.vid_variances
    )


def test_state_dict_round_trip_keeps_the_warmup_counter_and_the_vid_variances():
    logits, targets, t_logits, s_feats, t_feats = _batch()
    first = _vid_hybrid()
    first.epoch_end(0.4)
    with torch.no_grad():
        for v in first.vid_variances:
            v.alpha.add_(torch.linspace(-1, 1, v.alpha.numel()))
    second = _vid_hybrid()
    second.load_state_dict(first.state_dict())
    assert int(second.epochs_done) == 1
    for a, b in zip(first.vid_variances, second.vid_variances, strict=True):
        assert torch.equal(a.alpha, b.alpha)
    one, two = (h(logits, targets, t_logits, s_feats, t_feats) for h in (first, second))
    for key in ("response", "feature", "total"):
        assert one[key].item() == pytest.approx(two[key].item(), rel=1e-7)
    first.epoch_end(0.5)
    second.epoch_end(0.5)
    assert first.warmup_factor().item() == second.warmup_factor().item() == 1.0


def test_hybrid_refuses_bad_method_settings():
    with pytest.raises(UnknownNameError, match="unknown response kind 'dkdd'"):
        HybridLoss(LossWeights(), temperature=1.0, response_kind="dkdd")
    with pytest.raises(ValueError, match="pass teacher_channels"):
        HybridLoss(LossWeights(), temperature=1.0, feature_kind="vid", adapters=_adapters())
    with pytest.raises(ConfigError, match="has no parameter 'gamma'; its parameters: alpha, beta"):
        HybridLoss(
            LossWeights(), temperature=1.0, response_kind="dkd", response_params={"gamma": 1}
        )
    with pytest.raises(ConfigError, match="has no parameter 'variance'"):
        HybridLoss(
            LossWeights(), temperature=1.0, feature_kind="vid", feature_params={"variance": 1}
        )
    with pytest.raises(ConfigError, match="warmup_epochs must be a whole number"):
        HybridLoss(LossWeights(), temperature=1.0, warmup_epochs=-1)
    # Without a feature weight, VID needs no channel counts (the term is never computed).
    HybridLoss(LossWeights(0.5, 0.5, 0, 0), temperature=1.0, feature_kind="vid")


def test_the_new_relation_and_feature_kinds_run_in_the_hybrid():
    logits, targets, t_logits, s_feats, t_feats = _batch()
    maps = [s_feats[0]], [t_feats[0]]
    hybrid = HybridLoss(
        LossWeights(0, 0, 1, 1),
        temperature=1.0,
        feature_kind="nst",
        relation_kind="cc",
        relation_params={"gamma": 0.2},
        adapters=_adapters(),
    )
    assert hybrid.adapters is None  # NST compares the student's own maps
    out = hybrid(logits, targets, t_logits, *maps)
    assert out["feature"].item() == pytest.approx(feature_loss(*maps[0], *maps[1], "nst").item())
    assert out["relation"].item() == pytest.approx(
        relation_loss(s_feats[0], t_feats[0], "cc", gamma=0.2).item()
    )


def test_the_public_api_is_the_slots_three_functions():
    assert distill.response_loss is response_loss
    assert distill.feature_loss is feature_loss
    assert distill.relation_loss is relation_loss
