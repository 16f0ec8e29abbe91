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

import contextlib
import functools
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.config.run_config import COMPONENTS, RunConfig
from workbench.data.datasets import SPLIT_VERSION, DataBundle, load_dataset, train_subset
from workbench.distill.gradient_shares import SHARE_FIELDS, gradient_shares
from workbench.distill.losses import HybridLoss, uses_adapter
from workbench.distill.taps import FeatureTaps, build_adapters, check_pairs, pair_layers
from workbench.errors import CheckpointError, ConfigError, WorkbenchError
from workbench.models.registry import build_model, feature_layers
from workbench.runs import queue as runqueue
from workbench.storage import training_state as checkpoints
from workbench.storage.store import Store, load_state_dict
from workbench.training import teacher_pool as warm
from workbench.training.probe import per_class_accuracy, run_probe
from workbench.training.rng import seeded_construction, use_run_generator
from workbench.training.teacher_cache import (
    CachedTeacher,
    LiveTeacher,
    teacher_predictions,
    teacher_source,
)

__all__ = [
    "StopFlag",
    "Training",
    "augment_batch",
    "build_model_and_loss",
    "build_optimizer",
    "end_epoch",
    "ensure_teacher",
    "evaluate",
    "finish",
    "import_teacher",
    "load_teacher",
    "prepare",
    "preflight",
    "resolve_device",
    "restore",
    "run",
    "train_epoch",
    "train_step",
    "training_state",
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
    config: RunConfig,
    store: Store,
    on_step: OnStep | None = None,
    stop: StopFlag | None = None,
    *,
    owner: str = "",
) -> str:
    """The id of a trained teacher for ``config``: ``config.teacher_run``, one found in the store
    under the fingerprint of ``config.teacher_config()``, or one trained now (once, even when
    several threads or processes ask at the same time), owned by ``owner`` (whose run needed
    it)."""
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
    with store.lock(
        f"teacher:{fingerprint}",
        description=f"a run {what}",
        on_wait=lambda message: (
            on_step({"run_id": None, "role": "teacher", "phase": "wait", "message": message})
            if on_step
            else None
        ),
    ) as held:
        found = store.find_teacher(teacher_key(teacher_cfg))
        if found:
            return found
        teacher_id = _unfinished_teacher(store, fingerprint) or store.create_run(
            teacher_cfg,
            status="running",  # held by this process, never seen as queued
            owner=owner,
        )  # an unfinished one is a run a dead process left: it continues from its checkpoint
        held.describe(f"run {teacher_id}, which is {what}")
        record = run(teacher_cfg, store, on_step=on_step, stop=stop, run_id=teacher_id)
    if record["status"] == "cancelled":
        raise _Stopped
    if record["status"] != "completed":
        raise WorkbenchError(
            f"training the teacher {config.teacher} {record['status']}: {record['error'] or ''}".strip()
        )
    return record["id"]


def teacher_key(teacher_config: RunConfig) -> str:
    """The key under which the store finds the trained teacher of a recipe: its fingerprint
    and the version of the data splits (a teacher trained on older splits may have seen
    today's test images, so it is not reused)."""
    return f"{teacher_config.fingerprint()}:split{SPLIT_VERSION}"


def _unfinished_teacher(store: Store, fingerprint: str) -> str | None:
    """A teacher run of this recipe that a process left unfinished (interrupted, or still
    marked running by a dead process), claimed for resuming; None when there is none."""
    runqueue.recover(store, auto_resume=False)
    for record in store.list_runs(role="teacher", status=("interrupted", "queued")):
        if record["fingerprint"] != fingerprint:
            continue
        claimed = store.update_run_if(
            record["id"],
            lambda r: r["status"] in ("interrupted", "queued"),
            status="running",
            **runqueue.Executor("teacher").claim_fields(),
        )
        if claimed is not None:
            return record["id"]
    return None


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
    store: Store,
    path: str,
    *,
    teacher: str,
    dataset: str,
    data_path: str = "",
    name: str = "",
    owner: str = "",
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
    val_acc = float((evaluate(model, data.val_x) == data.val_y).float().mean())
    test_acc = float((evaluate(model, data.test_x) == data.test_y).float().mean())
    run_id = store.create_run(
        config,
        name=name or f"uploaded {teacher}",
        tags=["uploaded"],
        status="completed",
        owner=owner,
    )
    store.save_checkpoint(run_id, model.state_dict())
    now = time.time()
    store.update_run(
        run_id,
        started_at=now,
        finished_at=now,
        seconds=0.0,
        teacher_source="upload",
        metrics={"val_acc": val_acc, "test_acc": test_acc},
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
        host=socket.gethostname(),
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
            store.set_teacher(fields["teacher_key"], run_id)  # later students reuse it
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
    except (_Stopped, KeyboardInterrupt):
        return "cancelled", {}
    except _Diverged as exc:
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


# ---------------------------------------------------------------------------- the run's state
@dataclass
class Training:
    """Everything one run trains with. ``prepare`` builds it, ``restore`` rewinds it to a
    checkpoint, and the named steps (``train_epoch``, ``end_epoch``, ``finish``) advance it."""

    config: RunConfig
    store: Store
    run_id: str
    on_step: OnStep
    stop: StopFlag | None
    device: torch.device
    data: DataBundle
    teacher: nn.Module | None
    teacher_id: str | None
    student_layers: list
    teacher_layers: list
    pairs: tuple[tuple[str, str], ...]
    model: nn.Module
    hybrid: HybridLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # CPU: data order and augmentation
    model_generator: torch.Generator  # the model's device: dropout, stochastic depth
    source: LiveTeacher | CachedTeacher | None
    teacher_pred: torch.Tensor | None  # [N_val], the teacher's predicted classes
    teacher_test_pred: torch.Tensor | None  # [N_test]
    train_x: torch.Tensor  # [N, C, H, W] on the device
    train_y: torch.Tensor  # [N]
    val_x: torch.Tensor  # [N_val, C, H, W] on the device
    test_x: torch.Tensor  # [N_test, C, H, W] on the device
    batch: int
    steps_per_epoch: int
    amp_dtype: torch.dtype
    use_amp: bool
    started: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_rows: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    epoch: int = 0  # the last finished epoch

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def student_paths(self) -> list[str]:
        return [s for s, _ in self.pairs] if self.hybrid.needs_features else []

    def elapsed(self) -> float:
        return time.time() - self.started


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
    teacher, teacher_id = _teacher_for(config, store, run_id, data, device, on_step, stop, leases)
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
    source, teacher_pred, teacher_test_pred = _teacher_outputs(
        config, store, run_id, hybrid, pairs, teacher, teacher_id, (train_x, val_x, test_x), device
    )
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    train_x = _channels_last(model, teacher, source, train_x, device)
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


def _teacher_outputs(
    config: RunConfig,
    store: Store,
    run_id: str,
    hybrid: HybridLoss,
    pairs: tuple[tuple[str, str], ...],
    teacher: nn.Module | None,
    teacher_id: str | None,
    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
) -> tuple[LiveTeacher | CachedTeacher | None, torch.Tensor | None, torch.Tensor | None]:
    """Where the loss gets the teacher's outputs (live or cached; None when no term needs
    them), and the teacher's predicted classes on validation and test (once per teacher and
    split, unless the cache is off; None without a teacher)."""
    train_x, val_x, test_x = splits
    source = None
    if hybrid.needs_teacher:
        paths = [t for _, t in pairs] if hybrid.needs_features else []
        source = teacher_source(config, teacher, teacher_id, paths, train_x, store, device)
        store.update_run(run_id, teacher_source=source.kind, teacher_note=source.note)
    if teacher is None:
        return source, None, None
    return (
        source,
        teacher_predictions(config, teacher, teacher_id, val_x, store),
        teacher_predictions(config, teacher, teacher_id, test_x, store),
    )


def _teacher_for(
    config: RunConfig,
    store: Store,
    run_id: str,
    data: DataBundle,
    device: torch.device,
    on_step: OnStep,
    stop: StopFlag | None,
    leases: contextlib.ExitStack | None = None,
) -> tuple[nn.Module | None, str | None]:
    """The frozen teacher a run trains or is probed against, and its run id (or None, None).

    A resumed run keeps the teacher it started with. A scratch student is probed against a
    teacher only if one exists already."""
    record = store.get_run(run_id)
    teacher_id = record.get("teacher_run") if config.role == "student" else None
    if teacher_id and not store.has_run(teacher_id):
        teacher_id = None
    if not teacher_id and config.uses_teacher:
        owner = record.get("owner") or ""
        teacher_id = ensure_teacher(config, store, on_step=on_step, stop=stop, owner=owner)
    elif not teacher_id and config.role == "student":
        teacher_id = config.teacher_run or store.find_teacher(teacher_key(config.teacher_config()))
    if not teacher_id:
        return None, None
    key = _warm_teacher_key(teacher_id, store, data, device) if leases is not None else None
    if key is None:  # no pool to lend from, or a checkpoint it cannot key
        return load_teacher(teacher_id, store, data, device), teacher_id
    load = functools.partial(load_teacher, teacher_id, store, data, device)
    return leases.enter_context(warm.lend_teacher(key, load)), teacher_id


def _warm_teacher_key(
    teacher_id: str, store: Store, data: DataBundle, device: torch.device
) -> tuple | None:
    """What a loaded teacher depends on: the store, the run, its checkpoint file (size and
    mtime: a replaced file is another teacher), the device and the data's input shape and
    classes. None when the checkpoint cannot be seen (``load_teacher`` says why)."""
    try:
        stat = store.checkpoint_path(teacher_id).stat()
    except OSError:
        return None
    where = (str(store.home), teacher_id, stat.st_size, stat.st_mtime_ns, str(device))
    return (*where, tuple(data.input_shape), data.num_classes)


def build_model_and_loss(
    config: RunConfig, data: DataBundle, teacher: nn.Module | None, device: torch.device
) -> tuple[nn.Module, HybridLoss, torch.Generator, torch.Generator, tuple, list, list]:
    """The model to train and the hybrid loss (with its adapters and weighting parameters),
    initialised from ``config.seed`` alone, and the run's own generators.

    Returns ``(model, hybrid, generator, model_generator, pairs, student_layers,
    teacher_layers)``: ``generator`` (CPU) orders and augments the data, ``model_generator``
    (on the device) drives dropout; nothing of the run draws from the global generator."""
    with seeded_construction(config.seed):
        model = build_model(config.trained_model, data.input_shape, data.num_classes)
        s_layers = feature_layers(model, data.input_shape)
        # The teacher is frozen and often lent warm (``workbench.training.teacher_pool``): its layers once.
        t_layers = []
        if teacher is not None:
            t_layers = warm.layers_of(teacher, data.input_shape, feature_layers)
        pairs = _layer_pairs(config, s_layers, t_layers) if teacher is not None else ()
        adapted = config.weights.feature > 0 and uses_adapter(config.feature_kind)
        adapters = build_adapters(pairs, s_layers, t_layers) if adapted else None
        hybrid = HybridLoss(
            config.weights,
            temperature=config.temperature,
            feature_kind=config.feature_kind,
            relation_kind=config.relation_kind,
            adapters=adapters,
            weighting=config.weighting,
        )
    model_generator = torch.Generator(device=device).manual_seed(config.seed)
    use_run_generator(model, model_generator)
    return (
        model.to(device),
        hybrid.to(device),
        torch.Generator().manual_seed(config.seed),
        model_generator,
        pairs,
        s_layers,
        t_layers,
    )


def build_optimizer(
    model: nn.Module, hybrid: HybridLoss, *, lr: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the model, the loss's adapters (so they train, unlike the course sketch's
    lazily created projection) and the weighting scheme's parameters. Weight decay would pull
    learned loss weights (log-variances) towards 1, so that group gets none."""
    return torch.optim.AdamW(
        [
            {"params": [*model.parameters(), *_loss_parameters(hybrid, weighting=False)]},
            {"params": _loss_parameters(hybrid, weighting=True), "weight_decay": 0.0},
        ],
        lr=lr,
        fused=device.type == "cuda",
    )


def _loss_parameters(hybrid: HybridLoss, *, weighting: bool) -> list[nn.Parameter]:
    """The loss's own parameters: the weighting scheme's, or the rest (the adapters)."""
    scheme = {id(p) for p in hybrid.scheme.parameters()}
    return [p for p in hybrid.parameters() if (id(p) in scheme) == weighting]


def _channels_last(
    model: nn.Module,
    teacher: nn.Module | None,
    source: LiveTeacher | CachedTeacher | None,
    train_x: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """On CUDA, channels-last lets cuDNN run its NHWC tensor-core kernels under autocast; it
    pays only for convolutional models. Batches ``train_x[idx]`` inherit ``train_x``'s layout,
    so the input is converted once here instead of at the first convolution of every step."""
    if device.type != "cuda":
        return train_x
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
        train_x = train_x.contiguous(memory_format=torch.channels_last)
    if (
        teacher is not None
        and source is not None
        and source.kind == "live"
        and any(isinstance(m, nn.Conv2d) for m in teacher.modules())
    ):
        teacher.to(memory_format=torch.channels_last)
    return train_x


# ---------------------------------------------------------------------------- the named steps
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
            raise _Stopped
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
        terms = t.hybrid(logits, y, t_logits, taps.features, t_feats)
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
        raise _Diverged(t.step)
    if shares is not None:
        row.update({SHARE_FIELDS[k]: v for k, v in shares.items()})
    t.history.append(row)
    t.store.save_history_tail(t.run_id, t.history)
    eta = t.elapsed() / t.step * (t.total_steps - t.step)
    progress = {
        "epoch": epoch,
        "epochs": t.config.epochs,
        "step": t.step,
        "total_steps": t.total_steps,
        "eta_s": eta,
    }
    t.store.update_run(t.run_id, progress=progress, heartbeat=time.time())
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
        raise _Stopped


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
    t.store.set_epochs(t.run_id, t.epoch_rows)
    checkpoints.save_state(t.store.home, t.run_id, training_state(t))
    t.store.write_manifest(t.run_id)  # what `store repair` rebuilds the index from
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
    the test split, which nothing in training looked at."""
    t.store.save_checkpoint(t.run_id, t.model.state_dict())
    test_pred = evaluate(t.model, t.test_x)  # [N_test]
    test_y = t.data.test_y
    correct = test_pred == test_y  # [N_test]
    teacher = t.teacher_test_pred
    metrics = {
        "val_acc": t.epoch_rows[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in t.epoch_rows),
        "test_acc": float(correct.float().mean()),
        "train_size": len(t.train_y),
        "teacher_acc": float((teacher == test_y).float().mean()) if teacher is not None else None,
        "agreement": float((test_pred == teacher).float().mean()) if teacher is not None else None,
        "final_losses": {k: t.history[-1][k] for k in (*COMPONENTS, "total")} if t.history else {},
        "per_class_acc": per_class_accuracy(test_pred, test_y, t.data.num_classes),
    }
    t.store.update_run(t.run_id, metrics=metrics)
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
        probe["per_class_acc"] = metrics["per_class_acc"]
        probe["agreement"] = metrics["agreement"]
        probe["test_correct"] = correct.to(torch.uint8).tolist()  # per-image tests (McNemar)
        t.store.save_probe(t.run_id, probe)
    return metrics


# ---------------------------------------------------------------------------- checkpoint state
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
    t.store.set_history(t.run_id, t.history)
    t.store.set_epochs(t.run_id, t.epoch_rows)


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
