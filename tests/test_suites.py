from __future__ import annotations

import pytest

from workbench.config import LossWeights, RunConfig
from workbench.suites import launch_suite, suite_analysis, suite_progress

BASE = RunConfig(teacher="small_cnn", student="mlp", weights=LossWeights(0.5, 0.5, 0.0, 0.2))


def _launch(store, **kw):
    submitted = []

    def submit(config, **fields):
        run_id = store.create_run(config, **fields)
        submitted.append(run_id)
        return run_id

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
    assert bool(contrib.loc["label", "distinguishable"])  # paired seeds: zero spread
    assert suite_progress(store, store.get_suite(suite["id"]))["done"]


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


def test_unfinished_suite_has_no_contributions_yet(store):
    suite, _ = _launch(store, seeds=1)
    analysis = suite_analysis(store, suite)
    assert analysis["contributions"].empty and analysis["summary"].empty
