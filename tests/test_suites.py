from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats

from workbench.ablation.describe import SUITE_KINDS, suite_intro, suite_label
from workbench.ablation.shapley import interaction_notes
from workbench.ablation.suites import (
    SUITE_PRESETS,
    demo_preset,
    launch_suite,
    suite_analysis,
    suite_progress,
)
from workbench.ablation.variants import suite_configs
from workbench.config.run_config import LossWeights, RunConfig
from workbench.lab.access import AccessError
from workbench.lab.identity import User
from workbench.runs import permitted as actions

BASE = RunConfig(teacher="small_cnn", student="mlp", weights=LossWeights(0.5, 0.5, 0.0, 0.2))


def _launch(store, **kw):
    submitted = []

    def submit(submissions):
        run_ids = [
            store.create_run(s.config, name=s.name, tags=s.tags, suite=s.suite, variant=s.variant)
            for s in submissions
        ]
        submitted.extend(run_ids)
        return run_ids

    return launch_suite(BASE, store, submit, **kw), submitted


def test_launch_stores_the_suite_and_its_runs(store):
    suite, submitted = _launch(store, seeds=2)
    assert suite["variants"] == [
        "full",
        "without label",
        "without response",
        "without relation",
        "label only",
    ]
    assert len(submitted) == 10
    stored = store.get_suite(suite["id"])
    assert [r["run_id"] for r in stored["runs"]] == submitted
    record = store.get_run(submitted[0])
    assert record["suite"] == suite["id"] and record["variant"] == "full"
    assert suite_progress(store, stored) == {"total": 10, "counts": {"queued": 10}, "done": False}


def test_analysis_on_fabricated_results(store):
    suite, submitted = _launch(store, seeds=3)
    # accuracy = 0.5 + 0.1 * label + 0.05 * response + 0.0 * relation, plus a seed offset
    effect = {"label": 0.1, "response": 0.05, "relation": 0.0}
    for run_id in submitted:
        record = store.get_run(run_id)
        weights = record["config"]["weights"]
        acc = (
            0.5
            + sum(v for k, v in effect.items() if weights[k] > 0)
            + 0.01 * record["config"]["seed"]
        )
        store.update_run(run_id, status="completed", metrics={"val_acc": acc})
    analysis = suite_analysis(store, store.get_suite(suite["id"]))
    contrib = analysis["contributions"].set_index("component")
    assert contrib.loc["label", "contribution"] == pytest.approx(0.1)
    assert contrib.loc["response", "contribution"] == pytest.approx(0.05)
    assert contrib.loc["relation", "contribution"] == pytest.approx(0.0)
    # The seed offset cancels in the pairs: zero spread is no evidence, not infinite evidence.
    assert not contrib["distinguishable"].any()
    assert analysis["metric"] == "val_acc" and analysis["split"] == "validation"
    assert analysis["noise"]["n_test"] == suite["n_val"]
    assert suite_progress(store, store.get_suite(suite["id"]))["done"]


def test_analysis_on_the_test_split_with_per_image_results(store):
    """Runs that record test_acc and probe['test_correct']: the statistics use test, pair the
    images, and pool McNemar's counts over the seeds."""
    suite, submitted = _launch(store, seeds=3)
    rng = np.random.default_rng(1)
    expected_b = expected_c = 0
    full_correct = {s: rng.integers(0, 2, 40) for s in range(3)}
    for run_id in submitted:
        record = store.get_run(run_id)
        seed = record["config"]["seed"]
        correct = full_correct[seed].copy()
        if record["variant"] == "without label":  # flips a few images per seed
            flip = rng.choice(40, 5, replace=False)
            correct[flip] = 1 - correct[flip]
            expected_b += int(((full_correct[seed] == 1) & (correct == 0)).sum())
            expected_c += int(((full_correct[seed] == 0) & (correct == 1)).sum())
        acc = float(correct.mean())
        store.update_run(run_id, status="completed", metrics={"val_acc": 0.5, "test_acc": acc})
        store.save_probe(run_id, {"test_correct": correct.tolist()})
    analysis = suite_analysis(store, store.get_suite(suite["id"]))
    assert analysis["metric"] == "test_acc" and analysis["split"] == "test"
    row = analysis["contributions"].set_index("component").loc["label"]
    assert (row["b"], row["c"], row["pairs"]) == (expected_b, expected_c, 120)
    assert row["p_mcnemar"] == pytest.approx(
        stats.binomtest(expected_b, expected_b + expected_c, 0.5).pvalue
    )
    full_acc = [float(full_correct[s].mean()) for s in range(3)]
    p = float(np.mean(full_acc))
    assert analysis["noise"]["binomial_se"] == pytest.approx(np.sqrt(p * (1 - p) / 40))
    assert analysis["noise"]["seed_sd"] == pytest.approx(np.std(full_acc, ddof=1))


def test_demo_preset_is_a_valid_student_suite():
    config, seeds = SUITE_PRESETS["demo ablation"]
    assert config.role == "student" and config.train_fraction < 1 and seeds >= 3
    assert config.teacher_config().train_fraction == 1.0  # the teacher sees all of train


def test_factorial_suite_gives_shapley_values(store):
    suite, submitted = _launch(store, seeds=1, factorial=True)
    assert len(submitted) == 7  # 2^3 - 1 combinations
    for run_id in submitted:
        record = store.get_run(run_id)
        weights = record["config"]["weights"]
        acc = 0.1 + 0.3 * (weights["label"] > 0) + 0.1 * (weights["response"] > 0)
        store.update_run(run_id, status="completed", metrics={"val_acc": acc})
    analysis = suite_analysis(store, store.get_suite(suite["id"]))
    # additive game with v(empty) = 1/10 = chance: each Shapley value is its additive part
    assert analysis["shapley"] == pytest.approx({"label": 0.3, "response": 0.1, "relation": 0.0})
    tables = analysis["shapley_tables"]
    assert tables["chance"] == analysis["shapley"]
    # against the scratch student (label always on) the game is over response and relation
    assert tables["label only"] == pytest.approx({"response": 0.1, "relation": 0.0})


def test_unfinished_suite_has_no_contributions_yet(store):
    suite, _ = _launch(store, seeds=1)
    analysis = suite_analysis(store, suite)
    assert analysis["contributions"].empty and analysis["summary"].empty


# ---------------------------------------------------------------------- issue 19
ALICE, BOB, ADMIN = User("alice"), User("bob"), User("root", admin=True)


def _launch_as(store, owner, base=BASE, **kw):
    """``launch_suite`` with a submit that records each run as the gate would: owned by
    ``owner``, private as the submission says."""

    def submit(submissions):
        return [
            store.create_run(
                s.config,
                name=s.name,
                tags=s.tags,
                suite=s.suite,
                variant=s.variant,
                owner=owner,
                private=s.private,
            )
            for s in submissions
        ]

    return launch_suite(base, store, submit, owner=owner, **kw)


def test_a_private_suite_and_its_runs_are_hidden_from_others(store):
    suite = _launch_as(store, "alice", seeds=1, private=True)
    public = _launch_as(store, "alice", seeds=1)
    assert store.get_suite(suite["id"])["private"] is True
    assert store.get_suite(public["id"])["private"] is False
    run_ids = {e["run_id"] for e in suite["runs"]}
    assert all(store.get_run(r)["private"] for r in run_ids)
    assert [s["id"] for s in actions.list_suites(store, BOB)] == [public["id"]]
    with pytest.raises(KeyError, match="no suite"):
        actions.get_suite(store, suite["id"], BOB)
    assert run_ids.isdisjoint(r["id"] for r in actions.list_runs(store, BOB))
    for who in (ALICE, ADMIN):
        assert actions.get_suite(store, suite["id"], who)["id"] == suite["id"]
        assert {s["id"] for s in actions.list_suites(store, who)} == {suite["id"], public["id"]}


def test_set_suite_private_is_for_the_owner_and_flips_its_runs(store):
    suite = _launch_as(store, "alice", seeds=1)
    with pytest.raises(AccessError, match="only its owner or an admin"):
        actions.set_suite_private(store, suite["id"], BOB, True)
    assert not store.get_suite(suite["id"])["private"]
    changed = actions.set_suite_private(store, suite["id"], ALICE, True)
    assert changed["private"] is True and store.get_suite(suite["id"])["private"] is True
    assert all(store.get_run(e["run_id"])["private"] for e in suite["runs"])
    with pytest.raises(KeyError):  # now bob cannot even name it
        actions.set_suite_private(store, suite["id"], BOB, False)
    actions.set_suite_private(store, suite["id"], ADMIN, False)
    assert not store.get_suite(suite["id"])["private"]
    assert not any(store.get_run(e["run_id"])["private"] for e in suite["runs"])


def test_the_suite_label_names_kind_epochs_seeds_and_date(store):
    loo, _ = _launch(store, seeds=2, name="small")
    fact, _ = _launch(store, seeds=3, factorial=True, name="big")
    seeds = {**loo, "kind": "seeds", "name": "noise"}
    day = time.strftime("%Y-%m-%d %H:%M", time.localtime(loo["created_at"]))
    assert suite_label(loo) == (
        f"small · leave-one-out · {BASE.epochs} epochs × 2 seeds · {day} · {loo['id']}"
    )
    assert suite_label(fact).startswith(f"big · factorial · {BASE.epochs} epochs × 3 seeds · ")
    assert suite_label(seeds).startswith("noise · seeds · ")
    assert suite_label({**loo, "name": "a\nb" + "x" * 100}).startswith("a b" + "x" * 30)
    assert "\n" not in suite_label({**loo, "name": "a\nb"})
    assert suite_label({**loo, "private": True}).endswith(f" · private · {loo['id']}")
    assert suite_label({**loo, "base": {**loo["base"], "epochs": 1}, "seeds": 1}).startswith(
        "small · leave-one-out · 1 epoch × 1 seed · "
    )


def test_the_intro_matches_the_suite_kind():
    loo, fact, seeds = (suite_intro(k, "test accuracy") for k in SUITE_KINDS)
    assert "without it" in loo and "Shapley" not in loo
    assert "Shapley" in fact and "label only" in fact and "every on/off combination" in fact
    assert "seed" in seeds and "Shapley" not in seeds


def _fabricate(store, suite, acc):
    """Complete every run of ``suite`` with test accuracy ``acc(variant, seed)``."""
    for entry in suite["runs"]:
        value = acc(entry["variant"], entry["seed"])
        store.update_run(entry["run_id"], status="completed", metrics={"test_acc": value})


def _t_interval(d):
    """mean, and the 95% half width t_{0.975, n-1} * sd / sqrt(n), of the list ``d``."""
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


NOISE = {0: 0.0, 1: 0.012, 2: -0.004, 3: -0.008}  # mean 0: variant means as written


@pytest.mark.parametrize("factorial", [False, True])
def test_distillation_vs_scratch_on_every_suite_kind(store, factorial):
    """Full against the scratch student with its paired t interval, in a leave-one-out suite and
    in a two-component factorial one (whose scratch run is called "without response")."""
    base = BASE.replace(weights=LossWeights(0.5, 0.5, 0.0, 0.0))
    full = {s: 0.8 + NOISE[s] for s in range(4)}
    scratch = {s: 0.7 + 0.3 * NOISE[s] + 0.002 * s for s in range(4)}
    suite = launch_suite(base, store, recorded_submit(store), seeds=4, factorial=factorial)
    scratch_name = "without response" if factorial else "label only"
    _fabricate(
        store,
        suite,
        lambda v, s: full[s] if v == "full" else scratch[s] if v == scratch_name else 0.75,
    )
    row = suite_analysis(store, store.get_suite(suite["id"]))["scratch"]
    mean, half = _t_interval([full[s] - scratch[s] for s in range(4)])
    assert row["variant"] == scratch_name and row["n"] == 4
    assert row["contribution"] == pytest.approx(mean)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half))


def recorded_submit(store):
    def submit(submissions):
        return [
            store.create_run(s.config, name=s.name, suite=s.suite, variant=s.variant)
            for s in submissions
        ]

    return submit


def _interacting(variant, seed):
    """label + response + relation, against label only: response adds 4 points alone, relation
    20, and together they lose 6 (response gets in relation's way): response's leave-one-out
    contribution is negative (0.68 - 0.70) where its Shapley value is positive."""
    acc = {
        "label only": 0.50,
        "without relation": 0.54,  # label + response
        "without response": 0.70,  # label + relation
        "full": 0.68,
        "without label": 0.74,
        "response only": 0.70,
        "relation only": 0.60,
    }[variant]
    return acc + NOISE[seed] * (1 + len(variant) % 5)  # seed noise that differs by variant


def test_shapley_with_a_seed_interval_against_the_label_only_student_by_hand(store):
    suite, _ = _launch(store, seeds=4, factorial=True)
    _fabricate(store, suite, _interacting)
    analysis = suite_analysis(store, store.get_suite(suite["id"]))
    table = analysis["shapley_ci"].set_index("component")
    assert analysis["shapley_baseline"] == "label only"
    assert list(table.index) == ["response", "relation"]
    # two players against v(empty) = label only, per seed: phi_r = (v(r) - v(0) + v(r,l) - v(l))/2
    v = {s: {k: _interacting(k, s) for k in suite["variants"]} for s in range(4)}
    phi = [
        0.5 * (v[s]["without relation"] - v[s]["label only"])
        + 0.5 * (v[s]["full"] - v[s]["without response"])
        for s in range(4)
    ]
    mean, half = _t_interval(phi)
    assert table.loc["response", "shapley"] == pytest.approx(mean)
    assert table.loc["response", "ci_low"] == pytest.approx(mean - half)
    assert table.loc["response", "ci_high"] == pytest.approx(mean + half)
    assert table.loc["response", "n"] == 4
    # efficiency, per seed and so on the mean: the values add up to full - label only
    total = np.mean([v[s]["full"] - v[s]["label only"] for s in range(4)])
    assert table["shapley"].sum() == pytest.approx(total)
    assert "label only" in analysis["shapley_sentence"]


def test_a_note_when_shapley_and_leave_one_out_disagree(store):
    suite, _ = _launch(store, seeds=4, factorial=True)
    _fabricate(store, suite, _interacting)
    notes = suite_analysis(store, store.get_suite(suite["id"]))["interactions"]
    # response: Shapley (0.04 - 0.02) / 2 = +0.01, leave-one-out -0.02: opposite signs;
    # relation: Shapley +0.17, leave-one-out +0.14: the same story, no note
    assert [n["component"] for n in notes] == ["response"]
    assert "response" in notes[0]["text"] and "interact" in notes[0]["text"]


def test_no_interaction_note_for_an_additive_game():
    shapley = {"response": 0.05, "relation": 0.02}
    loo = {"response": 0.05, "relation": 0.021}
    assert interaction_notes(shapley, loo) == []
    assert [n["component"] for n in interaction_notes(shapley, {"response": 0.005})] == [
        "response"
    ]  # the same sign, but a tenth of it: "by a lot"


def test_the_demo_preset_for_the_pages():
    preset = demo_preset()
    config, seeds = SUITE_PRESETS["demo ablation"]
    assert (preset.config, preset.seeds, preset.factorial) == (config, seeds, False)
    assert preset.kind == "leave-one-out" and preset.name == "demo ablation"
    runs = len(suite_configs(config, seeds=seeds))
    assert preset.runs == runs == 30
    assert f"{runs} runs" in preset.shows and "scratch" in preset.shows
