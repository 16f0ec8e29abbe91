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
import logging
import os
import time
from typing import Any

import torch

from workbench.config.run_config import RunConfig
from workbench.data.datasets import load_dataset, train_subset
from workbench.distill.taps import FeatureTaps
from workbench.errors import WorkbenchError
from workbench.storage import training_state as checkpoints
from workbench.storage.failures import full_disk_error, is_disk_full
from workbench.storage.fencing import FencedRun, LostClaim
from workbench.storage.locks import HOST
from workbench.storage.store import Store
from workbench.training.events import Diverged, OnStep, StopFlag, Stopped
from workbench.training.schedule import build_scheduler
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

log = logging.getLogger("kdwb.run")


def run(
    config: RunConfig,
    store: Store,
    on_step: OnStep | None = None,
    stop: StopFlag | None = None,
    run_id: str | None = None,
    fence: int | None = None,
) -> dict[str, Any]:
    """Train one run to the end and return its record (never raises for a failed run).

    A run that has a training checkpoint (``workbench.storage.training_state``: it finished an epoch
    before it was interrupted, failed or was cancelled) continues from it; the result equals
    that of an uninterrupted run. Status at the end: ``completed``; ``cancelled`` when ``stop``
    is set or a cancel is requested in the store; ``diverged`` (with ``diverged_step``) on a
    NaN/inf loss; ``failed`` with the message on any exception, CUDA out-of-memory included.

    ``fence``: the run's ``claims`` when the caller claimed it (default: as it is now). Every
    write checks it (``workbench.storage.fencing``): when another executor has claimed the run
    since, training stops at its next write, leaves the stored record alone and says so (in the
    log, and as status ``lost`` in the end event and the record returned, which is not stored).
    """
    run_id = run_id or store.create_run(config, status="running")  # never seen as queued
    fenced = FencedRun(
        store, run_id, store.get_run(run_id).get("claims") if fence is None else fence
    )
    try:
        _start(fenced, unclaimed=fence is None)
        status, fields = _train_safely(config, store, run_id, on_step, stop, fenced)
        record = _end(config, store, fenced, status, fields)
    except LostClaim as exc:  # what this process knows of it, not the current holder's record
        log.warning("%s", exc)
        record = {**(store.get("run:" + run_id) or {"id": run_id}), "status": "lost"}
        record["error"] = str(exc)
        if on_step:
            on_step(
                {
                    "run_id": run_id,
                    "role": config.role,
                    "phase": "end",
                    "status": "lost",
                    "error": str(exc),
                }
            )
        return record
    if on_step:
        end = {"run_id": run_id, "role": config.role, "phase": "end", "status": status}
        on_step(end | {"error": record.get("error")})
    return record


def _start(fenced: FencedRun, *, unclaimed: bool) -> None:
    """Mark the run running here, if its claim is still ``fenced.token`` (``unclaimed``: the
    caller did not claim it, so a queued run is taken as it is); ``LostClaim`` otherwise."""
    started = time.time()
    statuses = ("running", "queued") if unclaimed else ("running",)
    record = fenced.store.update_run_if(  # `executions` counts the starts: once per claim
        fenced.run_id,
        lambda r: r["status"] in statuses and r.get("claims") == fenced.token,
        status="running",
        started_at=lambda r: r.get("started_at") or started,
        finished_at=None,
        error=None,
        pid=os.getpid(),
        host=HOST,
        executions=lambda r: (r.get("executions") or 0) + 1,
    )
    if record is None:
        fenced.check()  # raises LostClaim, saying why


def _end(
    config: RunConfig, store: Store, fenced: FencedRun, status: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """Write the final status (while the claim holds), then tidy up after a completed run."""
    run_id = fenced.run_id
    finished = time.time()
    if status == "completed" and config.role == "teacher":  # kept in the manifest for repair
        fields["teacher_key"] = teacher_key(config)
    record = fenced.update(
        status=status,
        finished_at=finished,
        seconds=finished - store.get_run(run_id)["started_at"],
        **fields,
    )
    if status == "completed":
        checkpoints.delete_state(store.home, run_id)  # its final weights are the plain checkpoint
        if config.role == "teacher":
            remember_teacher(store, config, run_id, record.get("owner") or "")  # students reuse it
    return record


def _train_safely(
    config: RunConfig,
    store: Store,
    run_id: str,
    on_step: OnStep | None,
    stop: StopFlag | None,
    fenced: FencedRun,
) -> tuple[str, dict[str, Any]]:
    """``_train`` with every way it can end turned into a final status and record fields
    (``LostClaim`` passes: another executor holds the run now, and nothing may be written)."""
    try:
        on_step = on_step or (lambda event: None)
        return "completed", _train(config, store, run_id, on_step, stop, fenced)
    except LostClaim:
        raise  # not an end of the run: its current holder writes that
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
        if is_disk_full(exc, store.home):
            return "failed", {"error": str(full_disk_error(store.home, f"saving run {run_id}"))}
        return "failed", {"error": f"{type(exc).__name__}: {exc}"}


def _train(
    config: RunConfig,
    store: Store,
    run_id: str,
    on_step: OnStep,
    stop: StopFlag | None,
    fenced: FencedRun,
) -> dict[str, Any]:
    """Prepare (or restore) the run, train its remaining epochs, finish it. The teacher is
    lent from the process's warm pool for the whole run (``workbench.training.teacher_pool``) and goes back to
    it when the run ends cleanly."""
    state = checkpoints.load_state(store.home, run_id)
    with contextlib.ExitStack() as leases:
        t = prepare(config, store, run_id, on_step, stop, leases=leases, fenced=fenced)
        if state is not None:
            restore(t, state)
        else:  # a first start, or a restart of a run that never finished an epoch
            fenced.set_history([])
            fenced.set_epochs([])
        with FeatureTaps(t.model, t.student_paths) as taps:
            for epoch in range(t.epoch + 1, config.epochs + 1):
                train_epoch(t, epoch, taps)
                end_epoch(t, epoch)
        return {"metrics": finish(t)}


def _training_split(
    config: RunConfig, data: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The training images and labels on the device (all, or the recipe's fraction), the
    batch size and the steps per epoch (the ragged last batch is dropped: BatchNorm needs
    more than one sample)."""
    subset = train_subset(data.train_y, config.train_fraction)  # [M]
    train_x, train_y = data.train_x[subset].to(device), data.train_y[subset].to(device)
    batch = min(config.batch_size, len(train_y))
    return train_x, train_y, batch, max(1, len(train_y) // batch)


def _optimizer_and_schedule(
    config: RunConfig, model: Any, hybrid: Any, device: torch.device, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The run's recipe: its optimizer over the model and the loss's modules, and its schedule."""
    optimizer = build_optimizer(
        model,
        hybrid,
        lr=config.lr,
        device=device,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    return optimizer, build_scheduler(optimizer, config, steps_per_epoch)


def prepare(
    config: RunConfig,
    store: Store,
    run_id: str,
    on_step: OnStep = lambda event: None,
    stop: StopFlag | None = None,
    leases: contextlib.ExitStack | None = None,
    fenced: FencedRun | None = None,
) -> Training:
    """Data, teacher (with ``leases``: lent warm until they close), model, loss, optimizer;
    ``fenced``: the run's writes (default, outside ``run``: checked against the run as it is)."""
    fenced = fenced or FencedRun.as_it_is(store, run_id)
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, data_path=config.data_path)
    teacher, teacher_id = teacher_for_run(
        config, store, run_id, data, device, on_step, stop, leases, train=run
    )
    model, hybrid, generator, model_generator, pairs, s_layers, t_layers = build_model_and_loss(
        config, data, teacher, device
    )  # `pairs`: the layer pairs used, automatic ones resolved (the record names runs by them)
    fenced.update(teacher_run=teacher_id, pairs=[list(pair) for pair in pairs])
    train_x, train_y, batch, steps_per_epoch = _training_split(config, data, device)
    optimizer, scheduler = _optimizer_and_schedule(config, model, hybrid, device, steps_per_epoch)
    val_x = data.val_x.to(device)
    test_x = data.test_x.to(device) if config.evaluate_test else None  # None: a search's trial
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
        fenced=fenced,
    )
