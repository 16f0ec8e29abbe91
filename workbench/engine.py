"""The one training loop, for teachers, scratch students and distillation runs.

``run(config, store, on_step, stop)`` takes a frozen ``RunConfig`` and returns the run record.
It reports through ``on_step`` (a callback, as in minGPT's trainer) and never knows who
listens: the CLI prints the events, the app's job manager stores them for the pages to poll.

The loop is kept as lean as a hand-written PyTorch loop: the dataset is a pair of tensors on the
device indexed by a shuffled permutation (no DataLoader), the teacher runs under
``torch.inference_mode()`` (or is replaced by its cached outputs), and the host synchronises only
on logged steps.
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workbench.config import COMPONENTS, RunConfig
from workbench.data import DataBundle, load_dataset
from workbench.errors import CheckpointError, ConfigError, WorkbenchError
from workbench.features import FeatureTaps, build_adapters, check_pairs, pair_layers
from workbench.losses import HybridLoss
from workbench.models import build_model, feature_layers
from workbench.probe import per_class_accuracy, run_probe
from workbench.store import Store, load_state_dict
from workbench.teacher_cache import teacher_predictions, teacher_source

__all__ = [
    "StopFlag",
    "ensure_teacher",
    "evaluate",
    "import_teacher",
    "load_teacher",
    "preflight",
    "resolve_device",
    "run",
]

OnStep = Callable[[dict[str, Any]], None]
StopFlag = threading.Event


class _Stopped(Exception):
    pass


class _Diverged(Exception):
    def __init__(self, step: int):
        self.step = step


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name} asked for, but CUDA is not available here; choose auto or cpu"
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Predicted class of every sample ([N], on the CPU), in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    preds = [model(x[i : i + batch]).argmax(dim=1).cpu() for i in range(0, len(x), batch)]
    model.train(was_training)
    return torch.cat(preds)


# ---------------------------------------------------------------------------- teachers
def load_teacher(
    teacher_run: str, store: Store, data: DataBundle, device: torch.device
) -> nn.Module:
    """Build the teacher architecture of ``teacher_run`` and load its checkpoint (frozen, eval)."""
    try:
        record = store.get_run(teacher_run)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    cfg = record["config"]
    state = store.load_checkpoint(teacher_run)
    # Built on the meta device, the architecture skips its random initialisation (0.8 s for a
    # resnet34); assign=True then adopts the checkpoint's tensors as the parameters.
    with torch.device("meta"):
        model = build_model(cfg["teacher"], data.input_shape, data.num_classes)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"teacher checkpoint {teacher_run} does not fit {cfg['teacher']}: {exc}"
        ) from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a non-persistent buffer
        model = build_model(cfg["teacher"], data.input_shape, data.num_classes)
        model.load_state_dict(state)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def ensure_teacher(
    config: RunConfig, store: Store, on_step: OnStep | None = None, stop: StopFlag | None = None
) -> str:
    """The id of a trained teacher for ``config``: ``config.teacher_run``, one found in the store
    under the fingerprint of ``config.teacher_config()``, or one trained now (once, even when
    several threads or processes ask at the same time)."""
    if config.teacher_run:
        record = _teacher_record(store, config.teacher_run)
        if (
            record["config"]["teacher"] != config.teacher
            or record["config"]["dataset"] != config.dataset
        ):
            raise ConfigError(
                f"teacher run {config.teacher_run} is a {record['config']['teacher']} on "
                f"{record['config']['dataset']}; this run asks for {config.teacher} on {config.dataset}"
            )
        return config.teacher_run
    teacher_cfg = config.teacher_config()
    fingerprint = teacher_cfg.fingerprint()
    what = f"training teacher {config.teacher} on {config.dataset}"
    with store.lock(f"teacher:{fingerprint}", description=f"a run {what}") as held:
        found = store.find_teacher(fingerprint)
        if found:
            return found
        teacher_id = store.create_run(teacher_cfg)
        held.describe(f"run {teacher_id}, which is {what}")
        record = run(teacher_cfg, store, on_step=on_step, stop=stop, run_id=teacher_id)
    if record["status"] == "cancelled":
        raise _Stopped
    if record["status"] != "completed":
        raise WorkbenchError(
            f"training the teacher {config.teacher} {record['status']}: {record['error'] or ''}".strip()
        )
    return record["id"]


def _teacher_record(store: Store, run_id: str) -> dict[str, Any]:
    try:
        record = store.get_run(run_id)
    except KeyError:
        raise ConfigError(
            f"teacher run {run_id} is not in the store; pick another teacher"
        ) from None
    if record["role"] != "teacher" or record["status"] != "completed":
        raise ConfigError(f"run {run_id} is not a completed teacher run")
    return record


def import_teacher(
    store: Store, path: str, *, teacher: str, dataset: str, data_path: str = "", name: str = ""
) -> str:
    """Register an uploaded teacher state dict as a completed teacher run; returns its id.

    The file is loaded with ``weights_only=True`` and must load strictly into ``teacher`` built
    for ``dataset``; its validation accuracy is measured and stored.
    """
    config = RunConfig(
        role="teacher",
        dataset=dataset,
        data_path=data_path,
        teacher=teacher,
        student=teacher,
        weights={"label": 1.0, "response": 0.0, "feature": 0.0, "relation": 0.0},
    )
    data = load_dataset(dataset, data_path=data_path)
    state = load_state_dict(path)
    model = build_model(teacher, data.input_shape, data.num_classes)
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"this checkpoint is not a {teacher} for {dataset} ({data.input_shape}, {data.num_classes} classes): "
            f"{len(missing)} missing keys (e.g. {', '.join(missing[:3]) or '-'}), "
            f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3]) or '-'}). "
            "Pick the architecture it was saved from, or save model.state_dict() of that model."
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise CheckpointError(
            f"this checkpoint does not fit {teacher} for {dataset}: {first.strip()}"
        ) from None
    acc = float((evaluate(model, data.val_x) == data.val_y).float().mean())
    run_id = store.create_run(
        config, name=name or f"uploaded {teacher}", tags=["uploaded"], status="completed"
    )
    store.save_checkpoint(run_id, model.state_dict())
    now = time.time()
    store.update_run(
        run_id,
        started_at=now,
        finished_at=now,
        seconds=0.0,
        teacher_source="upload",
        metrics={"val_acc": acc},
    )
    return run_id


def _key_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


# ---------------------------------------------------------------------------- the run
def _layer_pairs(config: RunConfig, s_layers: list, t_layers: list) -> tuple[tuple[str, str], ...]:
    """The configured layer pairs (or the automatic ones), checked when a term uses them."""
    pairs = config.layer_pairs or pair_layers(s_layers, t_layers)
    if config.weights.feature > 0 or config.weights.relation > 0:
        kind = config.feature_kind if config.weights.feature > 0 else "cosine"
        check_pairs(pairs, s_layers, t_layers, kind)
    return pairs


def preflight(config: RunConfig) -> dict[str, Any]:
    """Check what validation alone cannot, before a run is queued: the dataset is on disk, the
    models build for it, and the layer pairs fit the feature kind. Returns the layers and the
    pairs a run would use; raises a WorkbenchError with the fix otherwise."""
    data = load_dataset(config.dataset, data_path=config.data_path)
    student = build_model(config.trained_model, data.input_shape, data.num_classes)
    s_layers = feature_layers(student, data.input_shape)
    result: dict[str, Any] = {"student_layers": s_layers, "teacher_layers": [], "pairs": ()}
    if config.role == "student":
        teacher = build_model(config.teacher, data.input_shape, data.num_classes)
        t_layers = feature_layers(teacher, data.input_shape)
        result.update(teacher_layers=t_layers, pairs=_layer_pairs(config, s_layers, t_layers))
    return result


def run(
    config: RunConfig,
    store: Store,
    on_step: OnStep | None = None,
    stop: StopFlag | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Train one run to the end and return its record (never raises for a failed run).

    Status at the end: ``completed``; ``cancelled`` when ``stop`` is set or a cancel is
    requested in the store; ``diverged`` (with ``diverged_step``) on a NaN/inf loss; ``failed``
    with the message on any exception, CUDA out-of-memory included.
    """
    run_id = run_id or store.create_run(config)
    started = time.time()
    store.update_run(
        run_id, status="running", started_at=started, pid=os.getpid(), host=socket.gethostname()
    )
    status, fields = "completed", {}
    try:
        fields = _train(config, store, run_id, on_step or (lambda event: None), stop, started)
    except (_Stopped, KeyboardInterrupt):
        status = "cancelled"
    except _Diverged as exc:
        status, fields = (
            "diverged",
            {
                "diverged_step": exc.step,
                "error": f"the loss became NaN/inf at step {exc.step}; lower the learning rate or the weights",
            },
        )
    except WorkbenchError as exc:
        status, fields = "failed", {"error": str(exc)}
    except torch.OutOfMemoryError:
        status, fields = (
            "failed",
            {"error": "out of GPU memory: lower the batch size or pick smaller models"},
        )
    except (
        Exception
    ) as exc:  # a bug or an environment problem: keep the message, keep the store sane
        status, fields = "failed", {"error": f"{type(exc).__name__}: {exc}"}
    finished = time.time()
    record = store.update_run(
        run_id, status=status, finished_at=finished, seconds=finished - started, **fields
    )
    if status == "completed" and config.role == "teacher":
        store.set_teacher(config.fingerprint(), run_id)  # later students reuse it
    if on_step:
        on_step(
            {
                "run_id": run_id,
                "role": config.role,
                "phase": "end",
                "status": status,
                "error": record.get("error"),
            }
        )
    return record


def _train(
    config: RunConfig,
    store: Store,
    run_id: str,
    on_step: OnStep,
    stop: StopFlag | None,
    started: float,
) -> dict[str, Any]:
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, data_path=config.data_path)
    teacher, teacher_id = None, None
    if config.uses_teacher:
        teacher_id = ensure_teacher(config, store, on_step=on_step, stop=stop)
        teacher = load_teacher(teacher_id, store, data, device)
    elif config.role == "student":  # scratch: probe against a teacher only if one exists already
        teacher_id = config.teacher_run or store.find_teacher(config.teacher_config().fingerprint())
        if teacher_id:
            teacher = load_teacher(teacher_id, store, data, device)
    store.update_run(run_id, teacher_run=teacher_id)

    seed_everything(config.seed)
    model = build_model(config.trained_model, data.input_shape, data.num_classes).to(device)
    s_layers = feature_layers(model, data.input_shape)
    t_layers = feature_layers(teacher, data.input_shape) if teacher is not None else []
    pairs: tuple[tuple[str, str], ...] = ()
    if teacher is not None:
        pairs = _layer_pairs(config, s_layers, t_layers)
    hybrid = HybridLoss(
        config.weights,
        temperature=config.temperature,
        feature_kind=config.feature_kind,
        relation_kind=config.relation_kind,
        adapters=build_adapters(pairs, s_layers, t_layers) if config.weights.feature > 0 else None,
        weighting=config.weighting,
    ).to(device)
    # Adapters and weighting parameters exist before the optimizer, so they train.
    # Weight decay would pull learned loss weights (log-variances) towards 1, so they get none.
    optimizer = torch.optim.AdamW(
        [
            {"params": [*model.parameters(), *_loss_parameters(hybrid, weighting=False)]},
            {"params": _loss_parameters(hybrid, weighting=True), "weight_decay": 0.0},
        ],
        lr=config.lr,
        fused=device.type == "cuda",
    )

    n = len(data.train_x)
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch)  # drop the ragged last batch (BatchNorm needs > 1 sample)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    val_x = data.val_x.to(device)

    s_paths = [s for s, _ in pairs] if hybrid.needs_features else []
    t_paths = [t for _, t in pairs] if hybrid.needs_features else []
    source = (
        teacher_source(config, teacher, teacher_id, t_paths, train_x, store, device)
        if hybrid.needs_teacher
        else None
    )
    if source is not None:
        store.update_run(run_id, teacher_source=source.kind, teacher_note=source.note)
    teacher_pred = (  # computed once per teacher and validation split, unless the cache is off
        teacher_predictions(config, teacher, teacher_id, val_x, store)
        if teacher is not None
        else None
    )
    teacher_acc = (
        float((teacher_pred == data.val_y).float().mean()) if teacher_pred is not None else None
    )

    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    # Channels-last lets cuDNN run its NHWC tensor-core kernels under autocast; it pays only for
    # convolutional models. Batches train_x[idx] inherit train_x's layout, so the input is
    # converted once here instead of at the first convolution of every step.
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
        train_x = train_x.contiguous(memory_format=torch.channels_last)
    if (
        device.type == "cuda"
        and source is not None
        and source.kind == "live"
        and any(isinstance(m, nn.Conv2d) for m in teacher.modules())
    ):
        teacher.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    epoch_rows: list[dict[str, Any]] = []
    step = 0
    model.train()
    with FeatureTaps(model, s_paths) as s_taps:
        for epoch in range(1, config.epochs + 1):
            epoch_start = len(history)
            order = torch.randperm(n, generator=generator)[: steps_per_epoch * batch].to(device)
            for b in range(steps_per_epoch):
                idx = order[b * batch : (b + 1) * batch]  # [B]
                x, y = train_x[idx], train_y[idx]  # [B, C, H, W], [B]
                if config.augment:
                    x = augment_batch(x, generator)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model(x)  # [B, K]
                    t_logits, t_feats = source(idx, x) if source is not None else (None, [])
                    terms = hybrid(logits, y, t_logits, s_taps.features, t_feats)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                if stop is not None and stop.is_set():
                    raise _Stopped
                if step % config.log_every == 0 or b == steps_per_epoch - 1:
                    row = _log_row(terms, hybrid, step, epoch, started)
                    if not math.isfinite(row["total"]):
                        raise _Diverged(step)
                    history.append(row)
                    store.save_history_tail(run_id, history)
                    eta = (time.time() - started) / step * (total_steps - step)
                    progress = {
                        "epoch": epoch,
                        "epochs": config.epochs,
                        "step": step,
                        "total_steps": total_steps,
                        "eta_s": eta,
                    }
                    store.update_run(run_id, progress=progress)
                    on_step(
                        {
                            "run_id": run_id,
                            "role": config.role,
                            "phase": "step",
                            **progress,
                            "losses": {k: row[k] for k in (*COMPONENTS, "total")},
                            "weights": hybrid.current_weights(),
                        }
                    )
                    if store.cancel_requested(run_id):
                        raise _Stopped
            pred = evaluate(model, val_x)
            val_acc = float((pred == data.val_y).float().mean())
            agreement = (
                float((pred == teacher_pred).float().mean()) if teacher_pred is not None else None
            )
            hybrid.epoch_end(val_acc)
            logged = [r["total"] for r in history[epoch_start:]]  # this epoch's logged steps
            train_loss = sum(logged) / max(1, len(logged))
            epoch_rows.append(
                {
                    "epoch": epoch,
                    "val_acc": val_acc,
                    "agreement": agreement,
                    "train_loss": train_loss,
                    "time": time.time() - started,
                }
            )
            store.set_epochs(run_id, epoch_rows)
            on_step(
                {
                    "run_id": run_id,
                    "role": config.role,
                    "phase": "epoch",
                    "epoch": epoch,
                    "epochs": config.epochs,
                    "step": step,
                    "total_steps": total_steps,
                    "val_acc": val_acc,
                    "agreement": agreement,
                }
            )

    store.save_checkpoint(run_id, model.state_dict())
    metrics = {
        "val_acc": epoch_rows[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in epoch_rows),
        "teacher_acc": teacher_acc,
        "agreement": epoch_rows[-1]["agreement"],
        "final_losses": {k: history[-1][k] for k in (*COMPONENTS, "total")} if history else {},
        "per_class_acc": per_class_accuracy(pred, data.val_y, data.num_classes),
    }
    store.update_run(run_id, metrics=metrics)
    if config.role == "student":
        probe = run_probe(
            student=model,
            student_layers=[info.path for info in s_layers],
            teacher=teacher,
            teacher_layers=[info.path for info in t_layers],
            pairs=pairs,
            adapters=hybrid.adapters if config.weights.feature > 0 else None,
            val_x=data.val_x,
            val_y=data.val_y,
            class_names=data.class_names,
            device=device,
        )
        probe["per_class_acc"] = metrics["per_class_acc"]
        probe["agreement"] = metrics["agreement"]
        store.save_probe(run_id, probe)
    return {"metrics": metrics}


def _loss_parameters(hybrid: HybridLoss, *, weighting: bool) -> list[nn.Parameter]:
    """The loss's own parameters: the weighting scheme's, or the rest (the adapters)."""
    return [p for n, p in hybrid.named_parameters() if n.startswith("weighting.") == weighting]


def _log_row(
    terms: dict[str, torch.Tensor], hybrid: HybridLoss, step: int, epoch: int, started: float
) -> dict[str, Any]:
    values = torch.stack(
        [terms[k].detach().float() for k in (*COMPONENTS, "total")]
    ).tolist()  # one sync
    row: dict[str, Any] = {"step": step, "epoch": epoch, "time": time.time() - started}
    row.update(zip((*COMPONENTS, "total"), values, strict=True))
    row.update({f"w_{k}": v for k, v in hybrid.current_weights().items()})
    return row


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift by up to 1/8 of the side (zero padding) and, for RGB, horizontal flips."""
    b, c, h, w = x.shape  # [B, C, H, W]
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    out = padded[:, :, dy : dy + h, dx : dx + w]
    if c == 3:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
