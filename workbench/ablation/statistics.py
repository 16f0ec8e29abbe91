"""Ablation statistics: which loss component carries the distillation, and how sure are we?

These turn the final validation accuracies of a suite (``workbench.ablation.variants``) into
numbers with error bars:

- **leave-one-out**: the contribution of component ``c`` is the mean over the seeds both
  variants ran of the paired differences ``d_s = acc_s(full) - acc_s(without c)`` (seed ``s``
  shares its initialization and data order across variants, so pairing removes most of the
  seed noise), with the Student-t interval ``mean(d) +- t_{1-alpha/2, n-1} sd(d) / sqrt(n)``
  and its two-sided p-value. Seeds only one variant ran are left out and named (there is no
  unpaired fallback: it would mix seed noise back in). Differences with zero spread have no t
  interval (NaN, never "distinguishable"). The components of one suite are tested together,
  so ``distinguishable`` uses Holm-Bonferroni adjusted p-values (Holm, "A simple sequentially
  rejective multiple test procedure", Scand. J. Statistics 1979).
- **per image**: beside the seed interval, McNemar's test on the same test images (McNemar,
  Psychometrika 1947) pooled over the shared seeds: ``b`` images the full variant gets right and
  the reduced one wrong, ``c`` the reverse; exact two-sided binomial p-value
  ``min(1, 2 P(X <= min(b, c)))``, ``X ~ Bin(b + c, 1/2)``. It answers "do the two students
  differ on these images?", not "would another seed differ?" (pooled image x seed pairs are
  not independent; the seed interval answers the second question).
- **noise floor**: the binomial standard error ``sqrt(p (1 - p) / N_test)`` of one run's
  accuracy on the test split, the seed-to-seed standard deviation, and per component the
  number of seeds at which the observed mean difference would clear its t interval.
- **Shapley**: over a factorial suite, the Shapley value (Shapley, 1953, "A value for n-person
  games") shares ``v(all) - v(empty)`` among the components fairly:
  ``phi_i = sum_{S not containing i} |S|! (k-|S|-1)! / k! * (v(S + {i}) - v(S))``.
  Two baselines, labelled: ``"chance"``, where the empty coalition (every weight 0, which cannot
  be trained) has chance accuracy ``1 / num_classes`` (label and response then share the credit
  for "the student can learn at all"), and ``"label only"``, where the label term is always on
  and the game is over the distillation components, ``v(empty)`` being the scratch student.

Everything here is a pure function of ``{variant: accuracies}``; nothing trains.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from workbench.ablation.variants import FULL, LABEL_ONLY, coalition_name, without_name
from workbench.config.run_config import COMPONENTS

__all__ = [
    "CONTRIBUTION_COLUMNS",
    "PerImage",
    "SHAPLEY_BASELINES",
    "variant_summary",
    "contributions",
    "shapley_values",
    "factorial_values",
    "holm_bonferroni",
    "mcnemar_exact",
    "paired_correct",
    "noise_floor",
    "paired_comparison",
    "seeds_needed",
    "shapley_tables",
    "game_players",
]

SHAPLEY_BASELINES = ("chance", LABEL_ONLY)

# Accuracies of one variant: a list indexed by seed, or an explicit {seed: accuracy} mapping.
Accuracies = Sequence[float] | Mapping[int, float]


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


def holm_bonferroni(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting where ``adj < alpha`` controls
    the family-wise error rate at ``alpha``. NaN (untested) stays NaN and does not count in ``m``.
    """
    finite = [(p, i) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    finite.sort()
    m = len(finite)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs:
    ``min(1, 2 P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``; 1.0 when ``b + c = 0``.

    The exact test is valid for every count (the chi-square approximation needs ``b + c`` of
    about 25 or more), and cheap, so it is used always."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), n, 0.5)))


# Per-image correctness of one variant: {seed: [0/1 per test image, in the split's order]}.
PerImage = Mapping[int, Sequence[int]]


def paired_correct(full: PerImage, reduced: PerImage) -> dict[str, int]:
    """Discordant counts pooled over the seeds both variants have per-image results for.

    ``b``: images the full variant classifies right and the reduced one wrong; ``c``: the
    reverse; ``pairs``: image x seed pairs compared; ``seeds``: how many seeds were pooled.
    """
    b = c = pairs = 0
    shared = sorted(set(full) & set(reduced))
    for seed in shared:
        f = np.asarray(full[seed], dtype=bool)
        r = np.asarray(reduced[seed], dtype=bool)
        if f.shape != r.shape:
            raise ValueError(
                f"seed {seed}: {f.size} vs {r.size} per-image results; both variants must be "
                "evaluated on the same test images"
            )
        b += int((f & ~r).sum())
        c += int((~f & r).sum())
        pairs += f.size
    return {"b": b, "c": c, "pairs": pairs, "seeds": len(shared)}


def seeds_needed(
    mean_diff: float, sd_diff: float, confidence: float = 0.95, limit: int = 1000
) -> float:
    """The smallest number of seeds ``n >= 2`` whose paired t interval
    ``t_{1-alpha/2, n-1} sd / sqrt(n)`` is narrower than ``|mean_diff|``, taking the observed
    mean and standard deviation of the differences as the truth (a planning figure, not a
    power analysis). ``inf`` when the mean is 0 or ``limit`` seeds would not do; NaN when the
    standard deviation is unknown; 2 for zero spread."""
    if not (math.isfinite(mean_diff) and math.isfinite(sd_diff)):
        return math.nan
    if sd_diff <= _ZERO_SPREAD:
        return 2.0 if mean_diff != 0 else math.inf
    q = 0.5 + confidence / 2
    for n in range(2, limit + 1):
        if stats.t.ppf(q, n - 1) * sd_diff / math.sqrt(n) < abs(mean_diff):
            return float(n)
    return math.inf


def noise_floor(accuracies: Accuracies, n_test: int | None) -> dict[str, float]:
    """How large an effect must be to be seen: ``binomial_se``, the standard error
    ``sqrt(p (1 - p) / n_test)`` of one run's accuracy ``p`` (the mean over seeds) measured on
    ``n_test`` images, and ``seed_sd``, the seed-to-seed standard deviation (``ddof=1``) of the
    accuracies given. NaN where not computable."""
    acc = np.array(list(_by_seed(accuracies).values()), dtype=float)
    p = float(acc.mean()) if len(acc) else math.nan
    se = math.sqrt(p * (1 - p) / n_test) if n_test and math.isfinite(p) else math.nan
    sd = float(acc.std(ddof=1)) if len(acc) >= 2 else math.nan
    return {"accuracy": p, "n_test": n_test or 0, "binomial_se": se, "seed_sd": sd}


# Accuracies are multiples of 1 / N_test (>= 1e-6 for any split); a spread below this is the
# rounding of float differences, not seed-to-seed variation.
_ZERO_SPREAD = 1e-9


def _interval(
    full: dict[int, float], reduced: dict[int, float], confidence: float
) -> dict[str, Any]:
    """Paired difference ``full - reduced`` over the seeds both ran, with a t interval."""
    shared = sorted(set(full) & set(reduced))
    only = sorted(set(full) ^ set(reduced))
    d = np.array([full[s] - reduced[s] for s in shared])  # paired differences per seed
    row: dict[str, Any] = {
        "mean_full": float(np.mean([full[s] for s in shared])) if shared else math.nan,
        "mean_without": float(np.mean([reduced[s] for s in shared])) if shared else math.nan,
        "contribution": float(d.mean()) if len(d) else math.nan,
        "n": len(d),
        "sd_diff": float(d.std(ddof=1)) if len(d) >= 2 else math.nan,
        "half_width": math.nan,
        "p_value": math.nan,
        "method": "paired t",
        "note": "",
    }
    notes = []
    if only:
        notes.append(f"seed(s) {only} ran in one variant only and are left out")
    if len(d) < 2:
        notes.append(
            "no seed ran in both variants"
            if not len(d)
            else "one shared seed: run at least 2 seeds for a confidence interval"
        )
    elif row["sd_diff"] <= _ZERO_SPREAD:
        notes.append(
            "no spread across seeds: a t interval cannot be computed (see the per-image test)"
        )
    else:
        q = 0.5 + confidence / 2  # two-sided: t_{1 - alpha/2}
        se = row["sd_diff"] / math.sqrt(len(d))
        row["half_width"] = float(stats.t.ppf(q, len(d) - 1) * se)
        row["p_value"] = float(2 * stats.t.sf(abs(row["contribution"]) / se, len(d) - 1))
    row["note"] = "; ".join(notes)
    return row


def paired_comparison(
    results: Mapping[str, Accuracies],
    a: str,
    b: str,
    confidence: float = 0.95,
    per_image: Mapping[str, PerImage] | None = None,
) -> dict[str, Any]:
    """One comparison of variant ``a`` against variant ``b`` (e.g. ``"full"`` against
    ``"label only"``: what distillation adds as a whole), with the same statistics as one row
    of ``contributions``: ``contribution = mean acc(a) - acc(b)`` over the shared seeds, its
    paired t interval and p-value (unadjusted: a single test), and McNemar's ``b, c, p``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    for name in (a, b):
        if name not in results:
            raise ValueError(f"no variant {name!r}; got variants {sorted(results)}")
    row = _interval(_by_seed(results[a]), _by_seed(results[b]), confidence)
    row["ci_low"] = row["contribution"] - row["half_width"]
    row["ci_high"] = row["contribution"] + row["half_width"]
    row["seeds_needed"] = seeds_needed(row["contribution"], row["sd_diff"], confidence)
    row.update(b=math.nan, c=math.nan, pairs=0, p_mcnemar=math.nan)
    if per_image and a in per_image and b in per_image:
        counts = paired_correct(per_image[a], per_image[b])
        if counts["pairs"]:
            row.update(
                b=counts["b"],
                c=counts["c"],
                pairs=counts["pairs"],
                p_mcnemar=mcnemar_exact(counts["b"], counts["c"]),
            )
    p = row["p_value"]
    row["distinguishable"] = bool(math.isfinite(p) and p < 1.0 - confidence)
    return row


CONTRIBUTION_COLUMNS = [
    "component", "contribution", "ci_low", "ci_high", "half_width", "n", "p_value", "p_holm",
    "distinguishable", "seeds_needed", "sd_diff", "b", "c", "pairs", "p_mcnemar",
    "p_mcnemar_holm", "method", "mean_full", "mean_without", "note",
]  # fmt: skip


def _per_image_test(per_image: Mapping[str, PerImage] | None, name: str) -> dict[str, Any]:
    """McNemar's columns for variant ``name`` against the full one (NaN without per-image
    results for both)."""
    empty = {"b": math.nan, "c": math.nan, "pairs": 0, "p_mcnemar": math.nan}
    if not per_image or FULL not in per_image or name not in per_image:
        return empty
    counts = paired_correct(per_image[FULL], per_image[name])
    if not counts["pairs"]:
        return empty
    return {
        "b": counts["b"],
        "c": counts["c"],
        "pairs": counts["pairs"],
        "p_mcnemar": mcnemar_exact(counts["b"], counts["c"]),
    }


def contributions(
    results: Mapping[str, Accuracies],
    confidence: float = 0.95,
    per_image: Mapping[str, PerImage] | None = None,
) -> pd.DataFrame:
    """Leave-one-out contribution of each removed component, with a paired t interval, Holm
    correction and (given per-image results) McNemar's test.

    One row per ``"without c"`` variant in ``results`` (canonical component order), columns
    ``component, contribution, ci_low, ci_high, half_width, n, p_value, p_holm,
    distinguishable, seeds_needed, sd_diff, b, c, pairs, p_mcnemar, p_mcnemar_holm, method,
    mean_full, mean_without, note``. ``contribution`` is the mean paired difference
    ``acc(full) - acc(without c)`` over the ``n`` seeds both ran: positive means the component
    helps. ``ci_*`` is the unadjusted t interval; ``distinguishable`` is True when the Holm-
    adjusted p-value (over the components of this table) is below ``1 - confidence``. Zero
    spread or fewer than 2 shared seeds: NaN interval, not distinguishable, and ``note`` says
    why. ``per_image`` maps variant -> ``{seed: [0/1 per test image]}``; without it the McNemar
    columns are NaN. ``results`` maps variant -> accuracies (a list indexed by seed, or
    ``{seed: acc}``); non-finite accuracies (failed seeds) are dropped.
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
        row["seeds_needed"] = seeds_needed(row["contribution"], row["sd_diff"], confidence)
        row.update(_per_image_test(per_image, name))
        rows.append(row)
    alpha = 1.0 - confidence
    for key, adjusted in (("p_value", "p_holm"), ("p_mcnemar", "p_mcnemar_holm")):
        for row, p in zip(rows, holm_bonferroni([r[key] for r in rows]), strict=True):
            row[adjusted] = p
    for row in rows:
        row["distinguishable"] = bool(math.isfinite(row["p_holm"]) and row["p_holm"] < alpha)
    return pd.DataFrame(rows, columns=CONTRIBUTION_COLUMNS)


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
    results: Mapping[str, Accuracies],
    players: Sequence[str],
    num_classes: int,
    baseline: str = "chance",
) -> dict[frozenset[str], float]:
    """The coalition game of a factorial suite: ``v(S)`` = mean accuracy of variant ``S``.

    - ``baseline="chance"``: the game over ``players``, ``v(empty) = 1 / num_classes`` (chance
      accuracy; the all-off loss cannot be trained).
    - ``baseline="label only"``: the label term is always on; the game is over the other
      players, ``v(S)`` is the accuracy of ``S`` plus label, and ``v(empty)`` is the scratch
      student (the ``"label only"`` variant). The Shapley values then say what each
      distillation component adds to a student that learns from the labels anyway.

    Feed the result to ``shapley_values(values, game_players(players, baseline))``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if baseline not in SHAPLEY_BASELINES:
        raise ValueError(f"baseline must be one of {SHAPLEY_BASELINES}, got {baseline!r}")
    players = list(players)
    game = game_players(players, baseline)
    always = [p for p in players if p not in game]  # label, under the label-only baseline
    values: dict[frozenset[str], float] = {}
    missing = []
    for size in range(len(game) + 1):
        for on in itertools.combinations(game, size):
            if not on and baseline == "chance":
                values[frozenset()] = 1.0 / num_classes
                continue
            # Under the label-only baseline v(empty) is the scratch student: the label-alone
            # coalition of the suite, or the "label only" variant when label is not a player.
            coalition = (*always, *on)
            name = coalition_name(coalition, players) if coalition else LABEL_ONLY
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


def game_players(players: Sequence[str], baseline: str) -> list[str]:
    """The players of the Shapley game under ``baseline``: all of them against chance, all but
    the label term against the label-only student."""
    return [p for p in players if not (baseline == LABEL_ONLY and p == "label")]


def shapley_tables(
    results: Mapping[str, Accuracies], players: Sequence[str], num_classes: int
) -> dict[str, dict[str, float] | None]:
    """Shapley values under both baselines, ``{"chance": {...}, "label only": {...}}``; a
    baseline whose runs are missing (or with no player left) gives None."""
    out: dict[str, dict[str, float] | None] = {}
    for baseline in SHAPLEY_BASELINES:
        game = game_players(players, baseline)
        try:
            values = factorial_values(results, players, num_classes, baseline=baseline)
        except ValueError:
            out[baseline] = None
            continue
        out[baseline] = shapley_values(values, game) if game else None
    return out
