"""The training loop end to end on digits with tiny models (a few seconds each)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import workbench.distill.hybrid as hybrid
from workbench.config.run_config import LossWeights, RunConfig
from workbench.errors import CheckpointError, ConfigError
from workbench.training.loop import run
from workbench.training.teacher_cache import LiveTeacher
from workbench.training.teachers import ensure_teacher, import_teacher

TINY = RunConfig(
    teacher="small_cnn",
    student="mlp",
    epochs=1,
    teacher_epochs=1,
    batch_size=128,
    device="cpu",
    log_every=2,
)


def test_teacher_is_trained_once_and_reused(store):
    first = run(TINY, store)
    assert first["status"] == "completed", first["error"]
    teachers = store.list_runs(role="teacher")
    assert len(teachers) == 1 and teachers[0]["status"] == "completed"
    second = run(TINY.replace(seed=1), store)
    assert second["status"] == "completed"
    assert len(store.list_runs(role="teacher")) == 1
    assert first["teacher_run"] == second["teacher_run"] == teachers[0]["id"]
    assert first["metrics"]["teacher_acc"] > 0.5


def test_same_seed_same_metrics(store):
    a = run(TINY, store)
    b = run(TINY, store)
    assert a["metrics"]["val_acc"] == b["metrics"]["val_acc"]
    assert a["metrics"]["final_losses"] == b["metrics"]["final_losses"]
    assert store.history(a["id"]) and [r["total"] for r in store.history(a["id"])] == [
        r["total"] for r in store.history(b["id"])
    ]


def test_run_records_history_epochs_probe_and_checkpoint(store):
    record = run(TINY.replace(epochs=2), store)
    assert record["status"] == "completed"
    history = store.history(record["id"])
    assert {"label", "response", "feature", "relation", "total", "w_label", "w_relation"} <= set(
        history[0]
    )
    assert [r["epoch"] for r in store.epochs(record["id"])] == [1, 2]
    assert 0.0 <= record["metrics"]["agreement"] <= 1.0
    assert len(record["metrics"]["per_class_acc"]) == 10
    probe = store.probe(record["id"])
    assert probe["cka"].shape == (len(probe["student_layers"]), len(probe["teacher_layers"]))
    assert len(probe["grams"]) == len(probe["pairs"]) > 0
    assert len(probe["pair_cosine"]) == len(probe["pairs"])
    state = store.load_weights(record["id"])
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert record["teacher_source"] in ("live", "cache")


def test_scratch_student_never_runs_the_teacher(store, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(LiveTeacher, "__call__", boom)
    record = run(TINY.replace(weights=LossWeights(1, 0, 0, 0)), store)
    assert record["status"] == "completed", record["error"]
    assert store.list_runs(role="teacher") == []
    assert record["teacher_source"] is None


def test_cancel(store):
    stop = threading.Event()
    stop.set()
    record = run(TINY.replace(weights=LossWeights(1, 0, 0, 0)), store, stop=stop)
    assert record["status"] == "cancelled"


def test_cancel_through_the_store(store):
    config = TINY.replace(weights=LossWeights(1, 0, 0, 0))
    run_id = store.create_run(config)
    store.request_cancel(run_id)
    assert run(config, store, run_id=run_id)["status"] == "cancelled"


def test_divergence_is_reported_with_its_step(store, monkeypatch):
    monkeypatch.setattr(
        hybrid,
        "label_loss",
        lambda logits, targets: F.cross_entropy(logits, targets) * float("nan"),
    )
    record = run(TINY.replace(weights=LossWeights(1, 0, 0, 0)), store)
    assert record["status"] == "diverged"
    assert record["diverged_step"] == 2  # the first logged step


def test_failure_keeps_the_message(store):
    record = run(TINY.replace(dataset="mnist", weights=LossWeights(1, 0, 0, 0)), store)
    assert record["status"] == "failed"
    assert "download" in record["error"]


def test_unpairable_layers_fail_with_a_clear_message(store):
    record = run(TINY.replace(layer_pairs=(("nope", "block1"),)), store)
    assert record["status"] == "failed"
    assert "nope" in record["error"]


def test_on_step_reports_progress(store):
    events = []
    run(TINY.replace(weights=LossWeights(1, 0, 0, 0)), store, on_step=events.append)
    phases = [e["phase"] for e in events]
    assert "step" in phases and "epoch" in phases and phases[-1] == "end"
    step = next(e for e in events if e["phase"] == "step")
    assert step["total_steps"] >= step["step"] >= 1 and step["eta_s"] >= 0


def test_ensure_teacher_checks_a_chosen_teacher_run(store):
    teacher_id = ensure_teacher(TINY, store, train=run)
    assert ensure_teacher(TINY.replace(teacher_run=teacher_id), store, train=run) == teacher_id
    with pytest.raises(ConfigError, match="small_cnn"):
        ensure_teacher(TINY.replace(teacher="mlp", teacher_run=teacher_id), store, train=run)


def test_import_teacher_checks_the_architecture(store, tmp_path):
    from workbench.models.registry import build_model

    good = tmp_path / "good.pt"
    torch.save(build_model("small_cnn", (1, 8, 8), 10).state_dict(), good)
    run_id = import_teacher(store, str(good), teacher="small_cnn", dataset="digits")
    record = store.get_run(run_id)
    assert record["status"] == "completed" and record["role"] == "teacher"
    assert 0.0 <= record["metrics"]["val_acc"] <= 1.0
    with pytest.raises(CheckpointError, match="not a mlp"):
        import_teacher(store, str(good), teacher="mlp", dataset="digits")
