from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from workbench.ablation.statistics import (
    SHAPLEY_BASELINES,
    contributions,
    factorial_values,
    holm_bonferroni,
    mcnemar_exact,
    noise_floor,
    paired_comparison,
    paired_correct,
    seeds_needed,
    shapley_tables,
    shapley_values,
    variant_summary,
)
from workbench.ablation.variants import (
    coalition_name,
    factorial_variants,
    leave_one_out_variants,
    suite_configs,
    suite_results,
)
from workbench.config.run_config import COMPONENTS, LossWeights, RunConfig
from workbench.errors import ConfigError


@pytest.fixture
def base():
    """A student config with weights label 0.3, response 0.5, feature 0, relation 0.2."""
    return RunConfig(weights=LossWeights(0.3, 0.5, 0.0, 0.2), temperature=3.0, epochs=2)


def w(label: float, response: float, feature: float, relation: float) -> LossWeights:
    return LossWeights(label, response, feature, relation)


# ---------------------------------------------------------------------- variants
def test_leave_one_out_skips_inactive_components(base):
    variants = leave_one_out_variants(base)
    assert variants == {
        "full": w(0.3, 0.5, 0.0, 0.2),
        "without label": w(0.0, 0.5, 0.0, 0.2),
        "without response": w(0.3, 0.0, 0.0, 0.2),
        "without relation": w(0.3, 0.5, 0.0, 0.0),
        "label only": w(1.0, 0.0, 0.0, 0.0),  # the scratch student, not the base label weight
    }
    assert list(variants) == [
        "full",
        "without label",
        "without response",
        "without relation",
        "label only",
    ]


def test_leave_one_out_without_label_weight(base):
    kd_only = base.replace(weights=w(0.0, 1.0, 0.0, 0.0))
    # "without response" would leave no weight at all; "label only" is the scratch student
    assert leave_one_out_variants(kd_only) == {
        "full": w(0.0, 1.0, 0.0, 0.0),
        "label only": w(1.0, 0.0, 0.0, 0.0),
    }


def test_factorial_variants_of_three_active_components(base):
    variants = factorial_variants(base)
    assert variants == {
        "full": w(0.3, 0.5, 0.0, 0.2),
        "without relation": w(0.3, 0.5, 0.0, 0.0),
        "without response": w(0.3, 0.0, 0.0, 0.2),
        "without label": w(0.0, 0.5, 0.0, 0.2),
        "label only": w(1.0, 0.0, 0.0, 0.0),
        "response only": w(0.0, 0.5, 0.0, 0.0),
        "relation only": w(0.0, 0.0, 0.0, 0.2),
    }


def test_factorial_variants_of_four_components(base):
    variants = factorial_variants(base.replace(weights=w(0.3, 0.3, 0.2, 0.2)))
    assert len(variants) == 2**4 - 1
    assert variants["label + feature"] == w(0.3, 0.0, 0.2, 0.0)
    assert all(v.active() for v in variants.values())
    # each non-empty subset exactly once
    assert len({v.active() for v in variants.values()}) == 15


def test_coalition_names():
    players = ("label", "response")
    assert coalition_name({"label", "response"}, players) == "full"
    assert coalition_name({"label"}, players) == "without response"
    assert coalition_name({"response"}, ("response",)) == "full"
    assert coalition_name({"feature"}, COMPONENTS) == "feature only"
    assert coalition_name({"relation", "label"}, COMPONENTS) == "label + relation"
    with pytest.raises(ValueError, match="empty coalition"):
        coalition_name(set(), players)


def test_suite_configs_seeds_and_weights(base):
    configs = suite_configs(base, seeds=3)
    variants = leave_one_out_variants(base)
    assert len(configs) == len(variants) * 3
    assert [(name, c.seed) for name, c in configs[:3]] == [("full", 0), ("full", 1), ("full", 2)]
    for name, config in configs:
        assert config.weights == variants[name]
        assert (config.temperature, config.epochs, config.student) == (3.0, 2, base.student)
    assert len(suite_configs(base, seeds=2, factorial=True)) == 7 * 2


def test_suite_configs_rejects_bad_input(base):
    with pytest.raises(ConfigError, match="seeds"):
        suite_configs(base, seeds=0)
    teacher = base.replace(role="teacher", weights=w(1.0, 0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="student"):
        suite_configs(teacher)


def test_suite_results_keeps_completed_runs_by_seed():
    def record(variant, seed, status="completed", acc=0.9):
        return {
            "variant": variant,
            "status": status,
            "config": {"seed": seed},
            "metrics": {"val_acc": acc} if status == "completed" else {},
        }

    records = [
        record("full", 0, acc=0.9),
        record("full", 1, acc=0.8),
        record("full", 2, status="failed"),
        record("without label", 1, acc=0.7),
        record(None, 0),
    ]
    assert suite_results(records) == {"full": {0: 0.9, 1: 0.8}, "without label": {1: 0.7}}


# ---------------------------------------------------------------------- statistics
def test_variant_summary():
    table = variant_summary({"full": [0.8, 0.9], "label only": [0.7], "x": [float("nan"), 0.5]})
    assert list(table.columns) == ["variant", "n", "mean", "std"]
    full = table.set_index("variant").loc["full"]
    assert full["n"] == 2 and full["mean"] == pytest.approx(0.85)
    assert full["std"] == pytest.approx(math.sqrt(((0.05) ** 2 * 2) / 1))
    assert math.isnan(table.set_index("variant").loc["label only", "std"])
    assert table.set_index("variant").loc["x", "n"] == 1  # the failed seed is dropped


def test_paired_interval_by_hand():
    # differences per seed [0.02, 0.04, 0.03]: mean 0.03, sd 0.01,
    # t(0.975, df=2) = 4.302653, half-width = 4.302653 * 0.01 / sqrt(3) = 0.024841
    results = {"full": [0.80, 0.82, 0.81], "without feature": [0.78, 0.78, 0.78]}
    row = contributions(results).iloc[0]
    assert row["component"] == "feature"
    assert row["method"] == "paired t"
    assert row["n"] == 3
    assert row["contribution"] == pytest.approx(0.03)
    assert stats.t.ppf(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert row["half_width"] == pytest.approx(0.024841, abs=1e-6)
    assert row["ci_low"] == pytest.approx(0.03 - 0.024841, abs=1e-6)
    assert row["ci_high"] == pytest.approx(0.03 + 0.024841, abs=1e-6)
    assert bool(row["distinguishable"])
    # at 99% the interval widens past 0: t(0.995, 2) = 9.924843, half-width 0.057301
    row99 = contributions(results, confidence=0.99).iloc[0]
    assert row99["half_width"] == pytest.approx(0.057301, abs=1e-6)
    assert not row99["distinguishable"]


def test_pairs_on_the_shared_seeds_when_one_is_missing():
    """Seed 2 failed in the reduced variant: pair seeds 0, 1, 3 (no unpaired Welch fallback)."""
    full = {0: 0.80, 1: 0.82, 2: 0.95, 3: 0.81}
    without = {0: 0.78, 1: 0.79, 3: 0.77}
    row = contributions({"full": full, "without response": without}).iloc[0]
    assert row["method"] == "paired t" and row["n"] == 3
    ref = stats.ttest_rel([0.80, 0.82, 0.81], [0.78, 0.79, 0.77])  # scipy's paired test
    low, high = ref.confidence_interval(0.95)
    assert row["contribution"] == pytest.approx(0.03)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert row["p_value"] == pytest.approx(ref.pvalue)
    assert row["mean_full"] == pytest.approx(0.81)  # over the shared seeds only
    assert "[2]" in row["note"]


def test_one_seed_gives_no_interval():
    row = contributions({"full": [0.9], "without label": [0.8]}).iloc[0]
    assert row["contribution"] == pytest.approx(0.1)
    assert math.isnan(row["half_width"]) and math.isnan(row["ci_low"])
    assert not row["distinguishable"]
    assert "2 seeds" in row["note"]
    none = contributions({"full": {0: 0.9}, "without label": {1: 0.8}}).iloc[0]
    assert none["n"] == 0 and math.isnan(none["contribution"]) and not none["distinguishable"]


def test_zero_spread_is_not_distinguishable():
    row = contributions({"full": [0.9, 0.91, 0.92], "without label": [0.8, 0.81, 0.82]}).iloc[0]
    assert row["contribution"] == pytest.approx(0.1)
    assert math.isnan(row["half_width"]) and math.isnan(row["p_value"])
    assert not row["distinguishable"] and "no spread" in row["note"]


def test_holm_bonferroni_by_hand():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(.., 1*0.5)
    adjusted = holm_bonferroni([0.03, 0.5, 0.01, 0.02, math.nan])
    assert adjusted[:4] == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert math.isnan(adjusted[4])
    assert holm_bonferroni([0.4, 0.5]) == pytest.approx([0.8, 0.8])  # monotone, capped at 1
    assert holm_bonferroni([0.9, 0.6]) == pytest.approx([1.0, 1.0])


def test_distinguishable_uses_holm_over_the_components():
    # Two components, each with unadjusted p just under 0.05: Holm lifts the larger one.
    results = {
        "full": [0.80, 0.82, 0.81, 0.83],
        "without label": [0.70, 0.73, 0.70, 0.74],
        "without response": [0.79, 0.80, 0.81, 0.80],
    }
    table = contributions(results).set_index("component")
    p = {c: stats.ttest_rel(results["full"], results[f"without {c}"]).pvalue for c in table.index}
    assert table["p_value"].to_dict() == pytest.approx(p)
    ordered = sorted(p.items(), key=lambda kv: kv[1])
    holm = {ordered[0][0]: 2 * ordered[0][1]}
    holm[ordered[1][0]] = max(holm[ordered[0][0]], ordered[1][1])
    assert table["p_holm"].to_dict() == pytest.approx(holm)
    for c in table.index:
        assert bool(table.loc[c, "distinguishable"]) == (holm[c] < 0.05)


def test_mcnemar_exact_against_scipy_and_by_hand():
    # b = 1, c = 6: P(X <= 1), X ~ Bin(7, 1/2) = (1 + 7) / 128, two-sided 0.125
    assert mcnemar_exact(1, 6) == pytest.approx(16 / 128)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    for b, c in [(0, 9), (3, 12), (40, 61), (7, 2)]:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)


def test_per_image_test_pooled_over_shared_seeds():
    rng = np.random.default_rng(0)
    full = {s: rng.integers(0, 2, 50).tolist() for s in range(3)}
    without = {s: rng.integers(0, 2, 50).tolist() for s in (0, 1)}  # seed 2 missing
    counts = paired_correct(full, without)
    b = sum(int(f and not r) for s in (0, 1) for f, r in zip(full[s], without[s], strict=True))
    c = sum(int(r and not f) for s in (0, 1) for f, r in zip(full[s], without[s], strict=True))
    assert counts == {"b": b, "c": c, "pairs": 100, "seeds": 2}
    results = {"full": [0.5, 0.6, 0.7], "without label": [0.4, 0.55]}
    row = contributions(results, per_image={"full": full, "without label": without}).iloc[0]
    assert (row["b"], row["c"], row["pairs"]) == (b, c, 100)
    assert row["p_mcnemar"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)
    with pytest.raises(ValueError, match="same test images"):
        paired_correct({0: [1, 0]}, {0: [1]})


def test_noise_floor_and_seeds_needed():
    floor = noise_floor([0.9, 0.92, 0.94], n_test=360)
    assert floor["binomial_se"] == pytest.approx(math.sqrt(0.92 * 0.08 / 360))
    assert floor["seed_sd"] == pytest.approx(0.02)
    # seeds_needed: smallest n with t_{0.975, n-1} * sd / sqrt(n) < |mean|, checked by brute force
    for mean, sd in [(0.01, 0.01), (0.003, 0.01), (0.05, 0.01)]:
        n = seeds_needed(mean, sd)
        assert stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) < mean
        if n > 2:
            assert stats.t.ppf(0.975, n - 2) * sd / math.sqrt(n - 1) >= mean
    assert seeds_needed(0.0, 0.01) == math.inf
    assert math.isnan(seeds_needed(0.01, math.nan))


def test_contributions_need_full():
    with pytest.raises(ValueError, match="full"):
        contributions({"without label": [0.8, 0.9]})


# Synthetic additive score: acc(S) = 0.5 + sum of the parts of the components in S,
# plus a seed effect shared by every variant (what pairing removes).
PARTS = {"label": 0.25, "response": 0.125, "feature": 0.0, "relation": 0.0625}
SEED_EFFECT = [0.0, 0.01, -0.02]


def additive(on) -> float:
    return 0.5 + sum(PARTS[c] for c in on)


def test_leave_one_out_on_additive_score(base):
    full = base.replace(weights=w(0.3, 0.3, 0.2, 0.2))
    results = {
        name: [additive(weights.active()) + e for e in SEED_EFFECT]
        for name, weights in leave_one_out_variants(full).items()
    }
    table = contributions(results).set_index("component")
    assert list(table.index) == list(COMPONENTS)
    for component, part in PARTS.items():
        assert table.loc[component, "contribution"] == pytest.approx(part)
        # The seed effect cancels in the pairs: zero spread, so no interval and no verdict.
        assert not bool(table.loc[component, "distinguishable"])


# ---------------------------------------------------------------------- Shapley values
def shapley_by_permutations(values, players):
    """Reference: the average marginal contribution over all k! orders of joining."""
    phi = dict.fromkeys(players, 0.0)
    orders = list(itertools.permutations(players))
    for order in orders:
        joined: frozenset[str] = frozenset()
        for p in order:
            phi[p] += values[joined | {p}] - values[joined]
            joined = joined | {p}
    return {p: v / len(orders) for p, v in phi.items()}


def all_coalitions(players):
    return [
        frozenset(s) for n in range(len(players) + 1) for s in itertools.combinations(players, n)
    ]


def test_shapley_of_additive_game_is_each_part():
    values = {s: additive(s) for s in all_coalitions(COMPONENTS)}
    phi = shapley_values(values, COMPONENTS)
    assert phi == pytest.approx(PARTS)
    assert sum(phi.values()) == pytest.approx(values[frozenset(COMPONENTS)] - values[frozenset()])


def test_shapley_of_two_player_and_game():
    # v(S) = 1 only when both a and b are in: each gets half
    values = {s: float({"a", "b"} <= s) for s in all_coalitions("ab")}
    assert shapley_values(values, ["a", "b"]) == pytest.approx({"a": 0.5, "b": 0.5})


def test_shapley_three_players_by_hand():
    v = {
        frozenset(): 0.0,
        frozenset("a"): 0.1,
        frozenset("b"): 0.2,
        frozenset("c"): 0.0,
        frozenset("ab"): 0.5,
        frozenset("ac"): 0.1,
        frozenset("bc"): 0.2,
        frozenset("abc"): 0.6,
    }
    # weights |S|!(2-|S|)!/3!: 1/3 for |S| = 0, 1/6 for |S| = 1, 1/3 for |S| = 2
    # phi_a = 0.1/3 + (0.5-0.2)/6 + (0.1-0.0)/6 + (0.6-0.2)/3 = 7/30
    # phi_b = 0.2/3 + (0.5-0.1)/6 + (0.2-0.0)/6 + (0.6-0.1)/3 = 10/30
    # phi_c = 0.0/3 + (0.1-0.1)/6 + (0.2-0.2)/6 + (0.6-0.5)/3 = 1/30      (sum 0.6 = v(abc))
    phi = shapley_values(v, "abc")
    assert phi == pytest.approx({"a": 7 / 30, "b": 10 / 30, "c": 1 / 30})


def test_shapley_matches_permutation_reference_on_a_random_game():
    rng = np.random.default_rng(0)
    values = {s: float(rng.uniform()) for s in all_coalitions(COMPONENTS)}
    assert shapley_values(values, COMPONENTS) == pytest.approx(
        shapley_by_permutations(values, COMPONENTS)
    )


def test_shapley_needs_every_coalition():
    values = {frozenset(): 0.0, frozenset("a"): 1.0}
    with pytest.raises(ValueError, match="missing"):
        shapley_values(values, ["a", "b"])


def test_factorial_suite_to_shapley(base):
    players = base.weights.active()  # label, response, relation
    results = {
        name: [additive(weights.active()) + e for e in SEED_EFFECT]
        for name, weights in factorial_variants(base).items()
    }
    values = factorial_values(results, players, num_classes=10)
    assert values[frozenset()] == pytest.approx(0.1)  # chance accuracy
    assert values[frozenset(players)] == pytest.approx(additive(players) + np.mean(SEED_EFFECT))
    phi = shapley_values(values, players)
    # the additive parts, plus an equal share of v(single) offsets: 0.5 + mean seed effect - 0.1
    offset = (0.5 + np.mean(SEED_EFFECT) - 0.1) / 3
    assert phi == pytest.approx({c: PARTS[c] + offset for c in players})
    assert sum(phi.values()) == pytest.approx(values[frozenset(players)] - 0.1)
    del results["label only"]
    with pytest.raises(ValueError, match="label only"):
        factorial_values(results, players, num_classes=10)


def test_shapley_with_the_label_only_baseline(base):
    """Label always on; the game over response and relation starts from the scratch student."""
    players = base.weights.active()  # label, response, relation
    results = {
        name: [additive(weights.active()) + e for e in SEED_EFFECT]
        for name, weights in factorial_variants(base).items()
    }
    values = factorial_values(results, players, num_classes=10, baseline="label only")
    scratch = additive(["label"]) + np.mean(SEED_EFFECT)
    assert values[frozenset()] == pytest.approx(scratch)
    assert values[frozenset({"response"})] == pytest.approx(
        additive(["label", "response"]) + np.mean(SEED_EFFECT)
    )
    tables = shapley_tables(results, players, num_classes=10)
    assert list(tables) == list(SHAPLEY_BASELINES) == ["chance", "label only"]
    # Additive game: against the scratch student each distillation term gets exactly its part.
    assert tables["label only"] == pytest.approx({"response": 0.125, "relation": 0.0625})
    assert sum(tables["label only"].values()) == pytest.approx(
        values[frozenset({"response", "relation"})] - scratch
    )
    assert tables["chance"] == pytest.approx(
        shapley_values(factorial_values(results, players, 10), players)
    )


def test_paired_comparison_of_full_against_label_only():
    results = {"full": [0.90, 0.92, 0.91, 0.93], "label only": [0.84, 0.85, 0.86, 0.85]}
    per_image = {"full": {0: [1, 1, 0, 1]}, "label only": {0: [0, 1, 0, 0]}}
    row = paired_comparison(results, "full", "label only", per_image=per_image)
    ref = stats.ttest_rel(results["full"], results["label only"])
    low, high = ref.confidence_interval(0.95)
    assert row["contribution"] == pytest.approx(0.065)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert row["p_value"] == pytest.approx(ref.pvalue) and row["distinguishable"]
    assert (row["b"], row["c"]) == (2, 0) and row["p_mcnemar"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no variant"):
        paired_comparison(results, "full", "without label")
