"""Weighting schemes: how ``HybridLoss`` turns its terms into one total.

Every scheme is an ``nn.Module`` built from the configured weights ``base`` (a dict over
``config.COMPONENTS``), with

- ``needed(base) -> tuple[str, ...]``: the components to compute this step (host-side, no sync);
- ``forward(terms, base) -> Tensor``: the total from the computed terms (scalars);
- ``current() -> dict[str, float]``: the effective weight of every component at the latest
  ``forward`` (before the first one: at initialisation); it may sync the device;
- ``epoch_end(val_acc)``: the validation accuracy of the epoch that just ended.

A scheme's parameters (if any) are parameters of the ``HybridLoss`` that holds it, so the
engine's optimizer, built over ``hybrid.parameters()``, trains them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from workbench.config.loss_terms import COMPONENTS
from workbench.errors import ConfigError

__all__ = [
    "FixedWeighting",
    "NormalizedWeighting",
    "UncertaintyWeighting",
    "ValidationWeighting",
    "WEIGHTINGS",
]

DISTILLATION = ("response", "feature", "relation")


def _all_components(base: Mapping[str, float]) -> dict[str, float]:
    return {k: float(base.get(k, 0.0)) for k in COMPONENTS}


class FixedWeighting(nn.Module):
    """The configured weights, unchanged: ``total = sum_k w_k L_k``."""

    def __init__(self, base: Mapping[str, float]) -> None:
        super().__init__()
        self.components = tuple(k for k, w in _all_components(base).items() if w > 0)
        self._used = self.weights(base)

    def weights(self, base: Mapping[str, float]) -> dict[str, float]:
        """The weights this scheme applies to ``base``, as far as the host knows them."""
        return _all_components(base)

    def needed(self, base: Mapping[str, float]) -> tuple[str, ...]:
        return tuple(k for k, w in self.weights(base).items() if w > 0)

    def forward(self, terms: Mapping[str, Tensor], base: Mapping[str, float]) -> Tensor:
        w = self.weights(base)
        self._used = w
        parts = [weight * terms[k] for k, weight in w.items() if weight > 0]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    def current(self) -> dict[str, float]:
        return dict(self._used)

    def epoch_end(self, val_acc: float) -> None:
        """Fixed weights ignore validation."""


class UncertaintyWeighting(FixedWeighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task Learning Using
    Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018) with the positive
    regulariser of Liebel and Koerner ("Auxiliary Tasks in Multi-task Learning", arXiv 2018) and
    bounded log-variances.

    One learned log-variance ``s_k = log sigma_k^2`` per component with a configured weight
    ``w_k > 0``:

        s_k   = B * tanh(rho_k / B)                      (rho_k the parameter, initialised to 0)
        total = sum_k w_k * (exp(-s_k) * L_k + ln(1 + exp(s_k)))

    - Kendall et al.'s regulariser ``s_k`` is unbounded below: a term the model can drive to 0
      pulls ``s_k -> -inf``, its weight ``exp(-s_k) -> inf`` and the total below any bound
      (measured: weight 8e6, negative totals). Liebel and Koerner's ``ln(1 + sigma^2)`` is
      positive, so with ``L_k >= 0`` the total is ``>= 0`` always.
    - ``|s_k| < B`` (``B = bound``, default ``ln 20``): each effective weight stays within
      ``w_k / 20 .. 20 w_k``. The tanh keeps a gradient everywhere (a clamp would freeze a
      log-variance that crossed the bound); near 0 it is the identity.

    The paper's 1/2 factors are left out (the common implementation), so at initialisation
    (``s = 0``) the gradient on every term is ``w_k``, as with ``fixed`` (the total differs by the
    constant ``ln 2 * sum_k w_k``). For a fixed ``L_k`` the total is minimised where
    ``L_k = sigma^4 / (1 + sigma^2)`` (``sigma^2 = exp(s_k)``), which for large ``L_k`` is close to
    Kendall's ``sigma^2 = L_k``. ``current()`` records ``w_k * exp(-s_k)`` at the ``s_k`` the latest
    ``forward`` used.

    The log-variances are trained by the run's optimizer at the run's learning rate, so how far
    they move depends on ``lr x steps`` (at lr 2e-3 and a few hundred steps, at most about 0.7):
    short runs stay close to ``fixed``.
    """

    def __init__(self, base: Mapping[str, float], *, bound: float = math.log(20.0)) -> None:
        if not (math.isfinite(bound) and bound > 0):
            raise ConfigError(f"the log-variance bound must be > 0, got {bound!r}")
        super().__init__(base)
        self.bound = float(bound)
        self.log_var_raw = nn.Parameter(torch.zeros(len(self.components)))  # [A], rho_k
        self._precision: Tensor | None = None  # [A], exp(-s_k) at the latest forward

    @property
    def log_var(self) -> Tensor:
        """The bounded log-variances ``s_k = B tanh(rho_k / B)`` [A]."""
        return self.bound * torch.tanh(self.log_var_raw / self.bound)

    def forward(self, terms: Mapping[str, Tensor], base: Mapping[str, float]) -> Tensor:
        w = self.weights(base)
        s = self.log_var  # [A]
        precision = torch.exp(-s)  # [A]
        losses = torch.stack([terms[k].float() for k in self.components])  # [A]
        per_term = precision * losses + nn.functional.softplus(s)  # [A], softplus = ln(1 + e^s)
        total = w[self.components[0]] * per_term[0]
        for i, k in enumerate(self.components[1:], start=1):
            total = total + w[k] * per_term[i]
        self._used = w
        self._precision = precision.detach()  # a new tensor: the optimizer step won't change it
        return total

    def current(self) -> dict[str, float]:
        if self._precision is None:
            return dict(self._used)
        precision = dict(zip(self.components, self._precision.tolist(), strict=True))
        return {k: self._used[k] * precision.get(k, 0.0) for k in COMPONENTS}

    def extra_repr(self) -> str:
        return f"bound={self.bound:g}"


class NormalizedWeighting(FixedWeighting):
    """Each term divided by a running, gradient-free estimate of its own magnitude, so that the
    configured weights are shares of the total:

        m_k   <- L_k                               at the first training step,
        m_k   <- beta * m_k + (1 - beta) * L_k     afterwards (``L_k`` detached; ``beta = 0.9``),
        total  = sum_k w_k * L_k / max(m_k, eps)

    ``m_k`` is updated before it is used, in training mode only, and carries no gradient, so
    the gradient of term ``k`` is ``w_k / m_k * grad L_k``: a term measured in other units (x1000)
    trains the student exactly as before, and each term contributes ``~w_k`` to a total of
    ``~sum_k w_k``. This is loss-magnitude normalisation as in the loss ratios of
    Groenendijk, Karaoglu, Gevers and Mensink ("Multi-Loss Weighting with Coefficient of
    Variations", WACV 2021), without their variation-based weights. It equalises the terms'
    *values*, not their gradients: the gradient shares (``workbench.distill.gradient_shares``) still differ
    when one term's loss is flatter than another's. ``current()`` records ``w_k / m_k``.
    The running magnitudes are buffers (saved with the loss's state).
    """

    def __init__(
        self, base: Mapping[str, float], *, momentum: float = 0.9, eps: float = 1e-12
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"the normalization momentum must be in [0, 1), got {momentum!r}")
        super().__init__(base)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.register_buffer("magnitude", torch.ones(len(self.components)))  # [A], m_k
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # training steps seen
        self._scale: Tensor | None = None  # [A], 1 / m_k at the latest forward

    def forward(self, terms: Mapping[str, Tensor], base: Mapping[str, float]) -> Tensor:
        w = self.weights(base)
        losses = torch.stack([terms[k].float() for k in self.components])  # [A]
        if self.training:
            with torch.no_grad():
                seen = losses.detach().to(self.magnitude.dtype)
                ema = self.momentum * self.magnitude + (1.0 - self.momentum) * seen
                # torch.where, not an if on count: no host sync.
                self.magnitude.copy_(torch.where(self.count == 0, seen, ema))
                self.count.add_(1)
        scale = 1.0 / self.magnitude.clamp_min(self.eps)  # [A], detached (a buffer)
        scaled = losses * scale  # [A]
        total = w[self.components[0]] * scaled[0]
        for i, k in enumerate(self.components[1:], start=1):
            total = total + w[k] * scaled[i]
        self._used = w
        self._scale = scale.clone()
        return total

    def current(self) -> dict[str, float]:
        if self._scale is None:
            return dict(self._used)
        scale = dict(zip(self.components, self._scale.tolist(), strict=True))
        return {k: self._used[k] * scale.get(k, 0.0) for k in COMPONENTS}

    def extra_repr(self) -> str:
        return f"momentum={self.momentum:g}"


class ValidationWeighting(FixedWeighting):
    """Move weight between the distillation terms and the labels by hill-climbing on the
    validation accuracy, within bounds.

    The rule is the "bold driver" of learning-rate adaptation (Vogl, Mangis, Rigler, Zink and
    Alkon, "Accelerating the convergence of the back-propagation method", Biological
    Cybernetics 1988; Battiti, "Accelerated backpropagation learning: two optimization
    methods", Complex Systems 1989) applied to the distillation multiplier ``keep`` (start 1).
    After each epoch from the second on:

        improved  = val_acc > previous epoch's val_acc + min_delta   (NaN: not improved)
        direction = direction if improved else -direction            (first direction: -1)
        keep      = clip(keep * (1 - rate) ** (-direction), keep_min, keep_max)

    so a change that helped is repeated and one that hurt is undone and reversed: weights go
    down *and* up (the previous rule only ever lowered them, 0.3 -> ~0 by epoch 20, ending as
    label-only training). The first move lowers distillation, as early-stopped KD suggests
    (Cho and Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019). Then

        w_k     = keep * base_k                                  (response, feature, relation)
        w_label = base_label + (1 - keep) * sum_k base_k         (k over the same three)

    so the total weight is constant. ``keep_min`` (default 0.1) keeps distillation from being
    switched off; ``keep_max`` is the smaller of the given bound (default 2) and
    ``1 + base_label / sum_k base_k`` (the label weight stays >= 0). A distillation term that
    was off stays off; a label weight of 0 becomes positive once ``keep < 1``. With no
    distillation term the scheme is ``fixed``.

    It must be fed the accuracy of a validation split that is not the reported one (the test
    split), or the reported number is tuned on. Validation accuracy is noisy, so near a plateau
    ``keep`` wanders within its bounds.
    """

    def __init__(
        self,
        base: Mapping[str, float],
        *,
        rate: float = 0.25,
        min_delta: float = 0.0,
        keep_min: float = 0.1,
        keep_max: float = 2.0,
    ) -> None:
        if not 0.0 < rate < 1.0:
            raise ConfigError(f"the validation weighting rate must be in (0, 1), got {rate!r}")
        if not min_delta >= 0.0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta!r}")
        if not 0.0 < keep_min <= 1.0 <= keep_max:
            raise ConfigError(
                f"the validation weighting bounds need 0 < keep_min <= 1 <= keep_max, got "
                f"{keep_min!r} and {keep_max!r}"
            )
        self.rate = float(rate)
        self.min_delta = float(min_delta)
        w = _all_components(base)
        distill = sum(w[k] for k in DISTILLATION)
        self.keep_min = float(keep_min)
        self.keep_max = float(keep_max) if distill == 0 else min(keep_max, 1 + w["label"] / distill)
        self.keep = 1.0
        self.direction = -1
        self.previous: float | None = None
        super().__init__(base)

    def weights(self, base: Mapping[str, float]) -> dict[str, float]:
        w = _all_components(base)
        moved = (1.0 - self.keep) * sum(w[k] for k in DISTILLATION)
        out = {k: self.keep * w[k] for k in DISTILLATION}
        return {"label": max(0.0, w["label"] + moved), **out}

    def epoch_end(self, val_acc: float) -> None:
        acc = float(val_acc)
        if self.previous is not None:
            improved = acc > self.previous + self.min_delta  # False for NaN
            if not improved:
                self.direction = -self.direction
            factor = (1.0 - self.rate) ** (-self.direction)
            self.keep = min(self.keep_max, max(self.keep_min, self.keep * factor))
        self.previous = acc if math.isfinite(acc) else -math.inf

    def get_extra_state(self) -> dict[str, float]:
        """Host-side state, kept in ``state_dict()`` so a resumed run continues exactly."""
        return {"keep": self.keep, "direction": self.direction, "previous": self.previous}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.keep, self.direction = float(state["keep"]), int(state["direction"])
        self.previous = None if state["previous"] is None else float(state["previous"])

    def extra_repr(self) -> str:
        return (
            f"rate={self.rate:g}, min_delta={self.min_delta:g}, keep={self.keep:g} "
            f"in [{self.keep_min:g}, {self.keep_max:g}]"
        )


WEIGHTINGS: dict[str, type[FixedWeighting]] = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "normalized": NormalizedWeighting,
    "validation": ValidationWeighting,
}
