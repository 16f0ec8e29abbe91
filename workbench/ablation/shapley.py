"""Shapley values of a factorial suite with a seed-level interval, and where they part ways with
leave-one-out.

- **seed interval**: seed ``s`` trained every combination with the same initialization and data
  order, so it is one play of the game: ``phi_i^s`` is the Shapley value of the game
  ``v_s(S) = acc_s(S)`` (``workbench.ablation.statistics.shapley_values``). The Shapley value is
  linear in ``v``, so the mean of ``phi_i^s`` over the seeds that ran every combination is the
  Shapley value of the mean game, and its spread gives the Student-t interval
  ``mean +- t_{1-alpha/2, n-1} sd / sqrt(n)``, as for a leave-one-out contribution.
- **interactions**: leave-one-out measures one step, ``v(N) - v(N - {i})``; Shapley averages
  ``v(S + {i}) - v(S)`` over every ``S``. They agree when the game is additive. When they differ
  in sign or by a lot, the component interacts with the others (it can stand in for another,
  or get in its way), and neither number alone tells its whole story.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from workbench.ablation.statistics import (
    SHAPLEY_BASELINES,
    Accuracies,
    factorial_values,
    game_players,
    shapley_values,
)
from workbench.ablation.variants import LABEL_ONLY

__all__ = [
    "BASELINE_SENTENCES",
    "SHAPLEY_COLUMNS",
    "interaction_notes",
    "shapley_intervals",
]

SHAPLEY_COLUMNS = ["component", "shapley", "ci_low", "ci_high", "half_width", "n", "sd"]

BASELINE_SENTENCES = {
    LABEL_ONLY: (
        "Shapley values are measured against the label only student (trained from the labels "
        "alone, with no teacher): each is what that component adds on average over every "
        "combination of the others, and together they add up to full - label only."
    ),
    "chance": (
        "Shapley values are measured against chance accuracy (1 / classes, the loss with every "
        "weight 0, which cannot be trained): the label term shares the credit for the student "
        "learning at all, and together they add up to full - chance."
    ),
}

# A difference below this (accuracy as a fraction: one point) is not worth a note.
NOTE_FLOOR = 0.01


def _seed_games(results: Mapping[str, Accuracies]) -> dict[int, dict[str, dict[int, float]]]:
    """``{seed: {variant: {seed: accuracy}}}``: the results split into one game per seed."""
    out: dict[int, dict[str, dict[int, float]]] = {}
    for variant, values in results.items():
        items = values.items() if isinstance(values, Mapping) else enumerate(values)
        for seed, value in items:
            if value is not None and math.isfinite(float(value)):
                out.setdefault(int(seed), {})[variant] = {int(seed): float(value)}
    return out


def shapley_intervals(
    results: Mapping[str, Accuracies],
    players: Sequence[str],
    num_classes: int,
    baseline: str = LABEL_ONLY,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per player of the game under ``baseline``: the mean of the per-seed Shapley
    values over the ``n`` seeds that ran every combination, its t interval (NaN with fewer than
    2 seeds or no spread) and the per-seed standard deviation ``sd``. Empty when no seed ran
    every combination (or the game has no player)."""
    if baseline not in SHAPLEY_BASELINES:
        raise ValueError(f"baseline must be one of {SHAPLEY_BASELINES}, got {baseline!r}")
    game = game_players(players, baseline)
    per_seed: list[dict[str, float]] = []
    for _, seed_results in sorted(_seed_games(results).items()):
        try:
            values = factorial_values(seed_results, players, num_classes, baseline=baseline)
        except ValueError:  # this seed has not run every combination (yet)
            continue
        per_seed.append(shapley_values(values, game))
    if not per_seed or not game:
        return pd.DataFrame(columns=SHAPLEY_COLUMNS)
    q = 0.5 + confidence / 2
    rows = []
    for player in game:
        phi = np.array([s[player] for s in per_seed])
        n = len(phi)
        sd = float(phi.std(ddof=1)) if n >= 2 else math.nan
        half = math.nan
        if n >= 2 and sd > 1e-9:
            half = float(stats.t.ppf(q, n - 1) * sd / math.sqrt(n))
        mean = float(phi.mean())
        rows.append(
            {
                "component": player,
                "shapley": mean,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "half_width": half,
                "n": n,
                "sd": sd,
            }
        )
    return pd.DataFrame(rows, columns=SHAPLEY_COLUMNS)


def interaction_notes(
    shapley: Mapping[str, float], leave_one_out: Mapping[str, float], floor: float = NOTE_FLOOR
) -> list[dict[str, object]]:
    """A note for each component whose Shapley value and leave-one-out contribution disagree:
    in sign (the larger of the two at least ``floor``), or by a lot (they differ by at least
    ``floor`` and by more than half the larger). ``[{"component", "shapley", "leave_one_out",
    "text"}]`` in the order of ``shapley``."""
    notes = []
    for component, phi in shapley.items():
        loo = leave_one_out.get(component)
        if loo is None or not (math.isfinite(phi) and math.isfinite(loo)):
            continue
        larger = max(abs(phi), abs(loo))
        opposite = phi * loo < 0 and larger >= floor
        apart = abs(phi - loo) >= max(floor, 0.5 * larger)
        if not (opposite or apart):
            continue
        how = "have opposite signs" if opposite else "differ by a lot"
        text = (
            f"{component}: Shapley {100 * phi:+.1f} and leave-one-out {100 * loo:+.1f} points "
            f"{how}. The component interacts with the others: leave-one-out is only the last "
            "step (full against full without it), Shapley its effect averaged over every "
            "combination, so it "
            + (
                "helps in some combinations and not once the others are on."
                if phi > loo
                else "matters more once the others are on than on its own."
            )
        )
        notes.append({"component": component, "shapley": phi, "leave_one_out": loo, "text": text})
    return notes
