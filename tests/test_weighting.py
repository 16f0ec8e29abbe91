"""Weighting schemes: formulas recomputed by hand, gradients, and the validation rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workbench.config import COMPONENTS, LossWeights
from workbench.errors import ConfigError
from workbench.losses import HybridLoss, label_loss
from workbench.weighting import (
    WEIGHTINGS,
    FixedWeighting,
    UncertaintyWeighting,
    ValidationWeighting,
    list_weightings,
)


@pytest.fixture(autouse=True)
def _seeded():
    """Unseeded draws in these tests are reproducible too."""
    torch.manual_seed(0)


BASE = {"label": 0.3, "response": 0.3, "feature": 0.0, "relation": 0.4}


def _terms(values=(1.5, 0.25, 2.0)) -> dict[str, torch.Tensor]:
    names = ("label", "response", "relation")
    return {k: torch.tensor(v, requires_grad=True) for k, v in zip(names, values, strict=True)}


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_every_scheme_starts_as_the_fixed_weighted_sum(name):
    scheme = WEIGHTINGS[name](BASE)
    assert isinstance(scheme, nn.Module)
    assert scheme.current() == BASE  # before the first step
    assert scheme.needed(BASE) == ("label", "response", "relation")
    total = scheme(_terms(), BASE)
    assert total.item() == pytest.approx(0.3 * 1.5 + 0.3 * 0.25 + 0.4 * 2.0, rel=1e-6)
    assert scheme.current() == pytest.approx(BASE)
    scheme.epoch_end(0.5)  # every scheme accepts it
    assert list_weightings() == list(WEIGHTINGS)


def test_fixed_reproduces_the_sum_and_never_changes():
    scheme = FixedWeighting(BASE)
    assert list(scheme.parameters()) == []
    terms = _terms((0.7, 0.1, 3.0))
    scheme.epoch_end(0.1)
    scheme.epoch_end(0.0)
    assert scheme(terms, BASE).item() == pytest.approx(0.3 * 0.7 + 0.3 * 0.1 + 0.4 * 3.0)
    assert scheme.current() == BASE


def test_uncertainty_formula_and_effective_weights():
    scheme = UncertaintyWeighting(BASE)
    assert scheme.log_var.shape == (3,)  # one s_k per component with a weight > 0
    s = [0.5, -1.0, 2.0]
    with torch.no_grad():
        scheme.log_var.copy_(torch.tensor(s))
    terms = _terms((1.5, 0.25, 2.0))
    total = scheme(terms, BASE)
    expected = sum(
        w * (math.exp(-sk) * loss + sk)
        for w, sk, loss in zip((0.3, 0.3, 0.4), s, (1.5, 0.25, 2.0), strict=True)
    )
    assert total.item() == pytest.approx(expected, rel=1e-6)
    effective = {"label": 0.3 * math.exp(-0.5), "response": 0.3 * math.exp(1.0)}
    effective |= {"feature": 0.0, "relation": 0.4 * math.exp(-2.0)}
    assert scheme.current() == pytest.approx(effective, rel=1e-6)
    # The weights recorded are those of the latest forward, not the parameters after a step.
    with torch.no_grad():
        scheme.log_var.zero_()
    assert scheme.current() == pytest.approx(effective, rel=1e-6)


def test_uncertainty_gradients_are_analytic():
    scheme = UncertaintyWeighting(BASE)
    s = torch.tensor([0.2, -0.3, 0.7])
    with torch.no_grad():
        scheme.log_var.copy_(s)
    values = (1.5, 0.25, 2.0)
    terms = _terms(values)
    scheme(terms, BASE).backward()
    weights = (0.3, 0.3, 0.4)
    # d total / d s_k = w_k (1 - exp(-s_k) L_k);  d total / d L_k = w_k exp(-s_k)
    expected = [
        w * (1 - math.exp(-sk) * v) for w, sk, v in zip(weights, s.tolist(), values, strict=True)
    ]
    assert scheme.log_var.grad.tolist() == pytest.approx(expected, rel=1e-5)
    for (name, term), w, sk in zip(terms.items(), weights, s.tolist(), strict=True):
        assert term.grad.item() == pytest.approx(w * math.exp(-sk), rel=1e-5), name


def test_uncertainty_log_variance_is_optimal_at_log_loss():
    # For a constant L_k, w_k (exp(-s) L_k + s) is minimised at s = log L_k.
    names, values = ("label", "response", "relation"), (4.0, 0.5, 1.0)
    terms = {k: torch.tensor(v) for k, v in zip(names, values, strict=True)}
    scheme = UncertaintyWeighting(BASE)

    def total_at(s: list[float]) -> float:
        with torch.no_grad():
            scheme.log_var.copy_(torch.tensor(s))
        return scheme(terms, BASE).item()

    optimum = [math.log(v) for v in values]
    with torch.no_grad():
        scheme.log_var.copy_(torch.tensor(optimum))
    scheme(terms, BASE).backward()
    assert scheme.log_var.grad.abs().max().item() < 1e-6
    best = total_at(optimum)
    for k in range(3):
        for step in (-0.1, 0.1):
            moved = list(optimum)
            moved[k] += step
            assert total_at(moved) > best


def test_uncertainty_parameters_belong_to_the_hybrid_loss_and_train():
    hybrid = HybridLoss(LossWeights(0.5, 0.5, 0.0, 0.0), temperature=2.0, weighting="uncertainty")
    params = dict(hybrid.named_parameters())
    assert list(params) == ["weighting.log_var"] and params["weighting.log_var"].shape == (2,)
    logits, targets = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 0])
    out = hybrid(logits, targets, torch.randn(4, 3))
    out["total"].backward()
    grad = hybrid.weighting.log_var.grad
    assert grad is not None and (grad != 0).all()  # an optimizer over parameters() moves them
    weights = hybrid.current_weights()
    assert weights["feature"] == 0.0 and weights["relation"] == 0.0
    assert weights["label"] == pytest.approx(0.5) and weights["response"] == pytest.approx(0.5)


def test_validation_moves_weight_to_the_labels_on_a_plateau():
    scheme = ValidationWeighting(BASE, rate=0.5)
    terms = _terms()
    for acc in (0.5, 0.6):  # improving: unchanged
        scheme.epoch_end(acc)
        scheme(terms, BASE)
        assert scheme.current() == pytest.approx(BASE)
    scheme.epoch_end(0.6)  # no improvement: half the distillation weight (0.7) moves
    total = scheme(terms, BASE)
    w = {"label": 0.3 + 0.35, "response": 0.15, "feature": 0.0, "relation": 0.2}
    assert scheme.current() == pytest.approx(w)
    assert total.item() == pytest.approx(0.65 * 1.5 + 0.15 * 0.25 + 0.2 * 2.0, rel=1e-6)
    scheme.epoch_end(0.55)  # worse: half again, geometric
    scheme(terms, BASE)
    w = {"label": 0.3 + 0.7 * 0.75, "response": 0.075, "feature": 0.0, "relation": 0.1}
    assert scheme.current() == pytest.approx(w)
    assert sum(scheme.current().values()) == pytest.approx(sum(BASE.values()))
    scheme.epoch_end(0.61)  # a new best: no further change
    scheme(terms, BASE)
    assert scheme.current() == pytest.approx(w)


def test_validation_min_delta_and_nan_count_as_plateaus():
    scheme = ValidationWeighting(BASE, rate=0.5, min_delta=0.01)
    scheme.epoch_end(0.5)
    scheme.epoch_end(0.505)  # within min_delta
    assert scheme.keep == pytest.approx(0.5)
    scheme.epoch_end(float("nan"))
    assert scheme.keep == pytest.approx(0.25)


def test_validation_switches_on_the_label_term_of_a_pure_kd_run():
    hybrid = HybridLoss(LossWeights(0.0, 1.0, 0.0, 0.0), temperature=2.0, weighting="validation")
    logits, targets, t_logits = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3)
    out = hybrid(logits, targets, t_logits)
    assert out["label"].item() == 0.0 and hybrid.current_weights()["label"] == 0.0
    hybrid.epoch_end(0.4)
    hybrid.epoch_end(0.3)
    out = hybrid(logits, targets, t_logits)
    assert hybrid.current_weights() == pytest.approx(
        {"label": 0.5, "response": 0.5, "feature": 0.0, "relation": 0.0}
    )
    assert out["label"].item() == pytest.approx(label_loss(logits, targets).item())
    expected = 0.5 * out["label"] + 0.5 * out["response"]
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert not hybrid.needs_features  # the scheme never switches on a distillation term


def test_validation_without_distillation_is_fixed():
    base = dict.fromkeys(COMPONENTS, 0.0) | {"label": 1.0}
    scheme = ValidationWeighting(base)
    scheme.epoch_end(0.5)
    scheme.epoch_end(0.1)
    scheme({"label": torch.tensor(2.0)}, base)
    assert scheme.current() == base


def test_validation_rate_must_be_a_fraction():
    with pytest.raises(ConfigError, match="rate must be in"):
        ValidationWeighting(BASE, rate=1.0)
    with pytest.raises(ConfigError, match="min_delta must be >= 0"):
        ValidationWeighting(BASE, min_delta=-0.1)
