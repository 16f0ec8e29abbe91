"""Class-activation maps of stored runs on test images (issue 21 item 6): the teacher's and
each selected run's, side by side, on a layer of each, computed on demand
(``workbench.insight.cam``).

A run's model is rebuilt from its config and loaded from its checkpoint (``weights_only``),
and only for a user who may see the run (``workbench.runs.permitted.get_run``): the rule is
kept here, where the weights are read, not only by the page that offers the button. The
teacher of a run is shown when that user may see the teacher run too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.data.datasets import DataBundle
from workbench.errors import CheckpointError, ConfigError, WorkbenchError
from workbench.insight.cam import cam_layers, class_activation_maps
from workbench.insight.pictures import dataset_of, to_uint8
from workbench.models.registry import build_model
from workbench.runs import permitted
from workbench.storage.store import Store

__all__ = ["CamPanel", "CamResult", "cam_results", "model_of_run", "run_layers"]

MOST_IMAGES = 8


@dataclass
class CamPanel:
    name: str
    layer: str
    maps: np.ndarray  # [N, H, W] in [0, 1]
    predictions: list[int]
    targets: list[int]


@dataclass
class CamResult:
    images: np.ndarray  # [N, H, W, 3] uint8
    labels: list[int]
    panels: list[CamPanel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # models that have no map, and why


def _visible(store: Store, user: Any, run_id: str) -> dict[str, Any]:
    """The run's record when ``user`` may see it; ConfigError ("no run ...") otherwise."""
    try:
        return permitted.get_run(store, run_id, user)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None


def model_of_run(store: Store, user: Any, run_id: str, data: DataBundle) -> nn.Module:
    """The trained model of ``run_id`` (its architecture and final weights), frozen, in eval
    mode, on the CPU. ConfigError when the user may not see it or its checkpoint is missing."""
    record = _visible(store, user, run_id)
    config = record.get("config") or {}
    arch = config.get("teacher") if record.get("role") == "teacher" else config.get("student")
    if record.get("status") != "completed":
        raise ConfigError(f"run {run_id} has not completed: it has no final weights to explain")
    state = store.load_weights(run_id)
    model = build_model(str(arch), data.input_shape, data.num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # the checkpoint is of another shape than its config says
        raise CheckpointError(
            f"the checkpoint of run {run_id} does not fit its {arch} "
            f"({str(exc).splitlines()[0][:120]}); train the run again"
        ) from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_layers(store: Store, user: Any, run_id: str) -> list[str]:
    """The layers of the run's model that have a spatial feature map (shallow to deep)."""
    record = _visible(store, user, run_id)
    data = dataset_of(record.get("config") or {})
    config = record.get("config") or {}
    arch = config.get("teacher") if record.get("role") == "teacher" else config.get("student")
    return cam_layers(build_model(str(arch), data.input_shape, data.num_classes), data.input_shape)


def cam_results(
    store: Store,
    user: Any,
    run_ids: Sequence[str],
    positions: Sequence[int],
    *,
    layers: Mapping[str, str] | None = None,
    target: str = "prediction",
) -> CamResult:
    """The maps of the first run's teacher (when the user may see it) and of each run in
    ``run_ids`` on the test images at ``positions`` (at most ``MOST_IMAGES``). ``layers`` maps a
    run id (or "teacher") to its layer (default: its deepest spatial one); ``target`` is
    "prediction" (each model's own predicted class, Grad-CAM's usual choice) or "label"."""
    if target not in ("prediction", "label"):
        raise ConfigError(f"target must be 'prediction' or 'label', got {target!r}")
    if not run_ids or not positions:
        raise ConfigError("pick at least one run and one image to compute class-activation maps")
    positions = list(positions)[:MOST_IMAGES]
    first = _visible(store, user, run_ids[0])
    data = dataset_of(first.get("config") or {})
    if max(positions) >= len(data.test_y) or min(positions) < 0:
        raise ConfigError("an image is outside the test split: the dataset changed; run again")
    x = data.test_x[positions]  # [N, C, H, W]
    labels = data.test_y[positions]  # [N]
    result = CamResult(images=to_uint8(x, data.mean, data.std), labels=labels.tolist())
    models = _models(store, user, first, run_ids, data, result.notes)
    for name, key, model in models:
        try:
            result.panels.append(_panel(name, model, (layers or {}).get(key), x, labels, target))
        except ConfigError as exc:
            result.notes.append(f"{name}: {exc}")
    return result


def _models(
    store: Store,
    user: Any,
    first: Mapping[str, Any],
    run_ids: Sequence[str],
    data: DataBundle,
    notes: list[str],
) -> list[tuple[str, str, nn.Module]]:
    """``(shown name, layers key, model)`` of the teacher, then of each run."""
    out = []
    teacher = first.get("teacher_run")
    if teacher:
        try:
            out.append(("teacher", "teacher", model_of_run(store, user, teacher, data)))
        except WorkbenchError as exc:
            notes.append(f"teacher: not shown ({exc})")
    for run_id in run_ids:
        record = _visible(store, user, run_id)
        name = record.get("name") or run_id
        if (record.get("config") or {}).get("dataset") != (first.get("config") or {}).get(
            "dataset"
        ):
            notes.append(f"{name}: trained on another dataset, left out")
            continue
        try:
            out.append((name, run_id, model_of_run(store, user, run_id, data)))
        except WorkbenchError as exc:
            notes.append(f"{name}: {exc}")
    return out


def _panel(
    name: str,
    model: nn.Module,
    layer: str | None,
    x: torch.Tensor,
    labels: torch.Tensor,
    target: str,
) -> CamPanel:
    choices = cam_layers(model, tuple(x.shape[1:]))
    if not choices:
        raise ConfigError("an MLP has no convolutional feature map: class-activation maps need one")
    layer = layer if layer in choices else choices[-1]
    with torch.no_grad():
        predictions = model(x).argmax(dim=1)  # [N]
    targets = predictions if target == "prediction" else labels
    maps = class_activation_maps(model, layer, x, targets)  # [N, H, W]
    return CamPanel(name, layer, maps.numpy(), predictions.tolist(), targets.tolist())
