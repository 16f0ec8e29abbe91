"""The loop's named steps, each unit-tested (``tests/test_engine_steps.py``): ``train_epoch``
(``train_step``, ``log_step`` on logged steps), ``end_epoch`` (validation, the weighting's
``epoch_end``, the epoch row, the training state and the manifest) and ``finish`` (final weights,
test-split metrics, probe); ``training_state`` / ``restore`` are what
``workbench.storage.training_state`` writes and reads.

The loop is kept as lean as a hand-written PyTorch loop: the dataset is a pair of tensors on the
device indexed by a shuffled permutation (no DataLoader), and the host synchronises only on
logged steps.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from workbench.config.run_config import COMPONENTS
from workbench.distill.gradient_shares import SHARE_FIELDS, gradient_shares
from workbench.distill.hybrid import HybridLoss
from workbench.distill.taps import FeatureTaps
from workbench.errors import CheckpointError
from workbench.insight.probe_view import run_view
from workbench.storage import training_state as checkpoints
from workbench.storage.liveness import beat_fields
from workbench.storage.weights import write_weights_file
from workbench.training.calibration import logits_of, quality_on_test
from workbench.training.events import Diverged, Stopped
from workbench.training.probe import per_class_accuracy, run_probe
from workbench.training.setup import Training

__all__ = [
    "augment_batch",
    "end_epoch",
    "evaluate",
    "finish",
    "log_step",
    "restore",
    "train_epoch",
    "train_step",
    "training_state",
]


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Predicted class of every sample ([N], on the CPU), in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    preds = [model(x[i : i + batch]).argmax(dim=1).cpu() for i in range(0, len(x), batch)]
    model.train(was_training)
    return torch.cat(preds)


def train_epoch(t: Training, epoch: int, taps: FeatureTaps) -> None:
    """One pass over the training set in the run's own shuffled order; logs every
    ``log_every`` steps and the epoch's last step."""
    config, n = t.config, len(t.train_x)
    order = torch.randperm(n, generator=t.generator)[: t.steps_per_epoch * t.batch].to(t.device)
    t.model.train()
    for b in range(t.steps_per_epoch):
        idx = order[b * t.batch : (b + 1) * t.batch]  # [B]
        x, y = t.train_x[idx], t.train_y[idx]  # [B, C, H, W], [B]
        if config.augment:
            x = augment_batch(x, t.generator)
        every = (t.step + 1) % config.log_every == 0
        logged = every or b == t.steps_per_epoch - 1
        # Gradient shares cost a backward pass per term: measured every log_every steps and at
        # the run's last step, not at every epoch's end (short epochs would pay it each time).
        last = epoch == config.epochs and b == t.steps_per_epoch - 1
        terms, shares = train_step(t, idx, x, y, taps, shares=every or last)
        t.step += 1
        if t.stop is not None and t.stop.is_set():
            raise Stopped
        if logged:
            log_step(t, terms, epoch, shares)


def train_step(
    t: Training,
    idx: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    taps: FeatureTaps,
    *,
    shares: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, float] | None]:
    """Forward, hybrid loss, backward and one optimizer and schedule step. With ``shares``
    (on logged steps) also each term's share of the gradient on the model's parameters
    (``workbench.distill.gradient_shares``), measured before the step."""
    with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.use_amp):
        logits = t.model(x)  # [B, K]
        t_logits, t_feats = t.source(idx, x) if t.source is not None else (None, [])
        terms = t.hybrid(logits, y, t_logits, taps.features, t_feats, indices=idx)
    measured = (
        gradient_shares(terms, t.hybrid.current_weights(), t.model.parameters()) if shares else None
    )
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(terms["total"]).backward()
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()
    return terms, measured


def log_step(
    t: Training,
    terms: dict[str, torch.Tensor],
    epoch: int,
    shares: dict[str, float] | None = None,
) -> None:
    """Append a history row, report progress, and honour a cancel asked through the store."""
    row = _log_row(terms, t.hybrid, t.step, epoch, t.elapsed())
    if not math.isfinite(row["total"]):
        raise Diverged(t.step)
    if shares is not None:
        row.update({SHARE_FIELDS[k]: v for k, v in shares.items()})
    t.history.append(row)
    t.fenced.history_tail(t.history)
    eta = t.elapsed() / t.step * (t.total_steps - t.step)
    progress = {
        "epoch": epoch,
        "epochs": t.config.epochs,
        "step": t.step,
        "total_steps": t.total_steps,
        "eta_s": eta,
    }
    t.fenced.update(progress=progress, **beat_fields())
    t.on_step(
        {
            "run_id": t.run_id,
            "role": t.config.role,
            "phase": "step",
            **progress,
            "losses": {k: row[k] for k in (*COMPONENTS, "total")},
            "weights": t.hybrid.current_weights(),
        }
    )
    if t.store.cancel_requested(t.run_id):
        raise Stopped


def end_epoch(t: Training, epoch: int) -> dict[str, Any]:
    """Validate, let the weighting scheme see the validation accuracy, record the epoch and
    checkpoint the whole training state; returns the epoch's row."""
    pred = evaluate(t.model, t.val_x)
    val_acc = float((pred == t.data.val_y).float().mean())
    agreement = (
        float((pred == t.teacher_pred).float().mean()) if t.teacher_pred is not None else None
    )
    t.hybrid.epoch_end(val_acc)
    logged = [r["total"] for r in t.history if r["epoch"] == epoch]  # this epoch's logged steps
    row = {
        "epoch": epoch,
        "val_acc": val_acc,
        "agreement": agreement,
        "train_loss": sum(logged) / max(1, len(logged)),
        "time": t.elapsed(),
    }
    t.epoch_rows.append(row)
    t.epoch = epoch
    t.fenced.set_epochs(t.epoch_rows)
    state = training_state(t)
    t.fenced.replace_file(
        lambda tmp: checkpoints.write_state(tmp, state),
        checkpoints.state_path(t.store.home, t.run_id),
    )
    t.fenced.write_manifest()  # what `store repair` rebuilds the index from
    t.on_step(
        {
            "run_id": t.run_id,
            "role": t.config.role,
            "phase": "epoch",
            "epoch": epoch,
            "epochs": t.config.epochs,
            "step": t.step,
            "total_steps": t.total_steps,
            "val_acc": val_acc,
            "agreement": agreement,
        }
    )
    return row


def finish(t: Training) -> dict[str, Any]:
    """Save the final weights, compute the run's metrics and (for a student) its probe.

    Validation chose nothing here but is what the weighting saw; the headline numbers
    (``test_acc``, the teacher's accuracy, the agreement, per-class accuracy) are measured on
    the test split, which nothing in training looked at. A run with ``evaluate_test`` off (a
    search's trial) never reads the test split: its metrics and probe have no test numbers."""
    weights = t.model.state_dict()
    t.fenced.replace_file(
        lambda tmp: write_weights_file(tmp, weights), t.store.weights_path(t.run_id)
    )
    metrics = {
        "val_acc": t.epoch_rows[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in t.epoch_rows),
        "train_size": len(t.train_y),
        "final_losses": {k: t.history[-1][k] for k in (*COMPONENTS, "total")} if t.history else {},
    }
    test_metrics, test_probe = _on_test(t) if t.test_x is not None else ({}, {})
    metrics.update(test_metrics)
    t.fenced.update(metrics=metrics)
    if t.config.role == "student":
        probe = run_probe(
            student=t.model,
            student_layers=[info.path for info in t.student_layers],
            teacher=t.teacher,
            teacher_layers=[info.path for info in t.teacher_layers],
            pairs=t.pairs,
            adapters=t.hybrid.adapters,
            val_x=t.data.val_x,
            val_y=t.data.val_y,
            class_names=t.data.class_names,
            device=t.device,
            store=t.store if t.config.teacher_cache else None,  # the cache off: live features
            teacher_id=t.teacher_id,
        )
        probe.update(test_probe)
        t.fenced.save_probe(probe)
    return metrics


def _on_test(t: Training) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's test metrics and what its probe keeps of the test split: accuracy, the
    teacher's accuracy and the agreement, per-class accuracy, calibration, the test view, and
    each image's correctness (``test_correct``, for McNemar's test)."""
    logits = logits_of(t.model, t.test_x)  # [N_test, K], CPU
    test_pred = logits.argmax(dim=1)  # [N_test]
    test_y = t.data.test_y
    quality, quality_probe = _test_quality(t, logits)
    view_probe, view_metrics = _test_view(t)
    correct = test_pred == test_y  # [N_test]
    teacher = t.teacher_test_pred
    metrics = {
        "test_acc": float(correct.float().mean()),
        "teacher_acc": float((teacher == test_y).float().mean()) if teacher is not None else None,
        "agreement": float((test_pred == teacher).float().mean()) if teacher is not None else None,
        "per_class_acc": per_class_accuracy(test_pred, test_y, t.data.num_classes),
        **quality,
        **view_metrics,
    }
    probe = {
        "per_class_acc": metrics["per_class_acc"],
        "agreement": metrics["agreement"],
        "test_correct": correct.to(torch.uint8).tolist(),
        **quality_probe,
        **view_probe,
    }
    return metrics, probe


def _test_quality(t: Training, logits: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibration and the class-similarity gap on test (``workbench.training.calibration``);
    the teacher's test logits come from one forward pass of the frozen teacher."""
    teacher_logits = None
    if t.config.role == "student" and t.teacher is not None:
        teacher_logits = logits_of(t.teacher, t.test_x)
    return quality_on_test(logits, teacher_logits, t.data.test_y.cpu(), t.data.num_classes)


def _test_view(t: Training) -> tuple[dict[str, Any], dict[str, Any]]:
    """A student's embeddings and logits on the fixed test subset, the teacher's beside them
    (``workbench.insight.probe_view``), and their k-NN accuracy and silhouette; nothing for a
    teacher run."""
    if t.config.role != "student":
        return {}, {}
    return run_view(
        student=t.model,
        teacher=t.teacher,
        test_x=t.test_x,
        test_y=t.data.test_y,
        device=t.device,
        store=t.store if t.config.teacher_cache else None,
        teacher_id=t.teacher_id,
    )


def training_state(t: Training) -> dict[str, Any]:
    """What ``restore`` needs to continue ``t`` exactly (tensors and plain values only)."""
    return {
        "run_id": t.run_id,
        "fingerprint": t.config.fingerprint(),
        "epoch": t.epoch,
        "step": t.step,
        "elapsed": t.elapsed(),
        "model": t.model.state_dict(),
        "hybrid": t.hybrid.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "generator": t.generator.get_state(),
        "model_generator": t.model_generator.get_state(),
    }


def restore(t: Training, state: dict[str, Any]) -> None:
    """Rewind ``t`` (freshly prepared for the same config) to a checkpointed state; the history
    and epoch rows logged after that checkpoint are dropped from the store."""
    if state.get("fingerprint") != t.config.fingerprint():
        raise CheckpointError(
            f"the training checkpoint of run {t.run_id} belongs to another configuration; "
            "restart the run instead of resuming it"
        )
    t.model.load_state_dict(state["model"])
    t.hybrid.load_state_dict(state["hybrid"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.scaler.load_state_dict(state["scaler"])
    t.generator.set_state(state["generator"])
    t.model_generator.set_state(state["model_generator"])
    t.epoch, t.step = state["epoch"], state["step"]
    t.started = time.time() - state["elapsed"]
    t.history = [r for r in t.store.history(t.run_id) if r["step"] <= t.step]
    t.epoch_rows = [r for r in t.store.epochs(t.run_id) if r["epoch"] <= t.epoch]
    t.fenced.set_history(t.history)
    t.fenced.set_epochs(t.epoch_rows)


def _log_row(
    terms: dict[str, torch.Tensor], hybrid: HybridLoss, step: int, epoch: int, elapsed: float
) -> dict[str, Any]:
    values = torch.stack(
        [terms[k].detach().float() for k in (*COMPONENTS, "total")]
    ).tolist()  # one sync
    row: dict[str, Any] = {"step": step, "epoch": epoch, "time": elapsed}
    row.update(zip((*COMPONENTS, "total"), values, strict=True))
    row.update({f"w_{k}": v for k, v in hybrid.current_weights().items()})
    return row


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift of each image by up to 1/8 of its side (zero padding), drawn per sample, and,
    for RGB, a horizontal flip of each image with probability 1/2."""
    b, c, h, w = x.shape  # [B, C, H, W]
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # [B, C, H + 2p, W + 2p]
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)  # [2, B]
    rows = shifts[0][:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = shifts[1][:, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]  # [B, 1, 1]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    out = out.permute(0, 3, 1, 2)  # [B, C, H, W]
    if c == 3:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous(memory_format=torch.preserve_format)
