"""What a run trains with, built before its first step: the ``Training`` state, the device,
the model and the hybrid loss under the run's seed, the optimizer, and where the loss gets the
teacher's outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.config.recipes import dkd_warmup_epochs
from workbench.config.run_config import RunConfig
from workbench.data.datasets import DataBundle, train_subset
from workbench.distill.feature import feature_channels, uses_adapter
from workbench.distill.hybrid import HybridLoss
from workbench.distill.model_pair import configured_pairs
from workbench.distill.stateful import MethodInputs
from workbench.distill.taps import build_adapters
from workbench.errors import ConfigError
from workbench.models.registry import build_model, feature_layers
from workbench.storage.fencing import FencedRun
from workbench.storage.store import Store
from workbench.training import teacher_pool as warm
from workbench.training.events import OnStep, StopFlag
from workbench.training.rng import seeded_construction, use_run_generator
from workbench.training.teacher_cache import (
    CachedTeacher,
    LiveTeacher,
    teacher_predictions,
    teacher_source,
)

__all__ = [
    "Training",
    "build_model_and_loss",
    "build_optimizer",
    "channels_last",
    "mixed_precision",
    "resolve_device",
    "teacher_outputs",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name} asked for, but CUDA is not available here; choose auto or cpu"
        )
    return torch.device(name)


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
    test_x: torch.Tensor | None  # [N_test, C, H, W] on the device
    batch: int
    steps_per_epoch: int
    amp_dtype: torch.dtype
    use_amp: bool
    fenced: FencedRun  # every write of the run, checked against its claim
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


def mixed_precision(device: torch.device) -> tuple[bool, torch.dtype, torch.amp.GradScaler]:
    """``(use_amp, amp_dtype, scaler)``: autocast on CUDA only, bfloat16 where the GPU has it
    (no loss scaling needed), else float16 with a gradient scaler."""
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return use_amp, amp_dtype, scaler


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
        # Pre-activation taps (OFD's) can be paired by hand; pair_layers never suggests them.
        s_layers = feature_layers(model, data.input_shape, preact=True)
        # The teacher is frozen and often lent warm (``workbench.training.teacher_pool``): its layers once.
        t_layers = []
        if teacher is not None:
            t_layers = warm.layers_of(teacher, data.input_shape, _with_preact)
        pairs = configured_pairs(config, s_layers, t_layers) if teacher is not None else ()
        adapted = config.weights.feature > 0 and uses_adapter(config.feature_kind)
        adapters = build_adapters(pairs, s_layers, t_layers) if adapted else None
        inputs = method_inputs(pairs, s_layers, t_layers, teacher, data, config)
        hybrid = build_hybrid(config, pairs, t_layers, adapters, inputs)
    model_generator = torch.Generator(device=device).manual_seed(config.seed)
    use_run_generator(model, model_generator)
    return (
        model.to(device),
        hybrid.to(device),
        torch.Generator().manual_seed(config.seed),
        model_generator,
        pairs,
        _probed(s_layers, {s for s, _ in pairs}),
        _probed(t_layers, {t for _, t in pairs}),
    )


def _with_preact(model: nn.Module, input_shape: tuple) -> list:
    return feature_layers(model, input_shape, preact=True)


def _probed(layers: list, paired: set[str]) -> list:
    """The layers the probe compares: the block-level candidates, and a pre-activation tap only
    where a pair uses it."""
    return [li for li in layers if not li.preact or li.path in paired]


def build_hybrid(
    config: RunConfig,
    pairs: tuple[tuple[str, str], ...],
    teacher_layers: list[Any],
    adapters: nn.ModuleList | None,
    inputs: MethodInputs | None = None,
) -> HybridLoss:
    """The run's hybrid loss: its kinds, the response method's settings (DKD's warm-up scaled
    to the run, ``workbench.config.recipes.dkd_warmup_epochs``) and, for VID, the channel count
    of each paired teacher layer."""
    params = {
        "dkd": {"alpha": config.dkd_alpha, "beta": config.dkd_beta},
        "dist": {"beta": config.dist_beta, "gamma": config.dist_gamma},
    }.get(config.response_kind, {})
    warmup = (
        dkd_warmup_epochs(config.dkd_warmup, config.epochs) if config.response_kind == "dkd" else 0
    )
    shapes = {layer.path: layer.shape for layer in teacher_layers}
    channels = [feature_channels(shapes[t]) for _, t in pairs]  # pairs are checked already
    return HybridLoss(
        config.weights,
        temperature=config.temperature,
        feature_kind=config.feature_kind,
        relation_kind=config.relation_kind,
        adapters=adapters,
        weighting=config.weighting,
        response_kind=config.response_kind,
        response_params=params,
        teacher_channels=channels if config.feature_kind == "vid" else None,
        warmup_epochs=warmup,
        inputs=inputs,
    )


def method_inputs(
    pairs: tuple[tuple[str, str], ...],
    student_layers: list[Any],
    teacher_layers: list[Any],
    teacher: nn.Module | None,
    data: DataBundle,
    config: RunConfig,
) -> MethodInputs:
    """What the stateful methods (ReviewKD, OFD, CRD) are built from: the paired layers' shapes
    and paths, the training set's size (the run's fraction of it) and the frozen teacher."""
    s_shapes = {layer.path: tuple(layer.shape) for layer in student_layers}
    t_shapes = {layer.path: tuple(layer.shape) for layer in teacher_layers}
    return MethodInputs(
        student_shapes=tuple(s_shapes[s] for s, _ in pairs),
        teacher_shapes=tuple(t_shapes[t] for _, t in pairs),
        student_paths=tuple(s for s, _ in pairs),
        teacher_paths=tuple(t for _, t in pairs),
        num_samples=len(train_subset(data.train_y, config.train_fraction)),
        teacher=teacher,
    )


def build_optimizer(
    model: nn.Module,
    hybrid: HybridLoss,
    *,
    lr: float,
    device: torch.device,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    weight_decay: float = 0.01,
) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum (the papers' recipe) over the model, the loss's
    adapters and other modules (so they train, unlike the course sketch's lazily created
    projection) and the weighting scheme's parameters. Weight decay would pull learned loss
    weights (log-variances) towards 1, so that group gets none."""
    groups = [
        {"params": [*model.parameters(), *_loss_parameters(hybrid, weighting=False)]},
        {"params": _loss_parameters(hybrid, weighting=True), "weight_decay": 0.0},
    ]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")


def _loss_parameters(hybrid: HybridLoss, *, weighting: bool) -> list[nn.Parameter]:
    """The loss's own parameters: the weighting scheme's, or the rest (the adapters)."""
    scheme = {id(p) for p in hybrid.scheme.parameters()}
    return [p for p in hybrid.parameters() if (id(p) in scheme) == weighting]


def teacher_outputs(
    config: RunConfig,
    store: Store,
    run_id: str,
    hybrid: HybridLoss,
    pairs: tuple[tuple[str, str], ...],
    teacher: nn.Module | None,
    teacher_id: str | None,
    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    device: torch.device,
) -> tuple[LiveTeacher | CachedTeacher | None, torch.Tensor | None, torch.Tensor | None]:
    """Where the loss gets the teacher's outputs (live or cached; None when no term needs
    them), and the teacher's predicted classes on validation and test (once per teacher and
    split, unless the cache is off; None without a teacher, and for test when ``test_x`` is None:
    a run that never reads the test split)."""
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
        teacher_predictions(config, teacher, teacher_id, test_x, store)
        if test_x is not None
        else None,
    )


def channels_last(
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
