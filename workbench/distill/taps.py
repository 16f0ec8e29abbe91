"""Intermediate features for distillation: forward-hook taps, layer pairing and adapters.

Features are read with forward hooks on modules addressed by their path in
``model.named_modules()`` (``"layer3.1"``), as torchdistill does (Matsubara, "torchdistill",
ICPR 2020 workshops); no model's ``forward`` is edited. Student and teacher layers are paired by
relative depth, and each pair gets an ``Adapter`` (a FitNets regressor) built from the dry-run
shapes of ``models.feature_layers`` before the optimizer exists, so that it trains.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn

from workbench.distill.feature import UNADAPTED_FEATURE_KINDS
from workbench.errors import IncompatibleModelsError
from workbench.models.registry import LayerInfo, candidate_paths

__all__ = ["Adapter", "FeatureTaps", "build_adapters", "check_pairs", "pair_layers"]


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


class FeatureTaps:
    """Forward hooks on ``model``'s modules at ``paths``, as a context manager.

    >>> with FeatureTaps(model, ["layer2.1", "layer4.1"]) as taps:
    ...     logits = model(x)
    ...     f2, f4 = taps.features  # outputs of layer2.1 and layer4.1 in this forward pass

    ``taps.features`` holds the outputs of the latest forward pass of ``model``, in the order of
    ``paths`` (a tuple output gives its first tensor). They are not detached: a loss on them
    backpropagates into the model. The hooks are removed on exit, also when the body raises.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]):
        self.model = model
        self.paths = tuple(paths)
        modules = dict(model.named_modules())
        for path in self.paths:
            if path not in modules:
                raise IncompatibleModelsError(_unknown_layer(model, path, list(modules)))
        self._modules = [modules[p] for p in self.paths]
        self._outputs: list[torch.Tensor | None] = [None] * len(self.paths)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> FeatureTaps:
        if not self.paths:
            return self
        # Forget the previous pass at the start of each one, so a stale output is never returned.
        self._handles.append(self.model.register_forward_pre_hook(self._clear))
        for i, module in enumerate(self._modules):
            self._handles.append(module.register_forward_hook(self._recorder(i)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._outputs = [None] * len(self.paths)

    def _clear(self, _module: nn.Module, _inputs: object) -> None:
        self._outputs = [None] * len(self.paths)

    def _recorder(self, i: int):
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            self._outputs[i] = _first_tensor(output)

        return record

    @property
    def features(self) -> list[torch.Tensor]:
        """The hooked outputs of the latest forward pass, in the order of ``paths``."""
        missing = [p for p, out in zip(self.paths, self._outputs, strict=True) if out is None]
        if missing:
            raise RuntimeError(
                f"no tensor output from layer(s) {', '.join(missing)} in the latest forward pass "
                "(read taps.features inside the with-block, after calling the model)"
            )
        return list(self._outputs)  # type: ignore[arg-type]


def _unknown_layer(model: nn.Module, path: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(path, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    examples = candidate_paths(model)
    few = ", ".join(examples[:8]) + (", ..." if len(examples) > 8 else "")
    return f"{type(model).__name__} has no layer {path!r}{hint}; candidate layers: {few}"


# --------------------------------------------------------------------------------- pairing
def pair_layers(
    student_layers: Sequence[LayerInfo],
    teacher_layers: Sequence[LayerInfo],
    num_pairs: int | None = None,
) -> tuple[tuple[str, str], ...]:
    """Pair student and teacher candidate layers by relative depth.

    With ``S`` student and ``T`` teacher candidates (in forward order), the ``i``-th candidate
    (0-based) of a model with ``L`` of them sits at relative depth ``(i + 1) / L``, so each model's
    last candidate is at depth 1. For ``n = num_pairs`` (default ``min(4, S, T)``):

    - student picks are evenly spaced: the ``k``-th (``k = 1..n``) is the first candidate at or
      past depth ``k / n``, index ``ceil(k * S / n) - 1``; the last candidate is always picked;
    - each is paired with the teacher candidate at the nearest relative depth, index
      ``round((s + 1) * T / S) - 1`` (a tie goes to the deeper one); the deepest student pick
      thus meets the teacher's deepest candidate. When the teacher has fewer candidates than the
      student, two student layers may share a teacher layer.

    Example: 3 student vs 8 teacher candidates, ``n = 3``: student 0, 1, 2 (depths 1/3, 2/3, 1)
    pair with teacher 2, 4, 7 (depths 3/8, 5/8, 1).

    Pre-activation taps (``LayerInfo.preact``) are left out: they may be paired by hand only,
    so the suggested pairs are those of the block-level candidates. The pairs run shallow to deep.
    """
    student_layers = [li for li in student_layers if not li.preact]
    teacher_layers = [li for li in teacher_layers if not li.preact]
    s_count, t_count = len(student_layers), len(teacher_layers)
    if s_count == 0 or t_count == 0:
        side = "student" if s_count == 0 else "teacher"
        raise IncompatibleModelsError(
            f"the {side} has no candidate feature layers; set the feature and relation weights to 0"
        )
    limit = min(s_count, t_count)
    n = min(4, limit) if num_pairs is None else num_pairs
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise IncompatibleModelsError(
            f"num_pairs must be a whole number from 1 to {limit} (the student has {s_count} "
            f"candidate layers, the teacher {t_count}), got {num_pairs!r}"
        )
    pairs = []
    for k in range(1, n + 1):
        s = math.ceil(k * s_count / n) - 1
        # Nearest teacher depth: t + 1 = floor((s + 1) * T / S + 1/2), in integers.
        t = max(1, (2 * (s + 1) * t_count + s_count) // (2 * s_count)) - 1
        pairs.append((student_layers[s].path, teacher_layers[t].path))
    return tuple(pairs)


def check_pairs(
    pairs: Sequence[tuple[str, str]],
    student_layers: Sequence[LayerInfo],
    teacher_layers: Sequence[LayerInfo],
    feature_kind: str,
) -> None:
    """Raise ``IncompatibleModelsError`` (saying what to change) unless every pair can be used.

    Each pair must be ``(student_path, teacher_path)`` with both paths among the candidate layers
    of their model (pre-activation taps included, where the lists have them); attention transfer
    (``at``, ``at_paper``), NST, ReviewKD and OFD need 4-D maps on both sides (their channels and
    spatial sizes may differ: the loss compares the student's own attention map, resized to the
    teacher's, without an adapter; ReviewKD and OFD bring their own connectors). OFD needs a
    pre-activation teacher layer (``LayerInfo.preact``): its margin is the statistics of the
    BatchNorm before that ReLU.
    """
    if not pairs:
        raise IncompatibleModelsError(
            "no layer pairs: give at least one (student_layer, teacher_layer) pair, or leave "
            "layer_pairs empty to pair the layers automatically"
        )
    sides = (
        ("student", {li.path: li for li in student_layers}),
        ("teacher", {li.path: li for li in teacher_layers}),
    )
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise IncompatibleModelsError(
                f"each layer pair must be (student_layer, teacher_layer), got {pair!r}"
            )
        for path, (side, layers) in zip(pair, sides, strict=True):
            if path not in layers:
                valid = ", ".join(layers) or "(none)"
                raise IncompatibleModelsError(
                    f"{path!r} is not a candidate layer of the {side}; choose one of: {valid}"
                )
            shape = layers[path].shape
            if feature_kind in UNADAPTED_FEATURE_KINDS and len(shape) != 3:
                method = "attention transfer" if feature_kind.startswith("at") else feature_kind
                raise IncompatibleModelsError(
                    f"{method} needs 4-D feature maps [B, C, H, W], but the {side} layer "
                    f"{path!r} gives a vector of shape {list(shape)}: choose feature kind cosine or "
                    "mse, or pick convolutional layers on both sides"
                )
            if feature_kind == "ofd" and side == "teacher" and not layers[path].preact:
                raise IncompatibleModelsError(_ofd_needs_preact(path, list(layers.values())))


def _ofd_needs_preact(path: str, teacher_layers: list[LayerInfo]) -> str:
    pre = [li.path for li in teacher_layers if li.preact]
    if not pre:
        return (
            f"ofd needs a pre-activation teacher layer, and this teacher has none ({path!r} is "
            "after its ReLU): pick a CIFAR ResNet, WRN, VGG or ShuffleNet teacher, or another "
            "feature kind"
        )
    return (
        f"ofd needs a pre-activation teacher layer such as {pre[-1]}, got {path!r} (after its "
        "ReLU); pick one on the Models page"
    )


# -------------------------------------------------------------------------------- adapters
class Adapter(nn.Module):
    """Map a student feature ``[B, *student_shape]`` to the teacher's ``[B, *teacher_shape]``.

    The learned regressor of FitNets (Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets:
    Hints for Thin Deep Nets", ICLR 2015), which maps the student's guided layer onto the
    teacher's hint layer, generalised to the four shape cases:

    - map ``(C, H, W)`` -> map ``(C', H', W')``: a 1x1 conv ``C -> C'``, then a spatial resize to
      ``(H', W')``: adaptive average pooling when the student map is larger, bilinear
      interpolation when it is smaller. Both resizes are linear and preserve constants, so they
      commute with the 1x1 conv; the conv is applied on the smaller map, which is cheaper.
    - vector ``(D,)`` -> vector ``(D',)``: ``Linear(D, D')``.
    - map ``(C, H, W)`` -> vector ``(D',)``: global average pooling, then ``Linear(C, D')``.
    - vector ``(D,)`` -> map ``(C', H', W')``: ``Linear(D, C' H' W')``, reshaped.

    The map is learned even when the shapes already agree, as in FitNets.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]):
        super().__init__()
        self.student_shape = tuple(int(d) for d in student_shape)
        self.teacher_shape = tuple(int(d) for d in teacher_shape)
        s_rank, t_rank = len(self.student_shape), len(self.teacher_shape)
        if s_rank not in (1, 3) or t_rank not in (1, 3):
            raise IncompatibleModelsError(
                f"an adapter maps vectors (D,) or maps (C, H, W); got student shape "
                f"{list(self.student_shape)} and teacher shape {list(self.teacher_shape)}"
            )
        s_dim, t_dim = self.student_shape[0], self.teacher_shape[0]
        if s_rank == 3 and t_rank == 3:
            self.proj: nn.Module = nn.Conv2d(s_dim, t_dim, kernel_size=1)
        elif t_rank == 3:
            self.proj = nn.Linear(s_dim, math.prod(self.teacher_shape))
        else:
            self.proj = nn.Linear(s_dim, t_dim)  # vector -> vector, or pooled map -> vector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_rank, t_rank = len(self.student_shape), len(self.teacher_shape)
        if s_rank == 3 and t_rank == 3:  # x: (B, C, H, W)
            size = self.teacher_shape[1:]
            h, w = x.shape[-2:]
            if (h, w) == size:
                return self.proj(x)  # (B, C', H', W')
            if h >= size[0] and w >= size[1]:
                return self.proj(
                    F.adaptive_avg_pool2d(x, size)
                )  # (B, C, H', W') -> (B, C', H', W')
            y = self.proj(x)  # (B, C', H, W)
            return F.interpolate(
                y, size=size, mode="bilinear", align_corners=False
            )  # (B, C', H', W')
        if s_rank == 3:  # map -> vector, x: (B, C, H, W)
            return self.proj(x.mean(dim=(2, 3)))  # (B, C) -> (B, D')
        if t_rank == 3:  # vector -> map, x: (B, D)
            return self.proj(x).view(
                x.shape[0], *self.teacher_shape
            )  # (B, C'H'W') -> (B, C', H', W')
        return self.proj(x)  # (B, D) -> (B, D')

    def extra_repr(self) -> str:
        return f"{list(self.student_shape)} -> {list(self.teacher_shape)}"


def build_adapters(
    pairs: Sequence[tuple[str, str]],
    student_layers: Sequence[LayerInfo],
    teacher_layers: Sequence[LayerInfo],
) -> nn.ModuleList:
    """One ``Adapter`` per pair, sized from the dry-run shapes of ``models.feature_layers``.

    Call this before building the optimizer and hand it the adapters' parameters
    (``setup.build_optimizer`` puts the ``HybridLoss``'s non-weighting parameters, the adapters,
    in the model's parameter group), so the adapters train with the student. A projection created lazily inside a loss's ``forward`` on the first batch, as in
    the course sketch of ``FeatureDistillationLoss``, is born after the optimizer and is never
    updated: it stays a fixed random map, and the feature loss then trains the student so that a
    random projection of its features matches the teacher.
    """
    check_pairs(pairs, student_layers, teacher_layers, feature_kind="")
    s_shapes = {li.path: li.shape for li in student_layers}
    t_shapes = {li.path: li.shape for li in teacher_layers}
    return nn.ModuleList(Adapter(s_shapes[s], t_shapes[t]) for s, t in pairs)
