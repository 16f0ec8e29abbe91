"""From form values to what the library takes: run configs from the Distill page's fields, a
teacher run from an uploaded checkpoint.

A form is a flat mapping of ``RunConfig`` field values (``weights`` as a dict). Each field is
validated on its own, on top of the defaults, so that an error can be shown next to the widget
that caused it; what only fails in combination is reported under ``"form"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from workbench.config.run_config import BOUNDS, COMPONENTS, LossWeights, RunConfig
from workbench.errors import ConfigError, WorkbenchError

if TYPE_CHECKING:
    pass

__all__ = [
    "FIELDS",
    "MAX_SEEDS",
    "FormError",
    "build_configs",
    "field_errors",
    "hybrid_formula",
    "pairs_from_rows",
    "parse_seeds",
]

FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
MAX_SEEDS = 20
# A field that is only valid together with another one is checked with it.
_CHECKED_WITH = {
    "dataset": ("data_path",),
    "data_path": ("dataset",),
    "weights": ("role",),
    "role": ("weights",),
    "warmup_epochs": ("epochs",),
    "milestones": ("epochs",),
    "schedule": ("epochs",),
}
# Fields that are only meaningful together: each is always checked with the others (a multistep
# schedule needs milestones, milestones need that schedule), whether or not they are valid alone.
_CHECKED_TOGETHER = {"schedule": ("milestones",), "milestones": ("schedule",)}


class FormError(ConfigError):
    """One or more form fields are invalid; ``errors`` maps a field (or ``"form"``) to a message."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(self.errors.values()))


def parse_seeds(text: str | int) -> tuple[int, ...]:
    """``"3"`` is three seeds ``(0, 1, 2)``; a comma list ``"0, 4, 7"`` (or ``"5,"``) is those seeds."""
    raw = str(text).strip()
    how = f"seeds: give a number of seeds (1 to {MAX_SEEDS}) or a comma list of seeds like 0, 4, 7"
    if not raw:
        raise FormError({"seeds": f"{how}; the field is empty"})
    if "," not in raw:
        try:
            count = int(raw)
        except ValueError:
            raise FormError({"seeds": f"{how}; got {raw!r}"}) from None
        if not 1 <= count <= MAX_SEEDS:
            raise FormError({"seeds": f"{how}; got {count}"})
        return tuple(range(count))
    seeds = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            seed = int(part)
        except ValueError:
            raise FormError({"seeds": f"{how}; {part!r} is not a whole number"}) from None
        if not BOUNDS["seed"].contains(seed):
            raise FormError({"seeds": f"seeds must be {BOUNDS['seed'].describe()}, got {seed}"})
        seeds.append(seed)
    if not seeds:
        raise FormError({"seeds": f"{how}; got {raw!r}"})
    if len(set(seeds)) != len(seeds):
        raise FormError({"seeds": f"each seed once, please: {raw!r} repeats a seed"})
    if len(seeds) > MAX_SEEDS:
        raise FormError({"seeds": f"at most {MAX_SEEDS} seeds at once, got {len(seeds)}"})
    return tuple(seeds)


def pairs_from_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, str], ...]:
    """Rows ``{"student": path, "teacher": path}`` of the layer-pair table -> layer pairs.

    Blank rows are skipped; a row with only one side filled in is an error.
    """
    pairs = []
    for number, row in enumerate(rows, start=1):
        student, teacher = (_cell(row.get(side)) for side in ("student", "teacher"))
        if not student and not teacher:
            continue
        if not student or not teacher:
            missing = "student" if not student else "teacher"
            raise FormError(
                {
                    "layer_pairs": f"layer pair row {number} has no {missing} layer: pick one or "
                    "delete the row"
                }
            )
        pairs.append((student, teacher))
    return tuple(pairs)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    return str(value).strip()


def field_errors(values: Mapping[str, Any]) -> dict[str, str]:
    """A message for each field of ``values`` that is invalid on the defaults, checked together
    with the fields it depends on (``_CHECKED_WITH``) that are valid themselves, so that one bad
    value is reported under its own field only."""
    unknown = [name for name in values if name not in FIELDS]
    errors = {
        name: f"{name} is not a run setting; valid ones: {', '.join(FIELDS)}" for name in unknown
    }
    alone = {name: _error({name: values[name]}) for name in values if name in FIELDS}
    for name, value in values.items():
        if name not in FIELDS:
            continue
        with_fields = {
            k: values[k] for k in _CHECKED_WITH.get(name, ()) if k in values and not alone[k]
        }
        with_fields.update({k: values[k] for k in _CHECKED_TOGETHER.get(name, ()) if k in values})
        message = _error({name: value, **with_fields}) if with_fields else alone[name]
        if message:
            errors[name] = message
    return errors


def _error(fields: Mapping[str, Any]) -> str | None:
    try:
        RunConfig(**fields)  # every wrong type or value is a one-line ConfigError
    except WorkbenchError as exc:
        return str(exc)
    return None


def build_configs(values: Mapping[str, Any], seeds: Iterable[int]) -> list[RunConfig]:
    """One ``RunConfig`` per seed from the form ``values``; a ``FormError`` says what to fix."""
    errors = field_errors(values)
    if errors:
        raise FormError(errors)
    try:
        base = RunConfig(**values)
        return [base.replace(seed=seed) for seed in seeds]
    except WorkbenchError as exc:
        raise FormError({"form": str(exc)}) from None


def hybrid_formula(
    weights: LossWeights | Mapping[str, float],
    temperature: float,
    *,
    feature_kind: str = "cosine",
    relation_kind: str = "sp",
    response_kind: str = "kd",
) -> str:
    """The hybrid loss with the current numbers, as LaTeX (Hinton's T^2 KL for the response,
    the method's name for another response kind)."""
    w = weights.as_dict() if isinstance(weights, LossWeights) else dict(weights)
    t = f"{temperature:g}"
    terms = {
        "label": r"\mathrm{CE}(y,\, z_s)",
        "response": rf"{t}^2\, \mathrm{{KL}}\big(\sigma(z_t/{t}) \,\|\, \sigma(z_s/{t})\big)",
        "feature": rf"\mathcal{{L}}_{{\mathrm{{feat}}}}^{{\mathrm{{{feature_kind}}}}}",
        "relation": rf"\mathcal{{L}}_{{\mathrm{{rel}}}}^{{\mathrm{{{relation_kind}}}}}",
    }
    if response_kind != "kd":
        terms["response"] = rf"\mathcal{{L}}_{{\mathrm{{resp}}}}^{{\mathrm{{{response_kind}}}}}"
    parts = []
    for name in COMPONENTS:
        value = float(w.get(name, 0.0))
        part = rf"{value:g} \cdot {terms[name]}"
        parts.append(part if value > 0 else rf"{{\color{{gray}} {part}}}")
    return r"\mathcal{L} = " + " + ".join(parts)
