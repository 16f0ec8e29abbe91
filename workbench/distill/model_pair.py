"""A teacher and a student built for one dataset, side by side: their sizes, candidate layers
and the layer pairs a run distils through.

``inspect_pair`` is the one place that loads a run's data and builds its two models before the
run exists: the Models page lists what it returns, and the submit gate
(``workbench.runs.submit``) passes a run's config to have its layer pairs checked as well, so a
dataset that is not on disk, a model that does not build or pairs that cannot work are refused
with a message before anything is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.data.datasets import load_dataset
from workbench.distill.taps import check_pairs, pair_layers
from workbench.errors import IncompatibleModelsError
from workbench.models.registry import LayerInfo, build_model, count_params, feature_layers

if TYPE_CHECKING:
    from collections.abc import Sequence

    from workbench.config.run_config import RunConfig

__all__ = ["ModelPair", "configured_pairs", "inspect_pair"]

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ModelPair:
    """A teacher and a student built for one dataset, side by side."""

    teacher: str
    student: str
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    train_size: int  # samples in the training split
    teacher_params: int
    student_params: int
    teacher_layers: tuple[Any, ...]  # LayerInfo
    student_layers: tuple[Any, ...]
    suggested_pairs: Pairs
    pairing_error: str = ""  # why no pairs could be suggested
    pairs: Pairs = ()  # the pairs the checked config distils through (configured or suggested)

    @property
    def size_ratio(self) -> float:
        """Teacher parameters / student parameters."""
        return self.teacher_params / max(1, self.student_params)


def configured_pairs(
    config: RunConfig, s_layers: Sequence[LayerInfo], t_layers: Sequence[LayerInfo]
) -> Pairs:
    """The configured layer pairs (or the automatic ones), checked when a term uses them."""
    pairs = config.layer_pairs or pair_layers(s_layers, t_layers)
    if config.weights.feature > 0 or config.weights.relation > 0:
        kind = config.feature_kind if config.weights.feature > 0 else "cosine"
        check_pairs(pairs, s_layers, t_layers, kind)
    return pairs


def inspect_pair(
    teacher: str,
    student: str,
    dataset: str,
    data_path: str = "",
    *,
    config: RunConfig | None = None,
) -> ModelPair:
    """Build both models for ``dataset`` (loaded once) and list their sizes, candidate layers
    and suggested pairs; with a student ``config``, also the pairs it would distil through,
    checked (``IncompatibleModelsError`` says what to change).

    Raises the library's ``WorkbenchError`` (``DatasetUnavailableError``, ``UnknownNameError``)
    when the dataset or a model cannot be had.
    """
    data = load_dataset(dataset, data_path=data_path)
    shape, k = tuple(data.input_shape), int(data.num_classes)
    t_model, s_model = build_model(teacher, shape, k), build_model(student, shape, k)
    # With the pre-activation taps (LayerInfo.preact): pairable by hand, never suggested.
    t_layers = feature_layers(t_model, shape, preact=True)
    s_layers = feature_layers(s_model, shape, preact=True)
    suggested: Pairs = ()
    error = ""
    try:
        suggested = pair_layers(s_layers, t_layers)
    except IncompatibleModelsError as exc:
        error = str(exc)
    pairs: Pairs = ()
    if config is not None and config.role == "student":
        pairs = configured_pairs(config, s_layers, t_layers)
    return ModelPair(
        teacher=teacher,
        student=student,
        dataset=dataset,
        input_shape=shape,
        num_classes=k,
        train_size=len(data.train_y),
        teacher_params=count_params(t_model),
        student_params=count_params(s_model),
        teacher_layers=tuple(t_layers),
        student_layers=tuple(s_layers),
        suggested_pairs=tuple(suggested),
        pairing_error=error,
        pairs=tuple(pairs),
    )
