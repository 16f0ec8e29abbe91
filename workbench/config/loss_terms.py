"""The four terms of the hybrid loss and their weights (``LossWeights``).

A leaf module: ``config`` (which validates a run against the loss registries) and ``losses`` /
``weighting`` (which build those registries over these components) both import it, so neither
imports the other in a cycle. ``workbench.config.run_config`` re-exports everything here.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workbench.config.bounds import BOUNDS, check_bound, show
from workbench.errors import ConfigError, UnknownNameError, quoted

__all__ = ["COMPONENTS", "LossWeights", "parse_weights", "weights_from_mapping"]

COMPONENTS = ("label", "response", "feature", "relation")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms of the hybrid loss (total = sum of weight * term)."""

    label: float = 0.3
    response: float = 0.3
    feature: float = 0.2
    relation: float = 0.2

    def __post_init__(self) -> None:
        # Whole numbers become floats, so that LossWeights(1, 0, 0, 0) and (1.0, 0.0, 0.0, 0.0)
        # are one config with one fingerprint; anything else is left for validate() to refuse.
        for name in COMPONENTS:
            object.__setattr__(self, name, as_float(getattr(self, name)))

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in COMPONENTS}

    def active(self) -> tuple[str, ...]:
        """The components with a non-zero weight, in canonical order."""
        return tuple(name for name in COMPONENTS if getattr(self, name) > 0)

    def without(self, component: str) -> LossWeights:
        """The same weights with one component switched off (an ablation)."""
        return dataclasses.replace(self, **{component: 0.0})

    def validate(self) -> None:
        for name in COMPONENTS:
            check_bound(f"weight {name}", getattr(self, name), BOUNDS["weight"])
        if not self.active():
            raise ConfigError(
                "all loss weights are zero: give at least one of label, response, feature, "
                "relation a weight > 0"
            )


def as_float(value: Any) -> Any:
    """A whole number (not a bool) as a float; any other value unchanged (validation refuses it
    with a message, this only normalizes)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # 2**2000: too large for a float, refused by its bound
            return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool | float):
        return float(value)  # e.g. numpy.float32 from a form
    return value


def weights_from_mapping(values: Mapping[str, Any]) -> LossWeights:
    """``{"label": 0.5, "response": 0.5}`` (TOML, JSON, a form) -> ``LossWeights``; a component
    left out is 0, as in ``parse_weights``. Unknown names and non-numbers are refused."""
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"weights must be a table of label, response, feature, relation, got {show(values)}"
        )
    for name in values:
        if name not in COMPONENTS:
            raise UnknownNameError("loss component", str(name), COMPONENTS)
    weights = LossWeights(**{name: values.get(name, 0.0) for name in COMPONENTS})
    weights.validate()
    return weights


def parse_weights(text: str) -> LossWeights:
    """Parse ``label=0.3,response=0.3,feature=0.2,relation=0.2``; missing names are 0, a name
    given twice is refused (the second value would silently win)."""
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"weights must look like label=0.3,response=0.7; got {quoted(part)}")
        if name not in COMPONENTS:
            raise UnknownNameError("loss component", name, COMPONENTS)
        if name in values:
            raise ConfigError(f"weight {name} is given twice in {quoted(text)}; give it once")
        try:
            values[name] = float(raw)
        except ValueError:
            bound = BOUNDS["weight"].describe()
            raise ConfigError(f"weight {name} must be {bound}, got {quoted(raw.strip())}") from None
    return weights_from_mapping(values)
