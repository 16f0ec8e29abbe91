"""What Compare's embedding and disagreement views draw, from the selected runs' probes
(``workbench.insight.probe_view`` wrote their test views): pure functions, no Streamlit.

- ``embedding_inputs`` gathers the teacher's and each run's embedding components on the common
  test subset, with the k-NN accuracy and silhouette of their full embeddings, and names the
  runs that cannot be drawn (probed before the views, or on other images).
- ``embedding_maps_data`` turns them into 2-D maps: PCA (the stored components' first two
  columns, instant) or t-SNE; every map aligned onto the first (the teacher's) by orthogonal
  Procrustes so that shared axes compare like with like, with each map's own scores.
- ``gallery_inputs`` gives one run's disagreements with its teacher on the same images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.insight.embeddings import align, map_scores, tsne_map
from workbench.insight.probe_view import unpack_view

__all__ = [
    "MAP_METHODS",
    "EmbeddingInputs",
    "GalleryInputs",
    "embedding_inputs",
    "embedding_maps_data",
    "gallery_inputs",
    "per_class_on_subset",
    "teacher_label",
    "BLIND_NOTE",
    "never_tested",
]

MAP_METHODS = ("PCA", "t-SNE")
Record = Mapping[str, Any]


@dataclass
class EmbeddingInputs:
    features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [M, c]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [M]
    class_names: list[str] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # of the full embeddings
    older: list[str] = field(default_factory=list)  # probed before the views: run it again
    blind: list[str] = field(default_factory=list)  # search trials: they never read test
    other_images: list[str] = field(default_factory=list)  # another dataset's test subset


# Why a search's trial shows no test view (``workbench.search``), for the pages' captions.
BLIND_NOTE = (
    "they are a search's trials, chosen on validation, and never read the test split (the "
    "search's retrained runs did)"
)


def never_tested(record: Record) -> bool:
    """Whether the run never read the test split (``evaluate_test`` off: a search's trial)."""
    return (record.get("config") or {}).get("evaluate_test") is False


def teacher_label(record: Record, names: Mapping[str, str], several: bool) -> str:
    """How a run's teacher is shown: "teacher", or "teacher <name>" beside other teachers."""
    teacher = record.get("teacher_run")
    return f"teacher {names.get(teacher, teacher)}" if several and teacher else "teacher"


def embedding_inputs(
    records: Sequence[Record],
    probes: Mapping[str, Mapping[str, Any] | None],
    names: Mapping[str, str],
) -> EmbeddingInputs:
    """The student runs among ``records`` with a test view, each teacher once (first), on the
    test subset of the first of them (runs of another dataset are listed in ``other_images``)."""
    out = EmbeddingInputs()
    views = []
    for record in records:
        probe = probes.get(record["id"])
        if record.get("role", "student") != "student" or not probe:
            continue
        view = unpack_view(probe)
        name = names.get(record["id"], record["id"])
        if view is None:
            (out.blind if never_tested(record) else out.older).append(name)
        else:
            views.append((record, name, view, probe))
    if not views:
        return out
    index = views[0][2]["index"]
    out.labels = views[0][2]["labels"]
    out.class_names = [str(c) for c in views[0][3].get("class_names") or []]
    several = len({r.get("teacher_run") for r, *_ in views if r.get("teacher_run")}) > 1
    teachers: dict[str, dict[str, Any]] = {}
    for record, name, view, _probe in views:
        if not np.array_equal(view["index"], index):
            out.other_images.append(name)
            continue
        if view["teacher"] is not None:
            teachers.setdefault(teacher_label(record, names, several), view["teacher"])
        out.features[name] = view["student"]["embedding"]
        out.scores[name] = _scores(view["student"])
    runs = out.features
    out.features = {label: side["embedding"] for label, side in teachers.items()}  # first
    out.features.update(runs)
    out.scores.update({label: _scores(side) for label, side in teachers.items()})
    if len(out.class_names) <= int(out.labels.max(initial=-1)):
        out.class_names = [str(c) for c in range(int(out.labels.max(initial=-1)) + 1)]
    return out


def _scores(side: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(side[k]) for k in ("knn_acc", "silhouette") if side.get(k) is not None}


def embedding_maps_data(
    inputs: EmbeddingInputs, method: str = "PCA", *, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """``(maps, map scores)``: per name its [M, 2] map, aligned onto the first map, and the
    k-NN accuracy and silhouette of the 2-D map itself."""
    if method not in MAP_METHODS:
        raise ValueError(f"unknown map method {method!r}; pick one of {MAP_METHODS}")
    maps: dict[str, np.ndarray] = {}
    reference = None
    for name, features in inputs.features.items():
        if method == "PCA":
            points = np.zeros((len(features), 2), dtype=np.float64)
            points[:, : min(2, features.shape[1])] = features[:, :2]  # [M, 2]
        else:
            points = tsne_map(features, seed=seed)  # [M, 2]
        points = np.asarray(points, dtype=np.float64)
        maps[name] = points if reference is None else align(points, reference)
        reference = maps[name] if reference is None else reference
    scores = {name: map_scores(points, inputs.labels) for name, points in maps.items()}
    return maps, scores


@dataclass
class GalleryInputs:
    index: np.ndarray  # [M] positions in the test split
    labels: np.ndarray  # [M]
    student_logits: np.ndarray  # [M, K]
    teacher_logits: np.ndarray  # [M, K]
    class_names: list[str]


def gallery_inputs(probe: Mapping[str, Any] | None) -> GalleryInputs | None:
    """One run's test view as the gallery needs it; None without a view or without a teacher
    (there is nothing to disagree with)."""
    view = unpack_view(probe)
    if view is None or view["teacher"] is None:
        return None
    k = view["student"]["logits"].shape[1]
    names = [str(c) for c in (probe or {}).get("class_names") or []]
    return GalleryInputs(
        index=view["index"],
        labels=view["labels"],
        student_logits=view["student"]["logits"],
        teacher_logits=view["teacher"]["logits"],
        class_names=names if len(names) == k else [str(c) for c in range(k)],
    )


def per_class_on_subset(data: GalleryInputs, run_name: str) -> dict[str, list[float]]:
    """``{"teacher": [...], run_name: [...]}``: each model's accuracy per class on the test
    subset (NaN for a class without images), for the gallery's clickable bars."""
    out = {}
    k = len(data.class_names)
    for name, logits in (("teacher", data.teacher_logits), (run_name, data.student_logits)):
        correct = logits.argmax(axis=1) == data.labels  # [M]
        out[name] = [
            float(correct[data.labels == c].mean()) if (data.labels == c).any() else float("nan")
            for c in range(k)
        ]
    return out
