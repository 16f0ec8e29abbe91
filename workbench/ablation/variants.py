"""Ablation suites as configs: which variants a suite trains, and their results per seed.

The course exercise is "compare each component's contribution by ablating one component at a
time". A suite trains the same student several times, one run per variant and seed (seed ``s``
shares its initialization and data order across variants, so the variants pair by seed); the
numbers with error bars come from ``workbench.ablation.statistics``.

- **leave-one-out**: ``"full"`` (the base weights), ``"without c"`` for each active component
  ``c``, and ``"label only"``.
- **label only** is the scratch student: label weight 1, nothing else (not the base label
  weight), so it is the same run as a scratch student of the same seed.
- **factorial**: leave-one-out misses interactions (two components that can stand in for each
  other each look useless when removed alone). A factorial suite trains all ``2^k - 1``
  non-empty on/off combinations of the ``k`` active components, for Shapley values.

Everything here is a pure function of configs and run records; nothing trains.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from workbench.config.run_config import COMPONENTS, LossWeights, RunConfig
from workbench.errors import ConfigError, quoted

__all__ = [
    "FULL",
    "LABEL_ONLY",
    "check_ablatable",
    "without_name",
    "coalition_name",
    "leave_one_out_variants",
    "factorial_variants",
    "suite_configs",
    "suite_results",
]

FULL = "full"
LABEL_ONLY = "label only"
SCRATCH = LossWeights(label=1.0, response=0.0, feature=0.0, relation=0.0)


def without_name(component: str) -> str:
    """The name of the leave-one-out variant that switches ``component`` off."""
    return f"without {component}"


def coalition_name(on: Iterable[str], players: Sequence[str]) -> str:
    """The variant name of the coalition ``on`` (the components switched on) out of ``players``.

    Names agree with the leave-one-out suite, so a factorial suite also feeds ``contributions``:
    all players -> ``"full"``; all but ``c`` -> ``"without c"``; one component -> ``"c only"``;
    otherwise the components joined by ``" + "`` in canonical order.
    """
    on_set = set(on)
    unknown = on_set - set(players)
    if unknown:
        raise ValueError(f"components {sorted(unknown)} are not among the players {list(players)}")
    if not on_set:
        raise ValueError("the empty coalition has no variant: it cannot be trained")
    ordered = [p for p in players if p in on_set]
    if len(ordered) == len(players):
        return FULL
    if len(players) >= 2 and len(ordered) == len(players) - 1:
        (off,) = [p for p in players if p not in on_set]
        return without_name(off)
    if len(ordered) == 1:
        return f"{ordered[0]} only"
    return " + ".join(ordered)


def _check_student(base: RunConfig) -> None:
    if base.role != "student":
        raise ConfigError(
            "an ablation suite switches off a student's loss terms: pick a student config, "
            f"got role {base.role!r}"
        )


def check_ablatable(base: RunConfig) -> None:
    """A one-line ``ConfigError`` unless ``base`` is a student with at least two active loss
    components (what a suite switches off one at a time)."""
    _check_student(base)
    active = base.weights.active()
    if len(active) < 2:
        raise ConfigError(
            "an ablation needs at least two loss components with nonzero weight, got only "
            f"{', '.join(active)}; give another a weight, e.g. label=0.5,response=0.5"
        )


def leave_one_out_variants(base: RunConfig) -> dict[str, LossWeights]:
    """The leave-one-out suite of ``base``: ``{variant name: weights}``.

    - ``"full"``: the base weights;
    - ``"without c"`` for each active component ``c`` (its weight 0, the others unchanged),
      skipped when no weight would be left;
    - ``"label only"``: the scratch student, label weight 1 and nothing else (whatever the base
      label weight), the baseline that tells how much distillation adds at all.

    With two active components one ``"without c"`` variant can equal ``"label only"``; both are
    kept so every suite has the same names (the duplicate costs one run per seed).
    """
    _check_student(base)
    weights = base.weights
    variants: dict[str, LossWeights] = {FULL: weights}
    for component in weights.active():
        reduced = weights.without(component)
        if reduced.active():
            variants[without_name(component)] = reduced
    variants[LABEL_ONLY] = SCRATCH
    return variants


def factorial_variants(base: RunConfig) -> dict[str, LossWeights]:
    """All ``2^k - 1`` non-empty on/off combinations of the ``k`` active components of ``base``.

    A component that is on keeps its base weight, except the label-alone coalition, which is the
    scratch student (label weight 1, as in ``leave_one_out_variants``). The all-off combination
    is left out: a loss
    with every weight 0 cannot be trained, and ``factorial_values`` gives it the value of chance
    accuracy ``1 / num_classes``. Names come from ``coalition_name`` (largest coalitions first).
    """
    _check_student(base)
    players = base.weights.active()
    zero = dict.fromkeys(COMPONENTS, 0.0)
    variants: dict[str, LossWeights] = {}
    for size in range(len(players), 0, -1):
        for on in itertools.combinations(players, size):
            values = zero | {c: getattr(base.weights, c) for c in on}
            scratch = on == ("label",)
            variants[coalition_name(on, players)] = SCRATCH if scratch else LossWeights(**values)
    return variants


def suite_configs(
    base: RunConfig, seeds: int = 3, factorial: bool = False
) -> list[tuple[str, RunConfig]]:
    """``(variant name, config)`` for every variant and seed ``0 .. seeds-1`` (variant-major).

    A base with one active component is refused: its variants are that component alone and the
    scratch student (often the same run), so every contribution would be one difference with no
    spread ("± nan")."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a whole number >= 1, got {quoted(seeds)}")
    check_ablatable(base)
    variants = factorial_variants(base) if factorial else leave_one_out_variants(base)
    return [
        (name, base.replace(weights=weights, seed=seed))
        for name, weights in variants.items()
        for seed in range(seeds)
    ]


def suite_results(
    records: Iterable[Mapping[str, Any]], metric: str = "val_acc"
) -> dict[str, dict[int, float]]:
    """``{variant: {seed: metric}}`` from the completed run records of a suite.

    Runs without a variant or without the metric (failed, cancelled, still running) are left
    out, so the statistics see only finished seeds. Keyed by seed, so pairing is by seed.
    """
    results: dict[str, dict[int, float]] = {}
    for record in records:
        variant = record.get("variant")
        value = (record.get("metrics") or {}).get(metric)
        if not variant or record.get("status") != "completed" or value is None:
            continue
        seed = int(record.get("config", {}).get("seed", 0))
        results.setdefault(variant, {})[seed] = float(value)
    return results
