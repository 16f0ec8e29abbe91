"""Ablation suites: which loss component carries the distillation, and how sure are we?

The course exercise is "compare each component's contribution by ablating one component at a
time". A suite trains the same student several times (one run per variant and seed) and this
module turns the final validation accuracies into numbers with error bars:

- **leave-one-out**: the contribution of component ``c`` is
  ``Delta_c = mean acc(full) - mean acc(full without c)``, with a Student-t confidence
  interval over seeds. When both variants ran the same seeds the interval uses the *paired*
  differences ``d_s = acc_s(full) - acc_s(without c)`` (seed ``s`` shares its initialization and
  data order across variants, so pairing removes most of the seed noise):
  ``Delta_c +- t_{1-alpha/2, n-1} * sd(d) / sqrt(n)``. Otherwise it falls back to Welch's
  interval ``+- t_{1-alpha/2, nu} * sqrt(s1^2/n1 + s2^2/n2)`` with the Welch-Satterthwaite
  degrees of freedom ``nu``.
- **factorial + Shapley**: leave-one-out misses interactions (two components that can stand in
  for each other each look useless when removed alone). A factorial suite trains all ``2^k - 1``
  non-empty on/off combinations of the ``k`` active components, and the Shapley value (Shapley,
  1953, "A value for n-person games") shares ``v(all) - v(empty)`` among the components fairly:
  ``phi_i = sum_{S not containing i} |S|! (k-|S|-1)! / k! * (v(S + {i}) - v(S))``.
  The empty coalition (every weight 0) cannot be trained; its value is chance accuracy
  ``1 / num_classes``, the accuracy of a student that learned nothing.

Everything here is a pure function of configs and ``{variant: accuracies}``; nothing trains.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from workbench.config import COMPONENTS, LossWeights, RunConfig
from workbench.errors import ConfigError

__all__ = [
    "FULL",
    "LABEL_ONLY",
    "without_name",
    "coalition_name",
    "leave_one_out_variants",
    "factorial_variants",
    "suite_configs",
    "suite_results",
    "variant_summary",
    "contributions",
    "shapley_values",
    "factorial_values",
]

FULL = "full"
LABEL_ONLY = "label only"

# Accuracies of one variant: a list indexed by seed, or an explicit {seed: accuracy} mapping.
Accuracies = Sequence[float] | Mapping[int, float]


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


def leave_one_out_variants(base: RunConfig) -> dict[str, LossWeights]:
    """The leave-one-out suite of ``base``: ``{variant name: weights}``.

    - ``"full"``: the base weights;
    - ``"without c"`` for each active component ``c`` (its weight 0, the others unchanged),
      skipped when no weight would be left;
    - ``"label only"``: the label term alone, at the base label weight (1.0 if it is 0), the
      scratch-student baseline that tells how much distillation adds at all.

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
    label = weights.label if weights.label > 0 else 1.0
    variants[LABEL_ONLY] = LossWeights(label=label, response=0.0, feature=0.0, relation=0.0)
    return variants


def factorial_variants(base: RunConfig) -> dict[str, LossWeights]:
    """All ``2^k - 1`` non-empty on/off combinations of the ``k`` active components of ``base``.

    A component that is on keeps its base weight. The all-off combination is left out: a loss
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
            variants[coalition_name(on, players)] = LossWeights(**values)
    return variants


def suite_configs(
    base: RunConfig, seeds: int = 3, factorial: bool = False
) -> list[tuple[str, RunConfig]]:
    """``(variant name, config)`` for every variant and seed ``0 .. seeds-1`` (variant-major)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a whole number >= 1, got {seeds!r}")
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


# ---------------------------------------------------------------------- statistics
def _by_seed(values: Accuracies) -> dict[int, float]:
    """Finite accuracies keyed by seed (a list is indexed by seed)."""
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    out = {}
    for seed, value in items:
        if value is not None and math.isfinite(float(value)):
            out[int(seed)] = float(value)
    return out


def variant_summary(results: Mapping[str, Accuracies]) -> pd.DataFrame:
    """One row per variant: ``variant, n, mean, std`` (sample std, ``ddof=1``; NaN when n < 2)."""
    rows = []
    for variant, values in results.items():
        acc = np.array(list(_by_seed(values).values()), dtype=float)
        rows.append(
            {
                "variant": variant,
                "n": len(acc),
                "mean": float(acc.mean()) if len(acc) else math.nan,
                "std": float(acc.std(ddof=1)) if len(acc) >= 2 else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["variant", "n", "mean", "std"])


def _interval(
    full: dict[int, float], reduced: dict[int, float], confidence: float
) -> dict[str, Any]:
    """Difference of means ``full - reduced`` with a t interval: paired by seed when possible."""
    a = np.array(list(full.values()))
    b = np.array(list(reduced.values()))
    row: dict[str, Any] = {
        "mean_full": float(a.mean()) if len(a) else math.nan,
        "mean_without": float(b.mean()) if len(b) else math.nan,
        "contribution": float(a.mean() - b.mean()) if len(a) and len(b) else math.nan,
        "n": 0,
        "half_width": math.nan,
        "method": "",
        "note": "",
    }
    q = 0.5 + confidence / 2  # two-sided: t_{1 - alpha/2}
    if len(full) and set(full) == set(reduced):
        seeds = sorted(full)
        d = np.array([full[s] - reduced[s] for s in seeds])  # paired differences per seed
        row.update(n=len(d), method="paired t")
        if len(d) < 2:
            row["note"] = "one seed: run at least 2 seeds for a confidence interval"
            return row
        row["half_width"] = float(stats.t.ppf(q, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        return row
    row.update(n=min(len(a), len(b)), method="Welch t")
    if len(a) < 2 or len(b) < 2:
        row["note"] = "fewer than 2 seeds in a variant: run at least 2 seeds for an interval"
        return row
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        row["half_width"] = 0.0
        row["note"] = "no spread across seeds"
        return row
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    row["half_width"] = float(stats.t.ppf(q, dof) * se)
    row["note"] = "seeds differ between the variants: unpaired (Welch) interval"
    return row


def contributions(results: Mapping[str, Accuracies], confidence: float = 0.95) -> pd.DataFrame:
    """Leave-one-out contribution of each removed component, with a t confidence interval.

    One row per ``"without c"`` variant in ``results`` (canonical component order), columns
    ``component, contribution, ci_low, ci_high, half_width, n, method, distinguishable,
    mean_full, mean_without, note``. ``contribution = mean acc(full) - mean acc(without c)``:
    positive means the component helps. ``distinguishable`` is True when the interval excludes
    0; with fewer than 2 seeds the interval is NaN, ``distinguishable`` False and ``note`` says
    why. ``n`` is the number of seed pairs (paired) or the smaller variant's number of seeds
    (Welch). ``results`` maps variant -> accuracies (a list indexed by seed, or ``{seed: acc}``);
    non-finite accuracies (failed seeds) are dropped.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if FULL not in results:
        raise ValueError(f"contributions need the {FULL!r} variant; got variants {sorted(results)}")
    full = _by_seed(results[FULL])
    rows = []
    for component in COMPONENTS:
        name = without_name(component)
        if name not in results:
            continue
        row = {"component": component, **_interval(full, _by_seed(results[name]), confidence)}
        half = row["half_width"]
        row["ci_low"] = row["contribution"] - half
        row["ci_high"] = row["contribution"] + half
        row["distinguishable"] = bool(
            math.isfinite(half) and (row["ci_low"] > 0 or row["ci_high"] < 0)
        )
        rows.append(row)
    columns = [
        "component",
        "contribution",
        "ci_low",
        "ci_high",
        "half_width",
        "n",
        "method",
        "distinguishable",
        "mean_full",
        "mean_without",
        "note",
    ]
    return pd.DataFrame(rows, columns=columns)


def shapley_values(
    values: Mapping[frozenset[str], float], players: Iterable[str]
) -> dict[str, float]:
    """Exact Shapley values of the coalition game ``values`` (every subset of ``players``).

    ``phi_i = sum_{S subset of N \\ {i}} |S|! (k - |S| - 1)! / k! * (v(S + {i}) - v(S))``,
    ``k = |N|``. They satisfy efficiency, ``sum_i phi_i = v(N) - v(empty)``; an additive game
    ``v(S) = v0 + sum_{j in S} a_j`` gives ``phi_i = a_i``; cost O(k 2^k).
    """
    players = list(players)
    if len(set(players)) != len(players):
        raise ValueError(f"players must be distinct, got {players}")
    k = len(players)
    missing = [
        sorted(s)
        for size in range(k + 1)
        for s in map(frozenset, itertools.combinations(players, size))
        if s not in values
    ]
    if missing:
        raise ValueError(f"the game needs a value for every coalition; missing {missing}")
    phi = {}
    for i in players:
        others = [p for p in players if p != i]
        total = 0.0
        for size in range(k):
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for s in map(frozenset, itertools.combinations(others, size)):
                total += weight * (values[s | {i}] - values[s])
        phi[i] = total
    return phi


def factorial_values(
    results: Mapping[str, Accuracies], players: Sequence[str], num_classes: int
) -> dict[frozenset[str], float]:
    """The coalition game of a factorial suite: ``v(S)`` = mean accuracy of variant ``S``.

    ``v(empty) = 1 / num_classes`` (chance accuracy; the all-off loss cannot be trained).
    Feed the result to ``shapley_values(values, players)``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    values: dict[frozenset[str], float] = {frozenset(): 1.0 / num_classes}
    missing = []
    for size in range(1, len(players) + 1):
        for on in itertools.combinations(players, size):
            name = coalition_name(on, players)
            acc = list(_by_seed(results.get(name, [])).values())
            if not acc:
                missing.append(name)
                continue
            values[frozenset(on)] = float(np.mean(acc))
    if missing:
        raise ValueError(
            f"the factorial suite has no finished run of variant(s) {missing}: "
            "every combination is needed for Shapley values"
        )
    return values
