"""What a search varies: the parameters of ``--over``, their ranges, and the config of a trial.

``--over weights,temperature,response_kind`` names the parameters; a number can take its own
range, ``temperature=1:8``, which must lie inside the field's bounds (``workbench.config.bounds``).
Without one, each takes the range of ``DEFAULT_RANGES``:

- ``weights``: the weight of each term the base config turns on, from 0 to 1 (the course's scale:
  its preset weights sum to 1). A term the base leaves at 0 stays off; turn it on in the base to
  search it. With the ``normalized`` weighting scheme the weights are shares, so the same range
  searches the shares.
- ``temperature``: 1 to 10 on a log scale (Hinton et al. 2015 use 1 to 20; small students do best
  at 2 to 8).
- ``response_kind``, ``feature_kind``, ``relation_kind``: every method of the slot
  (``workbench.config.choices``); searched only where the base turns the slot's term on.
- ``dkd_alpha``, ``dkd_beta`` (DKD, Zhao et al. 2022) and ``dist_beta``, ``dist_gamma`` (DIST,
  Huang et al. 2022): suggested only in trials whose response method uses them.

An empty or contradictory space is a one-line ``ConfigError``, before any trial exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workbench.config.bounds import BOUNDS, Bound
from workbench.config.choices import FEATURE_KINDS, RELATION_KINDS, RESPONSE_KINDS
from workbench.config.run_config import LossWeights, RunConfig
from workbench.errors import ConfigError, quoted

__all__ = [
    "DEFAULT_RANGES",
    "KIND_SLOTS",
    "Param",
    "check_space",
    "config_for",
    "params_of",
    "parse_over",
    "prior_params",
    "suggest",
]

# name -> (low, high, log); the weights' range applies to each active weight.
DEFAULT_RANGES: dict[str, tuple[float, float, bool]] = {
    "weights": (0.0, 1.0, False),
    "temperature": (1.0, 10.0, True),
    "dkd_alpha": (0.25, 4.0, True),
    "dkd_beta": (1.0, 16.0, True),
    "dist_beta": (0.25, 4.0, True),
    "dist_gamma": (0.25, 4.0, True),
}
# slot parameter -> (its choices, the loss term it picks the method of)
KIND_SLOTS: dict[str, tuple[tuple[str, ...], str]] = {
    "response_kind": (RESPONSE_KINDS, "response"),
    "feature_kind": (FEATURE_KINDS, "feature"),
    "relation_kind": (RELATION_KINDS, "relation"),
}
# hyperparameter -> the response method that uses it
HYPER_OF: dict[str, str] = {
    "dkd_alpha": "dkd",
    "dkd_beta": "dkd",
    "dist_beta": "dist",
    "dist_gamma": "dist",
}


@dataclass(frozen=True)
class Param:
    """One searched value: a number in ``[low, high]`` (``log``: sampled on a log scale) or one
    of ``choices``. ``name`` is the Optuna parameter: ``weight_label``, ``temperature``, ..."""

    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "choices": list(self.choices),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Param:
        return cls(
            str(data["name"]),
            float(data["low"]),
            float(data["high"]),
            bool(data["log"]),
            tuple(data["choices"]),
        )


def parse_over(text: str, base: RunConfig) -> list[Param]:
    """The parameters ``--over`` names for ``base`` (``weights,temperature=1:8,...``)."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise ConfigError(
            "the search space is empty: choose what to search, e.g. weights,temperature "
            "(--over in the CLI)"
        )
    params: list[Param] = []
    seen: set[str] = set()
    for item in items:
        name, _, span = item.partition("=")
        name = name.strip()
        if name in seen:
            raise ConfigError(f"what to search names {quoted(name)} twice; name it once")
        seen.add(name)
        params.extend(_params_for(name, span.strip(), base))
    check_space(params, base)
    return params


def _params_for(name: str, span: str, base: RunConfig) -> list[Param]:
    if name in KIND_SLOTS:
        if span:
            raise ConfigError(f"{name} takes no range (it is a choice of method), got {span!r}")
        choices, term = KIND_SLOTS[name]
        if getattr(base.weights, term) <= 0:
            raise ConfigError(
                f"{name} is searched but the {term} weight of the base config is 0: give the "
                f"{term} term a weight, or do not search {name}"
            )
        return [Param(name, choices=choices)]
    if name not in DEFAULT_RANGES:
        known = ", ".join([*DEFAULT_RANGES, *KIND_SLOTS])
        raise ConfigError(f"unknown search parameter {quoted(name)}; choose from {known}")
    low, high, log = _range(name, span)
    if name == "weights":
        active = base.weights.active()
        return [Param(f"weight_{term}", low, high, log) for term in active]
    return [Param(name, low, high, log)]


def _range(name: str, span: str) -> tuple[float, float, bool]:
    low, high, log = DEFAULT_RANGES[name]
    if span:
        parts = span.split(":")
        try:
            low, high = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            low = high = math.nan
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"--over {name}={span}: give the range as LOW:HIGH, e.g. {name}=1:8")
        if low >= high:
            raise ConfigError(f"--over {name}={span}: LOW must be below HIGH")
    bound = _bound(name)
    for value in (low, high):
        if not bound.contains(value):
            raise ConfigError(
                f"--over {name}={low:g}:{high:g}: {name} must be {bound.describe()} "
                f"(the field's bounds), got {value:g}"
            )
    return low, high, log and low > 0


def _bound(name: str) -> Bound:
    return BOUNDS["weight" if name == "weights" else name]


def check_space(params: list[Param], base: RunConfig) -> None:
    """Refuse a space that searches nothing, or a hyperparameter no trial can use (``dkd_beta``
    with a ``kd`` response and ``response_kind`` not searched)."""
    names = {p.name for p in params}
    if not params:
        raise ConfigError(
            "the search space is empty: the base config turns no loss term on to weigh; "
            "give a term a weight or search temperature"
        )
    for hyper, kind in HYPER_OF.items():
        if hyper in names and "response_kind" not in names and base.response_kind != kind:
            raise ConfigError(
                f"{hyper} is searched but the response method is {base.response_kind}, which "
                f"does not use it: set the response method to {kind}, or search response_kind too"
            )
        if hyper in names and base.weights.response <= 0:
            raise ConfigError(
                f"{hyper} is searched but the response weight of the base config is 0: give "
                "the response term a weight, or do not search it"
            )
    if "temperature" in names and base.weights.response <= 0:
        raise ConfigError(
            "temperature is searched but no term of the base config uses it (the response "
            "weight is 0): give the response term a weight, or do not search temperature"
        )


def suggest(trial: Any, params: list[Param], base: RunConfig) -> dict[str, Any]:
    """Ask an Optuna ``trial`` for a value of each parameter (a hyperparameter only when the
    trial's response method, searched or ``base``'s, uses it); returns ``{name: value}``."""
    chosen: dict[str, Any] = {}
    for p in params:
        if p.choices:
            chosen[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    kind = chosen.get("response_kind", base.response_kind)
    for p in params:
        if p.choices or HYPER_OF.get(p.name, kind) != kind:
            continue
        chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return chosen


def config_for(base: RunConfig, params: Mapping[str, Any], *, seed: int | None = None) -> RunConfig:
    """``base`` with a trial's ``params`` (and ``seed``) put in. All four weights at 0 is a
    one-line ``ConfigError`` from ``RunConfig`` (the trial fails; the search goes on)."""
    weights = base.weights.as_dict()
    changes: dict[str, Any] = {}
    for name, value in params.items():
        if name.startswith("weight_"):
            weights[name.removeprefix("weight_")] = float(value)
        else:
            changes[name] = value
    if seed is not None:
        changes["seed"] = seed
    return base.replace(weights=LossWeights(**weights), **changes)


def params_of(config: RunConfig, params: list[Param]) -> dict[str, Any]:
    """The values ``config`` has for the searched ``params`` (to enqueue it as a trial)."""
    out: dict[str, Any] = {}
    for p in params:
        if p.name.startswith("weight_"):
            out[p.name] = getattr(config.weights, p.name.removeprefix("weight_"))
        elif p.name in HYPER_OF and config.response_kind != HYPER_OF[p.name]:
            continue
        else:
            out[p.name] = getattr(config, p.name)
    return out


def prior_params(base: RunConfig, params: list[Param]) -> list[dict[str, Any]]:
    """The first trials when an ablation of ``base`` exists: the base itself (the course's
    preset) and each leave-one-out variant (one active weight at 0), as far as the space
    reaches them (a value outside a parameter's range is left to the sampler)."""
    weighted = [p.name.removeprefix("weight_") for p in params if p.name.startswith("weight_")]
    configs = [base]
    if len(base.weights.active()) > 1:
        configs += [base.replace(weights=base.weights.without(t)) for t in weighted]
    out = []
    for config in configs:
        values = params_of(config, params)
        inside = {
            name: value
            for name, value in values.items()
            if _inside(next(p for p in params if p.name == name), value)
        }
        out.append(inside)
    return out


def _inside(p: Param, value: Any) -> bool:
    if p.choices:
        return value in p.choices
    return p.low <= float(value) <= p.high and not (p.log and float(value) <= 0)
