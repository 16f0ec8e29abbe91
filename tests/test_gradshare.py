"""Gradient shares against an independent computation (per-term backward into .grad, numpy
norms), and the 'barely acts' rule by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from workbench.config.run_config import LossWeights
from workbench.distill.gradient_shares import SHARE_FIELDS, gradient_shares, weak_terms
from workbench.distill.hybrid import HybridLoss


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    t_logits = torch.randn(10, 4)
    return model, x, y, t_logits


def _reference(model, x, y, t_logits, hybrid, component, weight):
    """||d (w L_k) / d theta|| by a fresh forward and .backward() per term, norms in numpy."""
    model.zero_grad()
    out = hybrid(model(x), y, t_logits)
    (weight * out[component]).backward()
    flat = np.concatenate([p.grad.double().numpy().ravel() for p in model.parameters()])
    return float(np.sqrt((flat**2).sum()))


def test_shares_match_separate_backward_passes():
    model, x, y, t_logits = _setup()
    hybrid = HybridLoss(LossWeights(0.3, 0.7, 0.0, 0.0), temperature=4.0)
    out = hybrid(model(x), y, t_logits)
    shares = gradient_shares(out, hybrid.current_weights(), model.parameters())
    ref = {
        k: _reference(model, x, y, t_logits, hybrid, k, w)
        for k, w in (("label", 0.3), ("response", 0.7))
    }
    total = sum(ref.values())
    assert shares["label"] == pytest.approx(ref["label"] / total, rel=1e-5)
    assert shares["response"] == pytest.approx(ref["response"] / total, rel=1e-5)
    assert shares["feature"] == 0.0 and shares["relation"] == 0.0
    assert sum(shares.values()) == pytest.approx(1.0)
    # The graph is kept: the total still backpropagates afterwards.
    model.zero_grad()
    out["total"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_shares_follow_the_effective_weights():
    """Doubling a weight doubles that term's gradient norm: s' = 2a / (2a + b)."""
    model, x, y, t_logits = _setup()
    hybrid = HybridLoss(LossWeights(0.5, 0.5, 0.0, 0.0), temperature=4.0)
    out = hybrid(model(x), y, t_logits)
    s = gradient_shares(out, {"label": 0.5, "response": 0.5}, model.parameters())
    s2 = gradient_shares(out, {"label": 1.0, "response": 0.5}, model.parameters())
    a, b = s["label"], s["response"]
    assert s2["label"] == pytest.approx(2 * a / (2 * a + b), rel=1e-6)


def test_constant_term_has_no_share_and_all_constant_is_nan():
    model, x, y, _ = _setup()
    logits = model(x)
    losses = {"label": nn.functional.cross_entropy(logits, y), "response": torch.tensor(3.0)}
    shares = gradient_shares(losses, {"label": 0.5, "response": 0.5}, model.parameters())
    assert shares["label"] == 1.0 and shares["response"] == 0.0
    nothing = gradient_shares({"label": torch.tensor(1.0)}, {"label": 1.0}, model.parameters())
    assert math.isnan(nothing["label"])
    assert SHARE_FIELDS == {
        "label": "g_label",
        "response": "g_response",
        "feature": "g_feature",
        "relation": "g_relation",
    }


def test_weak_terms_flags_a_term_under_one_percent_with_its_factor():
    weights = {"label": 0.3, "response": 0.3, "feature": 0.2, "relation": 0.2}
    history = []
    for i in range(10):
        rel = 0.5 if i < 5 else 0.002 + 0.001 * (i % 2)  # acts early, then barely
        rest = (1 - rel) / 3
        history.append(
            {"step": i, "g_label": rest, "g_response": rest, "g_feature": rest, "g_relation": rel}
        )
    flagged = weak_terms(history, weights)
    assert [f["component"] for f in flagged] == ["relation"]
    (f,) = flagged
    tail = [0.002 + 0.001 * (i % 2) for i in range(5, 10)]  # 0.003, 0.002, 0.003, 0.002, 0.003
    s = sorted(tail)[2]
    assert f["share"] == pytest.approx(s)
    n = 0.2 * (1 - s) / (s * (1 - 0.2))  # N s / (N s + 1 - s) = 0.2
    assert f["factor"] == pytest.approx(n)
    assert n * s / (n * s + 1 - s) == pytest.approx(0.2)  # the factor does what it says
    assert "relation barely acts" in f["message"] and f"×{n:,.0f}" in f["message"]
    # Over the whole history the term acted: no flag with tail=1.
    assert weak_terms(history, weights, tail=1.0) == []
    assert weak_terms([], weights) == []


def test_shares_count_the_student_only_not_the_adapters():
    """Feature and relation terms through an adapter: the norm is taken on the student's
    parameters; the adapter's own gradient is not part of it."""
    torch.manual_seed(2)
    body, head = nn.Linear(6, 8), nn.Linear(8, 4)
    adapter = nn.ModuleList([nn.Linear(8, 5)])
    x, y, t_logits, t_feat = (
        torch.randn(10, 6),
        torch.randint(0, 4, (10,)),
        torch.randn(10, 4),
        torch.randn(10, 5),
    )
    hybrid = HybridLoss(
        LossWeights(0.3, 0.3, 0.2, 0.2), temperature=2.0, feature_kind="mse", adapters=adapter
    )
    student = [*body.parameters(), *head.parameters()]

    def forward():
        h = torch.relu(body(x))
        return hybrid(head(h), y, t_logits, [h], [t_feat])

    shares = gradient_shares(forward(), hybrid.current_weights(), student)
    ref = {}
    for k, w in hybrid.current_weights().items():
        for p in [*student, *adapter.parameters()]:
            p.grad = None
        (w * forward()[k]).backward()
        grads = [p.grad for p in student if p.grad is not None]  # the head has none for features
        ref[k] = float(np.sqrt(sum((g.double() ** 2).sum().item() for g in grads)))
    total = sum(ref.values())
    assert shares == pytest.approx({k: v / total for k, v in ref.items()}, rel=1e-5)
    assert all(shares[k] > 0 for k in ref)
