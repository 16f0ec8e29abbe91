"""Losses against references computed independently here (numpy loops, by hand, invariants)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench.config.run_config import COMPONENTS, LossWeights
from workbench.distill import feature, hybrid
from workbench.distill.feature import FEATURE_LOSSES, feature_loss
from workbench.distill.hybrid import RELATION_MODULES, HybridLoss
from workbench.distill.relation import RELATION_LOSSES, relation_loss
from workbench.distill.response import label_loss, response_loss
from workbench.errors import ConfigError, IncompatibleModelsError, UnknownNameError

# Relation kinds computed pair by pair; CRD keeps memory banks of the training set and is
# tested as the module it is (tests/test_crd.py).
PAIRWISE_RELATIONS = [k for k in RELATION_LOSSES if k not in RELATION_MODULES]


@pytest.fixture(autouse=True)
def _seeded():
    """Unseeded draws in these tests are reproducible too."""
    torch.manual_seed(0)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ label, response
def test_label_loss_is_mean_negative_log_likelihood():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1])
    p = _np_softmax(_np(logits))
    expected = -(np.log(p[0, 0]) + np.log(p[1, 1])) / 2
    assert label_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_response_loss_matches_numpy_kl_times_t_squared(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), 3 * torch.randn(5, 7, generator=g)
    p_s, p_t = _np_softmax(_np(s) / temperature), _np_softmax(_np(t) / temperature)
    kl = sum(
        p_t[i, k] * (np.log(p_t[i, k]) - np.log(p_s[i, k])) for i in range(5) for k in range(7)
    )
    expected = temperature**2 * kl / 5  # "batchmean": summed over classes, mean over samples
    assert response_loss(s, t, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_response_loss_is_zero_for_equal_logits_and_positive_otherwise():
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    assert response_loss(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    # Softmax ignores a shift of the logits (up to the float32 rounding of z + 5).
    assert response_loss(z + 5.0, z, 3.0).item() == pytest.approx(0.0, abs=1e-5)
    assert response_loss(-z, z, 3.0).item() > 0


# ------------------------------------------------------------------------------------- features
def test_cosine_is_zero_for_identical_two_for_opposite_one_for_orthogonal():
    f = torch.randn(3, 4, 5, 5)
    assert feature_loss(f, f.clone(), "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(2.5 * f, f, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(-f, f, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    a, b = torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    assert feature_loss(a, b, "cosine").item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 6, 3), (4, 7)])
def test_cosine_vector_convention_matches_numpy_loop(shape):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    s_np, t_np = _np(s), _np(t)
    values = []
    if len(shape) == 4:  # channels at every spatial position
        for b in range(shape[0]):
            for h in range(shape[2]):
                for w in range(shape[3]):
                    u, v = s_np[b, :, h, w], t_np[b, :, h, w]
                    values.append(1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v))
    elif len(shape) == 3:  # last dim at every token
        for b in range(shape[0]):
            for k in range(shape[1]):
                u, v = s_np[b, k], t_np[b, k]
                values.append(1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v))
    else:
        for b in range(shape[0]):
            u, v = s_np[b], t_np[b]
            values.append(1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v))
    assert feature_loss(s, t, "cosine").item() == pytest.approx(np.mean(values), rel=1e-5)


def test_cosine_has_no_temperature_factor():
    # The course sketch multiplied by T^2; the function takes no temperature at all.
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert feature_loss(s, t, "cosine").item() == pytest.approx(1.0)


def test_mse_matches_numpy():
    s, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert feature_loss(s, t, "mse").item() == pytest.approx(
        np.mean((_np(s) - _np(t)) ** 2), rel=1e-5
    )


def test_attention_transfer_matches_manual_loop():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.rand(2, 5, 4, 4, generator=g)
    # Channels differ: AT compares maps over positions only.
    total, count = 0.0, 0
    for b in range(2):
        a_s = np.array([[np.mean(_np(s)[b, :, i, j] ** 2) for j in range(4)] for i in range(4)])
        a_t = np.array([[np.mean(_np(t)[b, :, i, j] ** 2) for j in range(4)] for i in range(4)])
        a_s, a_t = a_s.ravel() / np.linalg.norm(a_s), a_t.ravel() / np.linalg.norm(a_t)
        total += ((a_s - a_t) ** 2).sum()
        count += a_s.size
    assert feature._attention(s, t).item() == pytest.approx(total / count, rel=1e-5)
    same = torch.randn(2, 3, 4, 4)
    assert feature_loss(same, 3 * same, "at").item() == pytest.approx(0.0, abs=1e-7)


def _np_pool_or_bilinear(q: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one [H, W] map: exact block means when it divides evenly (adaptive average
    pooling), else bilinear with half-pixel centres (align_corners=False), by hand."""
    h, w = q.shape
    oh, ow = size
    if h >= oh and w >= ow:
        assert h % oh == 0 and w % ow == 0
        return q.reshape(oh, h // oh, ow, w // ow).mean(axis=(1, 3))
    out = np.zeros(size)
    for i in range(oh):
        for j in range(ow):
            y = max((i + 0.5) * h / oh - 0.5, 0.0)
            x = max((j + 0.5) * w / ow - 0.5, 0.0)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (
                q[y0, x0] * (1 - dy) * (1 - dx)
                + q[y0, x1] * (1 - dy) * dx
                + q[y1, x0] * dy * (1 - dx)
                + q[y1, x1] * dy * dx
            )
    return out


@pytest.mark.parametrize(("s_size", "t_size"), [(8, 4), (2, 4)])
def test_attention_transfer_of_maps_of_other_sizes_by_hand(s_size, t_size):
    """The student's own map with other channels and another size: resized, then compared."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 7, s_size, s_size, generator=g)
    t = torch.randn(3, 2, t_size, t_size, generator=g)
    total = 0.0
    for b in range(3):
        q_s = (_np(s)[b] ** 2).mean(axis=0)
        q_s = _np_pool_or_bilinear(q_s, (t_size, t_size)).ravel()
        q_t = ((_np(t)[b] ** 2).mean(axis=0)).ravel()
        a_s, a_t = q_s / np.linalg.norm(q_s), q_t / np.linalg.norm(q_t)
        total += ((a_s - a_t) ** 2).sum()
    expected = total / (3 * t_size * t_size)
    assert feature_loss(s, t, "at").item() == pytest.approx(expected, rel=1e-5)
    # The paper's scale: beta / 2 with beta = 1000 (Zagoruyko and Komodakis 2017).
    assert feature_loss(s, t, "at_paper").item() == pytest.approx(500 * expected, rel=1e-5)


def test_paper_scales_by_hand():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(5, 64, 8, 8, generator=g), torch.randn(5, 64, 8, 8, generator=g)
    # FitNets: 1/2 ||r(s) - t||^2 per sample, mean over the batch.
    per_sample = [0.5 * np.sum((_np(s)[b] - _np(t)[b]) ** 2) for b in range(5)]
    assert feature_loss(s, t, "fitnet").item() == pytest.approx(np.mean(per_sample), rel=1e-5)
    ratio = feature_loss(s, t, "fitnet") / feature_loss(s, t, "mse")
    assert ratio.item() == pytest.approx(64 * 8 * 8 / 2, rel=1e-5)  # the audit's factor
    fs, ft = torch.randn(6, 10, generator=g), torch.randn(6, 7, generator=g)
    sp = _np_sp(_np(fs), _np(ft))
    assert relation_loss(fs, ft, "sp_paper").item() == pytest.approx(3000 * sp, rel=1e-4)
    rkd = relation_loss(fs, ft, "rkd").item()
    assert relation_loss(fs, ft, "rkd_paper").item() == pytest.approx(25 * rkd, rel=1e-6)


def test_hybrid_attention_transfer_bypasses_the_adapters():
    logits, targets, t_logits, _, _ = _batch()
    s = torch.randn(B, 4, 6, 6, requires_grad=True)
    t = torch.randn(B, 9, 3, 3)
    adapters = nn.ModuleList([nn.Conv2d(4, 9, 1)])
    hybrid = HybridLoss(
        LossWeights(0, 0, 1, 0), temperature=1.0, feature_kind="at", adapters=adapters
    )
    assert hybrid.adapters is None and list(hybrid.parameters()) == []
    out = hybrid(logits, targets, t_logits, [s], [t])
    assert out["feature"].item() == pytest.approx(feature_loss(s, t, "at").item(), rel=1e-6)
    out["total"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0  # the student's own map moves
    assert feature.uses_adapter("mse") and not feature.uses_adapter("at_paper")


def test_attention_transfer_needs_maps():
    with pytest.raises(IncompatibleModelsError, match="needs 4-D feature maps"):
        feature_loss(torch.randn(2, 8), torch.randn(2, 8), "at")


def test_feature_loss_rejects_mismatched_shapes_and_unknown_kinds():
    with pytest.raises(IncompatibleModelsError, match="does not match the teacher"):
        feature_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 6, 4, 4), "cosine")
    with pytest.raises(UnknownNameError) as info:
        feature_loss(torch.randn(2, 3), torch.randn(2, 3), "l7")
    assert info.value.valid == (
        "cosine", "mse", "at", "fitnet", "at_paper", "nst", "vid", "reviewkd", "ofd"
    )  # fmt: skip
    with pytest.raises(
        UnknownNameError, match="unknown relation kind 'xx'; choose one of: sp, rkd, sp_paper"
    ):
        relation_loss(torch.randn(2, 3), torch.randn(2, 3), "xx")


# ------------------------------------------------------------------------------------ relations
def _np_sp(s: np.ndarray, t: np.ndarray) -> float:
    """G_ij = <f_i, f_j> / sqrt(sum_k <f_i, f_k>^2), written with explicit sums."""

    def g(f):
        b = len(f)
        dots = [[float(np.dot(f[i], f[j])) for j in range(b)] for i in range(b)]
        return np.array([[d / np.sqrt(sum(x * x for x in row)) for d in row] for row in dots])

    b = len(s)
    return float(((g(s) - g(t)) ** 2).sum() / b**2)


def test_sp_matches_numpy_with_different_widths():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 3, 2, 2, generator=g), torch.randn(5, 7, generator=g)
    expected = _np_sp(_np(s).reshape(5, -1), _np(t))
    assert relation_loss(s, t, "sp").item() == pytest.approx(expected, rel=1e-5)


def _np_rkd(s: np.ndarray, t: np.ndarray) -> float:
    """RKD as in the paper: loops over ordered pairs and triplets, float64."""

    def geometry(x):
        b = len(x)
        d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(b)] for i in range(b)])
        mu = sum(d[i, j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        mu = mu if mu > 0 else 1.0  # all samples coincide: every distance stays 0
        angle = np.zeros((b, b, b))
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    u, v = x[j] - x[i], x[k] - x[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    angle[i, j, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return d / mu, angle

    def smooth_l1(a, b):
        diff = np.abs(a - b)
        return np.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()

    s_d, s_a = geometry(s)
    t_d, t_a = geometry(t)
    return float(smooth_l1(s_d, t_d) + 2 * smooth_l1(s_a, t_a))


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_rkd_matches_triple_loop(offset):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 2, 3, 3, generator=g) + offset  # far from the origin, like post-ReLU
    t = torch.randn(4, 5, generator=g)
    t[3] = 5 * t[3]  # one far sample: some distance differences exceed smooth-L1's beta = 1
    expected = _np_rkd(_np(s).reshape(4, -1), _np(t))
    assert relation_loss(s, t, "rkd").item() == pytest.approx(expected, rel=1e-6)


def test_rkd_teacher_side_gets_no_gradient():
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 9, requires_grad=True)
    relation_loss(s, t, "rkd").backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["duplicate", "all zero"])
def test_rkd_with_coincident_samples_stays_finite(case):
    s = torch.randn(4, 6)
    if case == "duplicate":
        s[1] = s[0]
    else:  # a dead post-ReLU layer
        s.zero_()
    s.requires_grad_(True)
    t = torch.randn(4, 6)
    loss = relation_loss(s, t, "rkd")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert loss.item() == pytest.approx(_np_rkd(_np(s), _np(t)), rel=1e-6)


@pytest.mark.parametrize("kind", PAIRWISE_RELATIONS)
def test_relation_losses_ignore_scale_and_rotation(kind):
    g = torch.Generator().manual_seed(5)
    t = torch.randn(6, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))  # orthogonal
    s = 3.0 * t @ q
    assert relation_loss(s, t, kind).item() == pytest.approx(0.0, abs=1e-5)
    if kind == "rkd":  # distances and angles also ignore translation
        assert relation_loss(s + 7.0, t, kind).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("kind", PAIRWISE_RELATIONS)
def test_relation_losses_run_in_float32_under_autocast(kind):
    s, t = torch.randn(6, 4, 3, 3).bfloat16(), torch.randn(6, 10).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = relation_loss(s, t, kind)
    assert value.dtype == torch.float32
    reference = relation_loss(s.float(), t.float(), kind)
    assert value.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("kind", PAIRWISE_RELATIONS)
def test_relation_loss_of_one_sample_is_zero(kind):
    s = torch.randn(1, 5, requires_grad=True)
    value = relation_loss(s, torch.randn(1, 3), kind)
    value.backward()
    assert value.item() == 0.0


@pytest.mark.parametrize(
    ("registry", "kind"),
    [(FEATURE_LOSSES, k) for k in FEATURE_LOSSES]
    + [(RELATION_LOSSES, k) for k in PAIRWISE_RELATIONS],
)
def test_every_loss_is_a_finite_nonnegative_differentiable_scalar(registry, kind):
    s = torch.randn(4, 3, 5, 5, requires_grad=True)
    t = torch.randn(4, 3, 5, 5)
    fn = feature_loss if registry is FEATURE_LOSSES else relation_loss
    extra = {"margin": torch.full((3,), -0.5)} if kind == "ofd" else {}  # OFDTerm passes it
    value = fn(s, t, kind, **extra)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and value.item() >= 0
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert fn(t, t.clone(), kind, **extra).item() == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------------------- the hybrid
B, K = 6, 5


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, generator=g, requires_grad=True)
    targets = torch.randint(0, K, (B,), generator=g)
    t_logits = torch.randn(B, K, generator=g)
    s_feats = [
        torch.randn(B, 4, 6, 6, generator=g, requires_grad=True),
        torch.randn(B, 8, generator=g, requires_grad=True),
    ]
    t_feats = [torch.randn(B, 6, 3, 3, generator=g), torch.randn(B, 5, generator=g)]
    return logits, targets, t_logits, s_feats, t_feats


def _adapters() -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList(
        [nn.Sequential(nn.Conv2d(4, 6, 1), nn.AdaptiveAvgPool2d(3)), nn.Linear(8, 5)]
    )


def test_hybrid_total_is_the_weighted_sum_of_the_terms():
    logits, targets, t_logits, s_feats, t_feats = _batch()
    weights = LossWeights(0.3, 0.25, 0.2, 0.15)
    adapters = _adapters()
    hybrid = HybridLoss(
        weights, temperature=3.0, feature_kind="mse", relation_kind="rkd", adapters=adapters
    )
    out = hybrid(logits, targets, t_logits, s_feats, t_feats)
    assert set(out) == {*COMPONENTS, "total"}
    label = label_loss(logits, targets)
    response = response_loss(logits, t_logits, 3.0)
    feature = sum(
        feature_loss(a(s), t, "mse") for a, s, t in zip(adapters, s_feats, t_feats, strict=True)
    )
    relation = sum(relation_loss(s, t, "rkd") for s, t in zip(s_feats, t_feats, strict=True))
    for name, value in [
        ("label", label),
        ("response", response),
        ("feature", feature),
        ("relation", relation),
    ]:
        assert out[name].item() == pytest.approx(value.item(), rel=1e-6)
    expected = 0.3 * label + 0.25 * response + 0.2 * feature + 0.15 * relation
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert hybrid.current_weights() == weights.as_dict()


def test_relation_term_uses_the_raw_features_not_the_adapted_ones():
    logits, targets, t_logits, s_feats, t_feats = _batch(1)
    hybrid = HybridLoss(LossWeights(0, 0, 0, 1), temperature=1.0, adapters=_adapters())
    out = hybrid(logits, targets, t_logits, s_feats, t_feats)
    raw = sum(relation_loss(s, t, "sp") for s, t in zip(s_feats, t_feats, strict=True))
    assert out["relation"].item() == pytest.approx(raw.item(), rel=1e-6)


def _counting(monkeypatch) -> dict[str, int]:
    calls = dict.fromkeys(["label_loss", "response_loss", "feature_loss", "relation_loss"], 0)
    for name in calls:
        original = getattr(hybrid, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(hybrid, name, counted)
    return calls


def test_zero_weight_components_are_not_computed(monkeypatch):
    calls = _counting(monkeypatch)
    logits, targets, t_logits, s_feats, t_feats = _batch()
    hybrid = HybridLoss(LossWeights(0.5, 0.0, 0.5, 0.0), temperature=2.0, adapters=_adapters())
    out = hybrid(logits, targets, t_logits, s_feats, t_feats)
    assert calls == {"label_loss": 1, "response_loss": 0, "feature_loss": 2, "relation_loss": 0}
    assert out["response"].item() == 0.0 and out["relation"].item() == 0.0
    assert not out["response"].requires_grad and not out["relation"].requires_grad


class _Untouchable:
    """Stands in for teacher inputs that must never be read."""

    def __getattr__(self, name):
        raise AssertionError(f"teacher input touched: .{name}")

    def __iter__(self):
        raise AssertionError("teacher input iterated")

    def __len__(self):
        raise AssertionError("teacher input measured")

    def __getitem__(self, index):
        raise AssertionError("teacher input indexed")


def test_label_only_never_touches_teacher_inputs(monkeypatch):
    calls = _counting(monkeypatch)
    logits, targets, *_ = _batch()
    hybrid = HybridLoss(LossWeights(1, 0, 0, 0), temperature=4.0)
    assert not hybrid.needs_teacher and not hybrid.needs_features
    out = hybrid(logits, targets, None, _Untouchable(), _Untouchable())
    out = hybrid(logits, targets)  # teacher_logits=None and no features at all
    assert calls["response_loss"] == calls["feature_loss"] == calls["relation_loss"] == 0
    assert out["total"].item() == pytest.approx(label_loss(logits, targets).item())


def test_needs_teacher_and_needs_features():
    def flags(*w):
        h = HybridLoss(LossWeights(*w), temperature=1.0)
        return h.needs_teacher, h.needs_features

    assert flags(1, 0, 0, 0) == (False, False)
    assert flags(0.5, 0.5, 0, 0) == (True, False)
    assert flags(0.5, 0, 0.5, 0) == (True, True)
    assert flags(0, 0, 0, 1) == (True, True)


def test_gradients_reach_student_and_adapters_but_not_teacher():
    logits, targets, t_logits, s_feats, t_feats = _batch()
    t_logits.requires_grad_(False)
    adapters = _adapters()
    hybrid = HybridLoss(LossWeights(), temperature=4.0, adapters=adapters)
    assert {id(p) for p in adapters.parameters()} <= {id(p) for p in hybrid.parameters()}
    hybrid(logits, targets, t_logits, s_feats, t_feats)["total"].backward()
    for p in adapters.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert logits.grad.abs().sum() > 0 and all(f.grad.abs().sum() > 0 for f in s_feats)


def test_teacher_tensors_from_inference_mode_are_left_unchanged():
    logits, targets, _, s_feats, _ = _batch()
    with torch.inference_mode():
        t_logits = torch.randn(B, K)
        t_feats = [torch.rand(B, 6, 3, 3), torch.rand(B, 5)]
    # The engine clones inference tensors (they cannot be saved for backward).
    t_logits, t_feats = t_logits.clone(), [f.clone() for f in t_feats]
    before = [t_logits.clone(), *(f.clone() for f in t_feats)]
    for relation in PAIRWISE_RELATIONS:
        hybrid = HybridLoss(
            LossWeights(), temperature=2.0, relation_kind=relation, adapters=_adapters()
        )
        hybrid(logits, targets, t_logits, s_feats, t_feats)["total"].backward()
    for old, new in zip(before, [t_logits, *t_feats], strict=True):
        assert torch.equal(old, new)


def test_forward_never_syncs_with_the_device(monkeypatch):
    logits, targets, t_logits, s_feats, t_feats = _batch()
    for relation in PAIRWISE_RELATIONS:
        for weighting in ("fixed", "uncertainty", "validation"):
            hybrid = HybridLoss(
                LossWeights(),
                temperature=2.0,
                relation_kind=relation,
                adapters=_adapters(),
                weighting=weighting,
            )
            with monkeypatch.context() as m:
                for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):

                    def forbidden(*_args, _name=name, **_kwargs):
                        raise AssertionError(f"host sync in forward: Tensor.{_name}")

                    m.setattr(torch.Tensor, name, forbidden)
                out = hybrid(logits, targets, t_logits, s_feats, t_feats)
            assert torch.isfinite(out["total"]).item()
            assert set(hybrid.current_weights()) == set(COMPONENTS)  # may sync, outside forward


def test_hybrid_rejects_bad_settings():
    with pytest.raises(UnknownNameError, match="unknown feature kind"):
        HybridLoss(LossWeights(), temperature=1.0, feature_kind="l7")
    with pytest.raises(UnknownNameError, match="unknown relation kind"):
        HybridLoss(LossWeights(), temperature=1.0, relation_kind="xx")
    with pytest.raises(UnknownNameError, match="unknown weighting scheme 'magic'"):
        HybridLoss(LossWeights(), temperature=1.0, weighting="magic")
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        HybridLoss(LossWeights(), temperature=0.0)
    with pytest.raises(ConfigError, match="all loss weights are zero"):
        HybridLoss(LossWeights(0, 0, 0, 0), temperature=1.0)


def test_hybrid_says_what_is_missing():
    logits, targets, t_logits, s_feats, t_feats = _batch()
    hybrid = HybridLoss(LossWeights(0.5, 0.5, 0, 0), temperature=1.0)
    with pytest.raises(ValueError, match="needs teacher_logits"):
        hybrid(logits, targets)
    hybrid = HybridLoss(LossWeights(0.5, 0, 0, 0.5), temperature=1.0)
    with pytest.raises(ValueError, match="one teacher feature per student feature"):
        hybrid(logits, targets, t_logits, s_feats, t_feats[:1])
    hybrid = HybridLoss(LossWeights(0.5, 0, 0.5, 0), temperature=1.0, adapters=_adapters()[:1])
    with pytest.raises(ValueError, match="1 adapters for 2 layer pairs"):
        hybrid(logits, targets, t_logits, s_feats, t_feats)


def test_feature_term_without_adapters_needs_matching_shapes():
    logits, targets, t_logits, _, _ = _batch()
    s, t = torch.randn(B, 3, 4, 4), torch.randn(B, 3, 4, 4)
    hybrid = HybridLoss(LossWeights(0, 0, 1, 0), temperature=1.0)
    out = hybrid(logits, targets, t_logits, [s], [t])
    assert out["feature"].item() == pytest.approx(feature_loss(s, t, "cosine").item())
