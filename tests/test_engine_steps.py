"""The training loop's named steps, one at a time, and what only the whole loop can show:
resume equals an uninterrupted run, concurrent runs are independent, CUDA OOM is reported."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from workbench.config.run_config import LossWeights, RunConfig
from workbench.distill.hybrid import HybridLoss
from workbench.distill.taps import FeatureTaps
from workbench.distill.weighting import WEIGHTINGS
from workbench.runs import queue as runqueue
from workbench.storage import training_state as checkpoints
from workbench.training.loop import prepare, run
from workbench.training.setup import build_model_and_loss, build_optimizer
from workbench.training.steps import augment_batch, end_epoch, evaluate, train_epoch

TINY = RunConfig(
    teacher="small_cnn",
    student="mlp",
    epochs=1,
    teacher_epochs=1,
    batch_size=128,
    device="cpu",
    log_every=2,
)
SCRATCH = TINY.replace(weights=LossWeights(1, 0, 0, 0))


def _history(store, run_id):
    """The history without the wall-clock column."""
    return [{k: v for k, v in row.items() if k != "time"} for row in store.history(run_id)]


def _stopped_at_first(config, store, phase: str) -> str:
    """A run of ``config`` stopped (cancelled) at its first ``phase`` event ("step": before any
    checkpoint, "epoch": right after the first one); returns its id."""
    run_id = store.create_run(config)
    stop = threading.Event()
    run(
        config,
        store,
        on_step=lambda e: e["phase"] == phase and stop.set(),
        stop=stop,
        run_id=run_id,
    )
    return run_id


def _epochs(store, run_id):
    return [{k: v for k, v in row.items() if k != "time"} for row in store.epochs(run_id)]


# ---------------------------------------------------------------------------- build_optimizer
def test_optimizer_trains_the_adapters_and_the_learned_weights_without_decay():
    model = nn.Linear(4, 3)
    adapters = nn.ModuleList([nn.Linear(2, 2)])
    hybrid = HybridLoss(
        LossWeights(0.3, 0.3, 0.2, 0.2), temperature=4.0, adapters=adapters, weighting="uncertainty"
    )
    optimizer = build_optimizer(model, hybrid, lr=1e-3, device=torch.device("cpu"))
    decayed, free = optimizer.param_groups
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(adapters.parameters()) <= ids(decayed["params"])
    assert ids(model.parameters()) <= ids(decayed["params"])
    assert ids(hybrid.scheme.parameters()) == ids(free["params"]) != set()
    assert free["weight_decay"] == 0.0 and decayed["weight_decay"] > 0.0


def test_adapters_move_during_training(store):
    """The course's own bug: adapters outside the optimizer never train."""
    t = prepare(TINY.replace(weights=LossWeights(0.5, 0, 0.5, 0)), store, store.create_run(TINY))
    before = [p.detach().clone() for p in t.hybrid.adapters.parameters()]
    with FeatureTaps(t.model, t.student_paths) as taps:
        train_epoch(t, 1, taps)
    after = list(t.hybrid.adapters.parameters())
    assert before and all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


# ---------------------------------------------------------------------------- seeds
def test_seeds_change_the_initialisation_and_the_data_order(store):
    from workbench.data.datasets import load_dataset

    data = load_dataset("digits")
    cpu = torch.device("cpu")
    m0, _, g0, _, *_ = build_model_and_loss(SCRATCH, data, None, cpu)
    m0b, _, g0b, _, *_ = build_model_and_loss(SCRATCH, data, None, cpu)
    m1, _, g1, _, *_ = build_model_and_loss(SCRATCH.replace(seed=1), data, None, cpu)
    w = lambda m: m.fc.weight  # noqa: E731
    assert torch.equal(w(m0), w(m0b)) and not torch.equal(w(m0), w(m1))
    first, again, other = (torch.randperm(50, generator=g) for g in (g0, g0b, g1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_different_seeds_give_different_histories(store):
    a = run(SCRATCH, store)
    b = run(SCRATCH.replace(seed=1), store)
    assert _history(store, a["id"]) != _history(store, b["id"])


def test_construction_leaves_the_global_generator_alone():
    from workbench.data.datasets import load_dataset

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model_and_loss(SCRATCH, load_dataset("digits"), None, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------- end_epoch
def test_end_epoch_reports_validation_to_the_weighting_scheme(store):
    config = TINY.replace(weights=LossWeights(0.5, 0.5, 0, 0), weighting="validation")
    t = prepare(config, store, store.create_run(config))
    seen = []
    t.hybrid.epoch_end = seen.append
    with FeatureTaps(t.model, t.student_paths) as taps:
        train_epoch(t, 1, taps)
    row = end_epoch(t, 1)
    assert seen == [row["val_acc"]]
    expected = float((evaluate(t.model, t.val_x) == t.data.val_y).float().mean())
    assert row["val_acc"] == expected


def test_epoch_train_loss_is_the_mean_of_that_epochs_logged_steps(store):
    config = SCRATCH.replace(epochs=2)
    record = run(config, store)
    history = store.history(record["id"])
    for row in store.epochs(record["id"]):
        logged = [r["total"] for r in history if r["epoch"] == row["epoch"]]
        assert row["train_loss"] == pytest.approx(sum(logged) / len(logged))
    first, second = store.epochs(record["id"])
    assert first["train_loss"] != second["train_loss"]


def test_end_epoch_writes_a_resumable_checkpoint(store):
    config = SCRATCH.replace(epochs=2)
    run_id = store.create_run(config)
    t = prepare(config, store, run_id)
    with FeatureTaps(t.model, t.student_paths) as taps:
        train_epoch(t, 1, taps)
    end_epoch(t, 1)
    state = checkpoints.load_state(store.home, run_id)
    assert state["epoch"] == 1 and state["step"] == t.step == t.steps_per_epoch
    assert all(torch.equal(state["model"][k], v) for k, v in t.model.state_dict().items())


# ---------------------------------------------------------------------------- evaluate, augment
def test_evaluate_uses_eval_mode_and_restores_training_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    model.train()
    x = torch.randn(10, 1, 2, 2)
    before = model[2].running_mean.clone()
    evaluate(model, x)
    assert model.training and torch.equal(model[2].running_mean, before)


def test_a_batchnorm_student_trains_in_train_mode_after_an_epoch(store):
    config = SCRATCH.replace(student="small_cnn", epochs=2)
    t = prepare(config, store, store.create_run(config))
    with FeatureTaps(t.model, t.student_paths) as taps:
        train_epoch(t, 1, taps)
        end_epoch(t, 1)
        modes = []
        hook = t.model.register_forward_pre_hook(lambda m, a: modes.append(m.training))
        train_epoch(t, 2, taps)
        hook.remove()
    assert modes and all(modes)


def test_augment_shifts_each_image_by_its_own_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8).repeat(32, 1, 1, 1)
    out = augment_batch(x, g)  # pad 1: offsets in {0, 1, 2} per axis
    g = torch.Generator().manual_seed(0)
    shifts = torch.randint(0, 3, (2, len(x)), generator=g)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(len(x)):
        dy, dx = shifts[:, i].tolist()
        assert torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
    assert len({tuple(s) for s in shifts.T.tolist()}) > 1  # not one shift for the batch


def test_augmentation_runs_in_the_engine(store, monkeypatch):
    import workbench.training.steps as engine

    calls = []
    real = engine.augment_batch
    monkeypatch.setattr(engine, "augment_batch", lambda x, g: calls.append(1) or real(x, g))
    record = run(SCRATCH.replace(augment=True), store)
    assert record["status"] == "completed" and calls


# ---------------------------------------------------------------------------- weighting, OOM
def test_uncertainty_weighting_learns_in_the_engine(store):
    config = TINY.replace(weights=LossWeights(0.5, 0.5, 0, 0), weighting="uncertainty", epochs=2)
    record = run(config, store)
    assert record["status"] == "completed", record["error"]
    history = store.history(record["id"])
    assert history[0]["w_label"] != history[-1]["w_label"]  # the log-variances moved


def test_cuda_out_of_memory_inside_the_engine_is_reported(store, monkeypatch):
    from workbench.models import registry as models

    real = models.build_model

    def oom_model(*args, **kwargs):
        model = real(*args, **kwargs)

        def forward(*_):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        model.forward = forward
        return model

    monkeypatch.setattr("workbench.training.setup.build_model", oom_model)
    record = run(SCRATCH, store)
    assert record["status"] == "failed"
    assert record["error"].startswith("out of GPU memory: lower the batch size")


# ---------------------------------------------------------------------------- resume
# Issue 20: VID's learned variances, DKD's warm-up counter (a warm-up of 6 epochs for this
# 3-epoch run) and an SGD step schedule with a learning-rate warm-up are training state too.
PAPER_STATE = {
    "feature_kind": "vid",
    "response_kind": "dkd",
    "dkd_warmup": 500,
    "optimizer": "sgd",
    "lr": 0.05,
    "schedule": "multistep",
    "milestones": (2,),
    "warmup_epochs": 1,
}


@pytest.mark.parametrize(
    "weights, weighting, extra",
    [
        (LossWeights(0.3, 0.3, 0.2, 0.2), "fixed", {}),
        (LossWeights(0.5, 0.5, 0, 0), "uncertainty", {}),
        (LossWeights(0.5, 0.5, 0, 0), "validation", {}),
        (LossWeights(0.4, 0.3, 0.3, 0), "fixed", PAPER_STATE),
        (LossWeights(0.4, 0.3, 0, 0.3), "fixed", {"response_kind": "dist", "relation_kind": "cc"}),
    ],
)
def test_a_resumed_run_equals_an_uninterrupted_one(store, weights, weighting, extra):
    config = TINY.replace(weights=weights, weighting=weighting, epochs=3, augment=True, **extra)
    whole, run_id, _ = resume_is_exact(config, store)
    a, b = store.probe(run_id), store.probe(whole["id"])
    assert torch.equal(torch.as_tensor(a["cka"]), torch.as_tensor(b["cka"]))
    assert not checkpoints.state_path(store.home, run_id).exists()  # completed: state removed


def resume_is_exact(config: RunConfig, store) -> tuple[dict, str, dict]:
    """Train ``config`` whole, then again stopped in epoch 2 and resumed from its checkpoint;
    asserts both end with the same history, epochs and metrics. Returns the whole run's record,
    the resumed run's id and the checkpoint the stopped run left (what it holds is the test's)."""
    whole = run(config, store)
    assert whole["status"] == "completed", whole["error"]

    run_id = store.create_run(config)
    stop = threading.Event()

    def stop_in_epoch_2(event):
        if event["phase"] == "step" and event["epoch"] == 2:
            stop.set()

    assert run(config, store, on_step=stop_in_epoch_2, stop=stop, run_id=run_id)["status"] == (
        "cancelled"
    )
    state = checkpoints.load_state(store.home, run_id)
    assert state["epoch"] == 1
    runqueue.requeue(store, run_id)
    resumed = run(config, store, run_id=run_id)
    assert resumed["status"] == "completed", resumed["error"]
    assert _history(store, run_id) == _history(store, whole["id"])
    assert _epochs(store, run_id) == _epochs(store, whole["id"])
    assert resumed["metrics"] == whole["metrics"]
    return whole, run_id, state


def test_a_run_that_never_finished_an_epoch_restarts_clean(store):
    config = SCRATCH.replace(epochs=2)
    whole = run(config, store)
    run_id = _stopped_at_first(config, store, "step")
    assert store.history(run_id) and checkpoints.load_state(store.home, run_id) is None
    runqueue.requeue(store, run_id)
    run(config, store, run_id=run_id)
    assert _history(store, run_id) == _history(store, whole["id"])


# ---------------------------------------------------------------------------- one RNG per run
def test_concurrent_same_seed_runs_are_identical_to_a_run_alone(store):
    config = TINY.replace(
        weights=LossWeights(0.5, 0.5, 0, 0), student="small_cnn", augment=True, epochs=2
    )
    alone = run(config, store)
    ids = [store.create_run(config) for _ in range(3)]
    threads = [
        threading.Thread(target=run, args=(config, store), kwargs={"run_id": i}) for i in ids
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for run_id in ids:
        assert _history(store, run_id) == _history(store, alone["id"])
        assert store.get_run(run_id)["metrics"] == alone["metrics"]


def test_dropout_draws_from_the_run_generator():
    from workbench.training.rng import RunDropout, use_run_generator

    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    g = torch.Generator().manual_seed(0)
    assert use_run_generator(model, g) == 1 and isinstance(model[1], RunDropout)
    x = torch.ones(64, 4)
    torch.manual_seed(0)
    a = model(x)
    g.manual_seed(0)
    torch.manual_seed(1)  # the global generator does not matter
    b = model(x)
    assert torch.equal(a, b)
    zeros = (model[1](torch.ones(10000)) == 0).float().mean()
    assert 0.45 < zeros < 0.55  # p = 0.5
    model.eval()
    assert torch.equal(model[1](x), x)


@pytest.mark.parametrize("scheme", list(WEIGHTINGS))
def test_every_weighting_scheme_keeps_its_state_in_the_checkpoint(scheme, tmp_path):
    """A resumed run rebuilds the loss and loads its state dict: whatever a scheme learned or
    counted (parameters, plateau counters, running estimates) must be in it."""
    weights = LossWeights(0.4, 0.3, 0.2, 0.1)
    terms = {
        k: torch.tensor(v)
        for k, v in zip(
            ("label", "response", "feature", "relation"), (2.0, 9.0, 0.3, 0.01), strict=True
        )
    }
    first = HybridLoss(weights, temperature=4.0, weighting=scheme)
    for acc in (0.5, 0.6, 0.55, 0.55):
        first.scheme(terms, first.configured)
        first.epoch_end(acc)
    with torch.no_grad():
        for p in first.parameters():
            p.add_(0.25)
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    second = HybridLoss(weights, temperature=4.0, weighting=scheme)
    second.load_state_dict(torch.load(path, weights_only=True))
    for h in (first, second):
        h.epoch_end(0.5)
    assert first.scheme(terms, first.configured) == second.scheme(terms, second.configured)
    assert first.current_weights() == second.current_weights()


def test_headline_metrics_are_measured_on_the_test_split(store):
    from workbench.data.datasets import load_dataset
    from workbench.models.registry import build_model

    record = run(SCRATCH.replace(epochs=2), store)
    data = load_dataset("digits")
    model = build_model("mlp", data.input_shape, data.num_classes)
    model.load_state_dict(store.load_weights(record["id"]))
    test_pred, val_pred = evaluate(model, data.test_x), evaluate(model, data.val_x)
    metrics = record["metrics"]
    assert metrics["test_acc"] == float((test_pred == data.test_y).float().mean())
    assert metrics["val_acc"] == float((val_pred == data.val_y).float().mean())
    assert metrics["test_acc"] != metrics["val_acc"]  # the two splits differ on this run
    assert store.probe(record["id"])["test_correct"] == (test_pred == data.test_y).int().tolist()


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("damage", ["truncated", "planted pickle"])
def test_a_damaged_training_checkpoint_fails_the_resume_with_a_message(store, tmp_path, damage):
    import pickle

    config = SCRATCH.replace(epochs=2)
    run_id = _stopped_at_first(config, store, "epoch")
    path = checkpoints.state_path(store.home, run_id)
    marker = tmp_path / "marker"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    runqueue.requeue(store, run_id)
    record = run(config, store, run_id=run_id)
    assert record["status"] == "failed"
    assert "is damaged" in record["error"] and "restart the run" in record["error"]
    assert not marker.exists()
    assert store.epochs(run_id)  # the history it had is kept


def test_train_fraction_trains_on_the_fixed_stratified_subset(store):
    from workbench.data.datasets import load_dataset, train_subset

    config = SCRATCH.replace(train_fraction=0.1, batch_size=16)
    t = prepare(config, store, store.create_run(config))
    data = load_dataset("digits")
    subset = train_subset(data.train_y, 0.1)
    assert torch.equal(t.train_x, data.train_x[subset]) and torch.equal(
        t.train_y, data.train_y[subset]
    )
    assert t.steps_per_epoch == len(subset) // 16
    assert run(config, store)["metrics"]["train_size"] == len(subset)


def test_gradient_shares_are_logged_every_log_every_steps_and_sum_to_one(store):
    config = TINY.replace(epochs=2, log_every=3)
    record = run(config, store)
    rows = store.history(record["id"])
    with_shares = [r["step"] for r in rows if "g_label" in r]
    assert with_shares == [
        s for s in (r["step"] for r in rows) if s % 3 == 0 or s == rows[-1]["step"]
    ]
    for row in rows:
        if "g_label" in row:
            shares = [row[f"g_{k}"] for k in ("label", "response", "feature", "relation")]
            assert sum(shares) == pytest.approx(1.0) and all(v > 0 for v in shares)
