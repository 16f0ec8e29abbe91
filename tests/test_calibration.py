"""Calibration and class similarities of a finished run (issue 21 items 3 and 4), each against a
value computed by hand in the test."""

from __future__ import annotations

import json
import math

import pytest
import torch

from workbench.cli import main
from workbench.storage.store import Store
from workbench.training.calibration import (
    class_mean_logits,
    expected_calibration_error,
    logit_gap,
    negative_log_likelihood,
    quality_on_test,
    reliability_bins,
)


def _logits_with(confidences: list[float], preds: list[int], k: int = 2) -> torch.Tensor:
    """Logits whose softmax puts ``c`` on class ``p`` and the rest evenly on the others."""
    rows = []
    for c, p in zip(confidences, preds, strict=True):
        probs = [(1 - c) / (k - 1)] * k
        probs[p] = c
        rows.append([math.log(q) for q in probs])
    return torch.tensor(rows, dtype=torch.float64)


def test_ece_by_hand():
    # bins of width 1/15: 0.95 and 0.95 (one right, one wrong) in (14/15, 1], share 0.5, acc 0.5;
    # 0.58 (right) in (8/15, 9/15], acc 1; 0.62 (wrong) in (9/15, 10/15], acc 0
    logits = _logits_with([0.95, 0.95, 0.58, 0.62], [0, 0, 1, 1])
    labels = torch.tensor([0, 1, 1, 0])
    expected = 0.5 * abs(0.5 - 0.95) + 0.25 * abs(1.0 - 0.58) + 0.25 * abs(0.0 - 0.62)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected)
    bins = reliability_bins(logits, labels)
    assert len(bins) == 15 and sum(b["share"] for b in bins) == pytest.approx(1.0)
    assert bins[14] == pytest.approx({"share": 0.5, "confidence": 0.95, "accuracy": 0.5})
    assert bins[8]["accuracy"] == 1.0 and bins[9]["accuracy"] == 0.0


def test_a_perfectly_calibrated_model_has_no_ece():
    logits = _logits_with([0.8] * 5, [0] * 5)
    labels = torch.tensor([0, 0, 0, 0, 1])  # 4 of 5 right at confidence 0.8
    assert expected_calibration_error(logits, labels) == pytest.approx(0.0, abs=1e-12)


def test_nll_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    labels = torch.tensor([0, 2])
    by_hand = []
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        z = sum(math.exp(v) for v in row)
        by_hand.append(-math.log(math.exp(row[y]) / z))
    assert negative_log_likelihood(logits, labels) == pytest.approx(sum(by_hand) / 2)


def test_class_means_and_the_gap():
    torch.manual_seed(0)
    logits, labels = torch.randn(12, 3), torch.tensor([0, 1, 2] * 4)
    means = class_mean_logits(logits, labels, 3)
    for c in range(3):
        rows = [logits[i] for i in range(12) if labels[i] == c]
        assert torch.allclose(means[c].float(), sum(rows) / len(rows), atol=1e-6)
    gap, mean_gap = logit_gap(logits, logits.clone(), labels, 3)
    assert mean_gap == 0.0 and torch.count_nonzero(gap) == 0  # a run against itself
    other = logits + torch.tensor([0.0, 1.0, -2.0])  # shifts each class column
    gap, mean_gap = logit_gap(other, logits, labels, 3)
    off_diagonal = [1.0, 2.0, 0.0, 2.0, 0.0, 1.0]  # |shift of column j| for rows i != j
    assert mean_gap == pytest.approx(sum(off_diagonal) / 6)


def test_a_run_records_calibration_and_the_gap_and_show_prints_them(home, capsys):
    args = ["run", "--teacher", "small_cnn", "--student", "mlp", "--epochs", "1"]
    args += ["--teacher-epochs", "1", "--device", "cpu", "--json"]
    assert main(args) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["show", run_id, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    for name in ("ece", "teacher_ece", "logit_gap"):
        assert 0.0 <= metrics[name] <= 1.0 if "ece" in name else metrics[name] > 0
    assert metrics["nll"] > 0 and metrics["teacher_nll"] > 0
    teacher = [r for r in Store(home).list_runs(role="teacher")][0]
    assert teacher["metrics"]["ece"] == pytest.approx(metrics["teacher_ece"])
    probe = Store(home).probe(run_id)
    assert len(probe["reliability"]) == len(probe["teacher_reliability"]) == 15
    assert len(probe["logit_gap_matrix"]) == 10


# ---------------------------------------------------------------------------------- Compare
def _with_quality(store, run_id: str, shift: float) -> None:
    """Give a fabricated run the probe entries and metrics a run trained today records."""
    torch.manual_seed(int(shift * 10))
    labels = torch.arange(4).repeat(10)
    teacher = torch.randn(40, 4) + 3 * torch.nn.functional.one_hot(labels, 4)
    student = teacher + shift * torch.randn(40, 4)
    metrics, entries = quality_on_test(student, teacher, labels, 4)
    record = store.get_run(run_id)
    store.update_run(run_id, metrics={**(record.get("metrics") or {}), **metrics})
    store.save_probe(run_id, {**store.probe(run_id), **entries})


def test_compare_draws_reliability_and_the_gap_and_names_older_runs(store):
    from tests.test_compare_page import charts, fabricate_store, open_compare

    runs = fabricate_store(store)
    for shift, name in ((0.5, "kd0"), (1.0, "kd1"), (2.0, "hy0")):
        _with_quality(store, runs[name], shift)
    at = open_compare([runs[n] for n in ("kd0", "kd1", "hy0", "hy1")])
    drawn = charts(at)
    lines = [t["name"] for t in drawn["compare_reliability"]["data"]]
    assert lines[0] == "calibrated" and lines[-1] == "teacher" and len(lines) == 5
    assert all("(ECE 0." in name for name in lines[1:4])
    gaps = [t for t in drawn["compare_logit_gap"]["data"] if t["type"] == "heatmap"]
    assert len(gaps) == 3 and all(row[i] is None for t in gaps for i, row in enumerate(t["z"]))
    notes = "\n".join(c.value for c in at.caption)
    assert "No calibration data for hybrid" in notes and "run them again" in notes
    table = [d.value for d in at.dataframe if d.value.index.name is None][0]
    assert {"ece", "nll", "logit_gap"} <= set(table.columns)
