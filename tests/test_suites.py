from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from workbench.ablation.suites import SUITE_PRESETS, launch_suite, suite_analysis, suite_progress
from workbench.config.run_config import LossWeights, RunConfig

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
