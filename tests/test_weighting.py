"""Weighting schemes: formulas recomputed by hand, gradients, and the validation rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workbench.config.run_config import COMPONENTS, LossWeights
from workbench.distill.hybrid import HybridLoss
from workbench.distill.response import label_loss
from workbench.distill.weighting import (
    WEIGHTINGS,
    FixedWeighting,
    NormalizedWeighting,
    UncertaintyWeighting,
    ValidationWeighting,
)
from workbench.errors import ConfigError


@pytest.fixture(autouse=True)
def _seeded():
    """Unseeded draws in these tests are reproducible too."""
    torch.manual_seed(0)


BASE = {"label": 0.3, "response": 0.3, "feature": 0.0, "relation": 0.4}


def _terms(values=(1.5, 0.25, 2.0)) -> dict[str, torch.Tensor]:
    names = ("label", "response", "relation")
    return {k: torch.tensor(v, requires_grad=True) for k, v in zip(names, values, strict=True)}


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_every_scheme_starts_with_the_fixed_gradient_on_each_term(name):
    scheme = WEIGHTINGS[name](BASE)
    assert isinstance(scheme, nn.Module)
    assert scheme.current() == BASE  # before the first step
    assert scheme.needed(BASE) == ("label", "response", "relation")
    terms = _terms()
    total = scheme(terms, BASE)
    total.backward()
    # d total / d L_k at the first step: w_k for fixed, validation and uncertainty (s = 0);
    # w_k / L_k for normalized (the first running magnitude is the term itself).
    for k, term in terms.items():
        expected = BASE[k] / term.item() if name == "normalized" else BASE[k]
        assert term.grad.item() == pytest.approx(expected, rel=1e-6), k
    scheme.epoch_end(0.5)  # every scheme accepts it


def test_fixed_reproduces_the_sum_and_never_changes():
    scheme = FixedWeighting(BASE)
    assert list(scheme.parameters()) == []
    terms = _terms((0.7, 0.1, 3.0))
    scheme.epoch_end(0.1)
    scheme.epoch_end(0.0)
    assert scheme(terms, BASE).item() == pytest.approx(0.3 * 0.7 + 0.3 * 0.1 + 0.4 * 3.0)
    assert scheme.current() == BASE


def _set_log_var(scheme: UncertaintyWeighting, s: list[float]) -> None:
    """Set the bounded log-variances to ``s`` (inverting s = B tanh(rho / B))."""
    b = scheme.bound
    with torch.no_grad():
        scheme.log_var_raw.copy_(torch.tensor([b * math.atanh(v / b) for v in s]))


def test_uncertainty_formula_and_effective_weights():
    scheme = UncertaintyWeighting(BASE)
    assert scheme.log_var_raw.shape == (3,)  # one s_k per component with a weight > 0
    s = [0.5, -1.0, 2.0]
    _set_log_var(scheme, s)
    assert scheme.log_var.tolist() == pytest.approx(s, rel=1e-5)
    terms = _terms((1.5, 0.25, 2.0))
    total = scheme(terms, BASE)
    # Liebel and Koerner: exp(-s) L + ln(1 + exp(s)), by hand.
    expected = sum(
        w * (math.exp(-sk) * loss + math.log1p(math.exp(sk)))
        for w, sk, loss in zip((0.3, 0.3, 0.4), s, (1.5, 0.25, 2.0), strict=True)
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    effective = {"label": 0.3 * math.exp(-0.5), "response": 0.3 * math.exp(1.0)}
    effective |= {"feature": 0.0, "relation": 0.4 * math.exp(-2.0)}
    assert scheme.current() == pytest.approx(effective, rel=1e-5)
    # The weights recorded are those of the latest forward, not the parameters after a step.
    with torch.no_grad():
        scheme.log_var_raw.zero_()
    assert scheme.current() == pytest.approx(effective, rel=1e-5)


def test_uncertainty_gradients_are_analytic():
    scheme = UncertaintyWeighting(BASE)
    s = [0.2, -0.3, 0.7]
    _set_log_var(scheme, s)
    values = (1.5, 0.25, 2.0)
    terms = _terms(values)
    scheme(terms, BASE).backward()
    weights = (0.3, 0.3, 0.4)
    b = scheme.bound
    # d total / d s_k = w_k (-exp(-s_k) L_k + sigmoid(s_k)); ds/drho = 1 - (s/B)^2
    expected = [
        w * (-math.exp(-sk) * v + 1 / (1 + math.exp(-sk))) * (1 - (sk / b) ** 2)
        for w, sk, v in zip(weights, s, values, strict=True)
    ]
    assert scheme.log_var_raw.grad.tolist() == pytest.approx(expected, rel=1e-4)
    for (name, term), w, sk in zip(terms.items(), weights, s, strict=True):
        assert term.grad.item() == pytest.approx(w * math.exp(-sk), rel=1e-5), name


def test_uncertainty_optimum_by_brute_force():
    # For a constant L, exp(-s) L + ln(1 + e^s) is minimised where L = sigma^4 / (1 + sigma^2).
    names, values = ("label", "response", "relation"), (4.0, 0.5, 1.0)
    terms = {k: torch.tensor(v) for k, v in zip(names, values, strict=True)}
    grid = [i / 1000 for i in range(-2500, 2501)]  # inside the default bound ln 20 ~ 3.0
    for k, v in zip(names, values, strict=True):
        f = [math.exp(-s) * v + math.log1p(math.exp(s)) for s in grid]
        best = grid[min(range(len(grid)), key=f.__getitem__)]
        sigma2 = (v + math.sqrt(v * v + 4 * v)) / 2  # root of sigma^4 - v sigma^2 - v = 0
        assert best == pytest.approx(math.log(sigma2), abs=2e-3), k
    scheme = UncertaintyWeighting(BASE)
    optimum = [math.log((v + math.sqrt(v * v + 4 * v)) / 2) for v in values]
    _set_log_var(scheme, optimum)
    scheme(terms, BASE).backward()
    assert scheme.log_var_raw.grad.abs().max().item() < 1e-5


def test_uncertainty_on_a_term_driven_to_zero_stays_bounded_and_nonnegative():
    """The audit's failure: a term the model can drive to 0. Kendall's form sent its weight to
    8e6 and the total below zero; here the total stays >= 0 and the weight within 20x."""
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(5, 2)
    base = {"label": 0.5, "response": 0.5, "feature": 0.0, "relation": 0.0}
    scheme = UncertaintyWeighting(base)
    opt = torch.optim.Adam([*model.parameters(), *scheme.parameters()], lr=0.05)
    totals, weights = [], []
    for _ in range(3000):
        logits = model(x)
        # "response": a term the model can drive to exactly 0 (a squared norm of its weights).
        terms = {"label": label_loss(logits, y), "response": model.weight.pow(2).sum()}
        total = scheme(terms, base)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
        weights.append(scheme.current())
    assert min(totals) >= 0.0
    assert terms["response"].item() < 1e-3  # it was driven towards 0 ...
    bound = 20.0 * (1 + 1e-5)
    for w in weights:  # ... and its weight stayed within w / 20 .. 20 w
        for k in ("label", "response"):
            assert base[k] / bound <= w[k] <= base[k] * bound
    assert weights[-1]["response"] > 0.5 * 10  # it did push towards the bound
    # Kendall's unguarded form on the same toy goes negative: the guard is what keeps it >= 0.
    s = torch.tensor(-3.0)
    assert (torch.exp(-s) * 1e-4 + s).item() < 0


def test_uncertainty_bound_must_be_positive():
    with pytest.raises(ConfigError, match="bound"):
        UncertaintyWeighting(BASE, bound=0.0)


def test_normalized_is_invariant_to_the_scale_of_each_term():
    """Terms in other units (x1000) give the same training: same weights after every step."""

    def train(scale: dict[str, float]) -> list[torch.Tensor]:
        torch.manual_seed(1)
        x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        target = torch.randn(32, 3)
        model = nn.Linear(4, 3)
        base = {"label": 0.6, "response": 0.4, "feature": 0.0, "relation": 0.0}
        scheme = NormalizedWeighting(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        contributions = []
        for _ in range(20):
            logits = model(x)
            terms = {
                "label": scale["label"] * label_loss(logits, y),
                "response": scale["response"] * (logits - target).pow(2).mean(),
            }
            total = scheme(terms, base)
            opt.zero_grad()
            total.backward()
            opt.step()
            w = scheme.current()
            contributions.append(torch.tensor([w[k] * terms[k].item() for k in base if base[k]]))
        return [*contributions, model.weight.detach().clone()]

    plain = train({"label": 1.0, "response": 1.0})
    scaled = train({"label": 1.0, "response": 1000.0})
    for a, b in zip(plain, scaled, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # Under fixed weighting the x1000 term would dominate; here each contributes ~ its weight.
    assert plain[0].tolist() == pytest.approx([0.6, 0.4], rel=1e-6)


def test_normalized_running_magnitude_by_hand():
    base = {"label": 0.5, "response": 0.5, "feature": 0.0, "relation": 0.0}
    scheme = NormalizedWeighting(base, momentum=0.9)
    seq = [(2.0, 10.0), (1.0, 20.0), (4.0, 5.0)]
    m = None
    for a, b in seq:
        terms = {"label": torch.tensor(a, requires_grad=True), "response": torch.tensor(b)}
        total = scheme(terms, base)
        m = [a, b] if m is None else [0.9 * m[0] + 0.1 * a, 0.9 * m[1] + 0.1 * b]
        assert scheme.magnitude.tolist() == pytest.approx(m, rel=1e-6)
        assert total.item() == pytest.approx(0.5 * a / m[0] + 0.5 * b / m[1], rel=1e-6)
        total.backward()
        assert terms["label"].grad.item() == pytest.approx(0.5 / m[0], rel=1e-6)  # m: no grad
    scheme.eval()  # evaluation passes do not move the estimate
    scheme({"label": torch.tensor(100.0), "response": torch.tensor(100.0)}, base)
    assert scheme.magnitude.tolist() == pytest.approx(m, rel=1e-6)
    assert set(dict(scheme.named_buffers())) == {"magnitude", "count"}


def test_uncertainty_parameters_belong_to_the_hybrid_loss_and_train():
    hybrid = HybridLoss(LossWeights(0.5, 0.5, 0.0, 0.0), temperature=2.0, weighting="uncertainty")
    params = dict(hybrid.named_parameters())
    assert list(params) == ["scheme.log_var_raw"]
    assert params["scheme.log_var_raw"].shape == (2,)
    logits, targets = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 0])
    out = hybrid(logits, targets, torch.randn(4, 3))
    out["total"].backward()
    grad = hybrid.scheme.log_var_raw.grad
    assert grad is not None and (grad != 0).all()  # an optimizer over parameters() moves them
    weights = hybrid.current_weights()
    assert weights["feature"] == 0.0 and weights["relation"] == 0.0
    assert weights["label"] == pytest.approx(0.5) and weights["response"] == pytest.approx(0.5)


def test_validation_lowers_then_raises_by_the_bold_driver_rule():
    scheme = ValidationWeighting(BASE, rate=0.5)  # keep_max = min(2, 1 + 0.3 / 0.7)
    terms = _terms()
    scheme.epoch_end(0.5)  # the first epoch has nothing to compare with: unchanged
    scheme(terms, BASE)
    assert scheme.current() == pytest.approx(BASE)
    # Independent re-implementation of the rule, step by step.
    keep, direction, prev = 1.0, -1, 0.5
    seen = []
    for acc in (0.6, 0.55, 0.58, 0.58, 0.7, 0.71, 0.72, 0.73):
        if not acc > prev:
            direction = -direction
        keep = min(1 + 0.3 / 0.7, max(0.1, keep * 0.5 ** (-direction)))
        prev = acc
        scheme.epoch_end(acc)
        total = scheme(terms, BASE)
        moved = (1 - keep) * 0.7
        w = {"label": 0.3 + moved, "response": 0.3 * keep, "feature": 0.0, "relation": 0.4 * keep}
        assert scheme.current() == pytest.approx(w)
        assert sum(scheme.current().values()) == pytest.approx(sum(BASE.values()))
        assert total.item() == pytest.approx(
            w["label"] * 1.5 + w["response"] * 0.25 + w["relation"] * 2.0, rel=1e-6
        )
        assert all(v >= 0 for v in scheme.current().values())
        seen.append(scheme.keep)
    # It went down, came back up to its upper bound, then down to its floor: not the one-way
    # ratchet of the old rule.
    assert seen[:3] == pytest.approx([0.5, 1.0, 1 + 0.3 / 0.7])
    assert seen[-1] == pytest.approx(0.1)


def test_validation_stays_within_its_bounds():
    scheme = ValidationWeighting(BASE, rate=0.5, keep_min=0.2)
    for i in range(30):  # never improving: the direction flips every epoch
        scheme.epoch_end(0.5 - 0.01 * (i % 2))
        assert 0.2 <= scheme.keep <= 1 + 0.3 / 0.7
    scheme = ValidationWeighting(BASE, rate=0.5, keep_min=0.2)
    scheme.epoch_end(0.1)
    scheme.epoch_end(0.2)  # improving keeps lowering ...
    scheme.epoch_end(0.3)
    scheme.epoch_end(0.4)
    assert scheme.keep == pytest.approx(0.2)  # ... to the floor, not to 0


def test_validation_min_delta_and_nan_count_as_no_improvement():
    scheme = ValidationWeighting(BASE, rate=0.5, min_delta=0.01)
    scheme.epoch_end(0.5)
    scheme.epoch_end(0.505)  # within min_delta: reverse the first direction, raise
    assert scheme.keep == pytest.approx(min(2.0, 1 + 0.3 / 0.7))
    scheme.epoch_end(float("nan"))  # no improvement: reverse again, lower
    assert scheme.keep == pytest.approx(min(2.0, 1 + 0.3 / 0.7) * 0.5)


def test_validation_switches_on_the_label_term_of_a_pure_kd_run():
    hybrid = HybridLoss(LossWeights(0.0, 1.0, 0.0, 0.0), temperature=2.0, weighting="validation")
    logits, targets, t_logits = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3)
    out = hybrid(logits, targets, t_logits)
    assert out["label"].item() == 0.0 and hybrid.current_weights()["label"] == 0.0
    hybrid.epoch_end(0.3)
    hybrid.epoch_end(0.4)  # improved: keep going down, keep = 0.75
    out = hybrid(logits, targets, t_logits)
    assert hybrid.current_weights() == pytest.approx(
        {"label": 0.25, "response": 0.75, "feature": 0.0, "relation": 0.0}
    )
    assert out["label"].item() == pytest.approx(label_loss(logits, targets).item())
    expected = 0.25 * out["label"] + 0.75 * out["response"]
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
    with pytest.raises(ConfigError, match="keep_min <= 1 <= keep_max"):
        ValidationWeighting(BASE, keep_min=0.0)
