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

from workbench.components import COMPONENTS
from workbench.errors import ConfigError

__all__ = [
    "FixedWeighting",
    "UncertaintyWeighting",
    "ValidationWeighting",
    "WEIGHTINGS",
    "list_weightings",
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
    Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

    One learned log-variance ``s_k = log sigma_k^2`` per component with a configured weight
    ``w_k > 0``, initialised to 0, so the first step equals ``fixed``:

        total = sum_k w_k * (exp(-s_k) * L_k + s_k)

    This is the paper's form without its 1/2 factors (the common implementation), which for a
    fixed ``L_k`` is minimised at ``s_k = log L_k``: each term is scaled towards ``w_k``, whatever
    its units. The effective weight recorded by ``current()`` is ``w_k * exp(-s_k)``, at the
    ``s_k`` the latest ``forward`` used. ``total`` can be negative (``s_k < 0``).
    """

    def __init__(self, base: Mapping[str, float]) -> None:
        super().__init__(base)
        self.log_var = nn.Parameter(torch.zeros(len(self.components)))  # [A], s_k
        self._precision: Tensor | None = None  # [A], exp(-s_k) at the latest forward

    def forward(self, terms: Mapping[str, Tensor], base: Mapping[str, float]) -> Tensor:
        w = self.weights(base)
        s = self.log_var  # [A]
        precision = torch.exp(-s)  # [A]
        losses = torch.stack([terms[k].float() for k in self.components])  # [A]
        per_term = precision * losses + s  # [A]
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


class ValidationWeighting(FixedWeighting):
    """Shift weight from the distillation terms to the labels when validation stops improving.

    A soft, validation-triggered form of early-stopped KD (Cho and Hariharan, "On the Efficacy
    of Knowledge Distillation", ICCV 2019, who find that stopping distillation late in training
    helps a student that cannot follow its teacher), with the plateau test of
    ``ReduceLROnPlateau``. After every epoch whose validation accuracy does not beat the best so
    far by more than ``min_delta``, ``keep <- keep * (1 - rate)`` (``keep`` starts at 1), and

        w_k     = keep * base_k                                  (response, feature, relation)
        w_label = base_label + (1 - keep) * sum_k base_k         (k over the same three)

    so the total weight stays the same and no distillation term is switched on that was off. A
    label weight of 0 becomes positive after the first plateau, and the label term is then
    computed. With no distillation term the scheme is ``fixed``.
    """

    def __init__(
        self, base: Mapping[str, float], *, rate: float = 0.5, min_delta: float = 0.0
    ) -> None:
        if not 0.0 < rate < 1.0:
            raise ConfigError(f"the validation weighting rate must be in (0, 1), got {rate!r}")
        if not min_delta >= 0.0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta!r}")
        self.rate = float(rate)
        self.min_delta = float(min_delta)
        self.keep = 1.0
        self.best = -math.inf
        super().__init__(base)

    def weights(self, base: Mapping[str, float]) -> dict[str, float]:
        w = _all_components(base)
        moved = (1.0 - self.keep) * sum(w[k] for k in DISTILLATION)
        out = {k: self.keep * w[k] for k in DISTILLATION}
        return {"label": w["label"] + moved, **out}

    def epoch_end(self, val_acc: float) -> None:
        if val_acc > self.best + self.min_delta:
            self.best = float(val_acc)
        else:  # also a NaN accuracy
            self.keep *= 1.0 - self.rate

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}, min_delta={self.min_delta:g}, keep={self.keep:g}"


WEIGHTINGS: dict[str, type[FixedWeighting]] = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "validation": ValidationWeighting,
}


def list_weightings() -> list[str]:
    return list(WEIGHTINGS)
