"""The one training loop, for teachers, scratch students and distillation runs.

``run(config, store, on_step, stop)`` takes a frozen ``RunConfig`` and returns the run record.
It reports through ``on_step`` (a callback, as in minGPT's trainer) and never knows who
listens: the CLI prints the events, the app's job manager stores them for the pages to poll.

``prepare`` builds the run (data, teacher, model, loss, optimizer: ``workbench.training.setup``),
the named steps advance it (``workbench.training.steps``), and a run with a training state
(``workbench.storage.training_state``) continues from it.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import torch

from workbench.config.run_config import RunConfig
from workbench.data.datasets import load_dataset, train_subset
from workbench.distill.taps import FeatureTaps
from workbench.errors import WorkbenchError
from workbench.storage import training_state as checkpoints
from workbench.storage.locks import HOST
from workbench.storage.store import Store
from workbench.training.events import Diverged, OnStep, StopFlag, Stopped
from workbench.training.setup import (
    Training,
    build_model_and_loss,
    build_optimizer,
    channels_last,
    mixed_precision,
    resolve_device,
    teacher_outputs,
)
from workbench.training.steps import end_epoch, finish, restore, train_epoch
from workbench.training.teachers import remember_teacher, teacher_for_run, teacher_key

__all__ = ["prepare", "run"]


def run(
    config: RunConfig,
    store: Store,
    on_step: OnStep | None = None,
    stop: StopFlag | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Train one run to the end and return its record (never raises for a failed run).

    A run that has a training checkpoint (``workbench.storage.training_state``: it finished an epoch
    before it was interrupted, failed or was cancelled) continues from it; the result equals
    that of an uninterrupted run. Status at the end: ``completed``; ``cancelled`` when ``stop``
    is set or a cancel is requested in the store; ``diverged`` (with ``diverged_step``) on a
    NaN/inf loss; ``failed`` with the message on any exception, CUDA out-of-memory included.
    """
    run_id = run_id or store.create_run(config, status="running")  # never seen as queued
    started = time.time()
    store.update_run_if(  # `executions` counts the starts: a run is executed once per claim
        run_id,
        lambda record: True,
        status="running",
        started_at=lambda record: record.get("started_at") or started,
        finished_at=None,
        error=None,
        pid=os.getpid(),
        host=HOST,
        executions=lambda record: (record.get("executions") or 0) + 1,
    )
    status, fields = _train_safely(config, store, run_id, on_step, stop)
    finished = time.time()
    if status == "completed" and config.role == "teacher":  # kept in the manifest for repair
        fields["teacher_key"] = teacher_key(config)
    record = store.update_run(
        run_id,
        status=status,
        finished_at=finished,
        seconds=finished - store.get_run(run_id)["started_at"],
        **fields,
    )
    if status == "completed":
        checkpoints.delete_state(store.home, run_id)  # its final weights are the plain checkpoint
        if config.role == "teacher":
            remember_teacher(store, config, run_id, record.get("owner") or "")  # students reuse it
    if on_step:
        end = {"run_id": run_id, "role": config.role, "phase": "end", "status": status}
        on_step(end | {"error": record.get("error")})
    return record


def _train_safely(
    config: RunConfig, store: Store, run_id: str, on_step: OnStep | None, stop: StopFlag | None
) -> tuple[str, dict[str, Any]]:
    """``_train`` with every way it can end turned into a final status and record fields."""
    try:
        return "completed", _train(config, store, run_id, on_step or (lambda event: None), stop)
    except (Stopped, KeyboardInterrupt):
        return "cancelled", {}
    except Diverged as exc:
        return "diverged", {
            "diverged_step": exc.step,
            "error": f"the loss became NaN/inf at step {exc.step}; "
            "lower the learning rate or the weights",
        }
    except WorkbenchError as exc:
        return "failed", {"error": str(exc)}
    except torch.OutOfMemoryError:
        return "failed", {"error": "out of GPU memory: lower the batch size or pick smaller models"}
    except (
        Exception
    ) as exc:  # a bug or an environment problem: keep the message, keep the store sane
        return "failed", {"error": f"{type(exc).__name__}: {exc}"}


def _train(
    config: RunConfig, store: Store, run_id: str, on_step: OnStep, stop: StopFlag | None
) -> dict[str, Any]:
    """Prepare (or restore) the run, train its remaining epochs, finish it. The teacher is
    lent from the process's warm pool for the whole run (``workbench.training.teacher_pool``) and goes back to
    it when the run ends cleanly."""
    state = checkpoints.load_state(store.home, run_id)
    with contextlib.ExitStack() as leases:
        t = prepare(config, store, run_id, on_step, stop, leases=leases)
        if state is not None:
            restore(t, state)
        else:  # a first start, or a restart of a run that never finished an epoch
            store.set_history(run_id, [])
            store.set_epochs(run_id, [])
        with FeatureTaps(t.model, t.student_paths) as taps:
            for epoch in range(t.epoch + 1, config.epochs + 1):
                train_epoch(t, epoch, taps)
                end_epoch(t, epoch)
        return {"metrics": finish(t)}


def prepare(
    config: RunConfig,
    store: Store,
    run_id: str,
    on_step: OnStep = lambda event: None,
    stop: StopFlag | None = None,
    leases: contextlib.ExitStack | None = None,
) -> Training:
    """Data, teacher (with ``leases``: lent warm until they close), model, loss, optimizer."""
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, data_path=config.data_path)
    teacher, teacher_id = teacher_for_run(
        config, store, run_id, data, device, on_step, stop, leases, train=run
    )
    store.update_run(run_id, teacher_run=teacher_id)
    model, hybrid, generator, model_generator, pairs, s_layers, t_layers = build_model_and_loss(
        config, data, teacher, device
    )
    optimizer = build_optimizer(model, hybrid, lr=config.lr, device=device)
    subset = train_subset(data.train_y, config.train_fraction)  # [M]: all, or a reduced recipe
    train_x, train_y = data.train_x[subset].to(device), data.train_y[subset].to(device)
    n = len(train_y)
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch)  # drop the ragged last batch (BatchNorm needs > 1 sample)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=steps_per_epoch * config.epochs
    )
    val_x, test_x = data.val_x.to(device), data.test_x.to(device)
    source, teacher_pred, teacher_test_pred = teacher_outputs(
        config, store, run_id, hybrid, pairs, teacher, teacher_id, (train_x, val_x, test_x), device
    )
    use_amp, amp_dtype, scaler = mixed_precision(device)
    train_x = channels_last(model, teacher, source, train_x, device)
    return Training(
        config=config,
        store=store,
        run_id=run_id,
        on_step=on_step,
        stop=stop,
        device=device,
        data=data,
        teacher=teacher,
        teacher_id=teacher_id,
        student_layers=s_layers,
        teacher_layers=t_layers,
        pairs=pairs,
        model=model,
        hybrid=hybrid,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        generator=generator,
        model_generator=model_generator,
        source=source,
        teacher_pred=teacher_pred,
        teacher_test_pred=teacher_test_pred,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        test_x=test_x,
        batch=batch,
        steps_per_epoch=steps_per_epoch,
        amp_dtype=amp_dtype,
        use_amp=use_amp,
    )
