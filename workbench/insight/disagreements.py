"""Where a student and its teacher disagree, image by image (issue 21 item 5), on the test
subset a run's probe records (``workbench.insight.probe_view``).

- **Groups** (``GROUPS``): the images the teacher gets right and the student wrong, the
  reverse, and those both get wrong. Each group is ordered by the confidence of the mistake
  that defines it (the softmax probability the wrong model gave its wrong answer, highest
  first): the student's for "teacher right, student wrong" and "both wrong", the teacher's for
  "student right, teacher wrong". Ties keep the subset's order.
- **Pages** (``gallery_page``): a group filtered to one class (by label) and cut into pages.
- **Tiles** (``tiles``): what one image of the gallery shows: its label, both predictions and
  both models' probabilities of the top classes.
- **A click** on the per-class accuracy chart (``clicked_class``) names the class to filter on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "GROUPS",
    "Page",
    "Tile",
    "clicked_class",
    "disagreement_groups",
    "gallery_page",
    "softmax",
    "tiles",
]

GROUPS: tuple[tuple[str, str], ...] = (
    ("teacher_only", "teacher right, student wrong"),
    ("student_only", "student right, teacher wrong"),
    ("both_wrong", "both wrong"),
)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[M, K]`` logits, in float64, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)  # [M, K]
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _by_confidence(positions: np.ndarray, probs: np.ndarray) -> list[int]:
    """``positions`` ordered by the top probability of ``probs`` there, highest first (stable)."""
    confidence = probs[positions].max(axis=1)  # [n]
    order = np.argsort(-confidence, kind="stable")
    return [int(p) for p in positions[order]]


def disagreement_groups(
    labels: np.ndarray, student_logits: np.ndarray, teacher_logits: np.ndarray
) -> dict[str, list[int]]:
    """``{group key: positions in the subset}`` for every key of ``GROUPS``; ``labels`` is
    ``[M]``, the logits ``[M, K]``. Each list holds the most confident mistakes first."""
    labels = np.asarray(labels)
    s_probs, t_probs = softmax(student_logits), softmax(teacher_logits)  # [M, K]
    if s_probs.shape != t_probs.shape or s_probs.shape[0] != labels.shape[0]:
        raise ValueError("labels [M] and both models' logits [M, K] must cover the same images")
    s_right = s_probs.argmax(axis=1) == labels  # [M]
    t_right = t_probs.argmax(axis=1) == labels  # [M]
    return {
        "teacher_only": _by_confidence(np.flatnonzero(t_right & ~s_right), s_probs),
        "student_only": _by_confidence(np.flatnonzero(s_right & ~t_right), t_probs),
        "both_wrong": _by_confidence(np.flatnonzero(~s_right & ~t_right), s_probs),
    }


@dataclass(frozen=True)
class Page:
    positions: list[int]  # the images of this page, in the group's order
    page: int  # 0-based, within 0..pages-1
    pages: int  # at least 1
    total: int  # images of the group after the class filter


def gallery_page(
    positions: Sequence[int],
    labels: np.ndarray,
    *,
    class_filter: int | None = None,
    page: int = 0,
    per_page: int = 12,
) -> Page:
    """Page ``page`` of ``positions``, keeping only images labelled ``class_filter`` when it is
    given. A page past the end is the last page (a filter that shrank the group never shows an
    empty page while images remain)."""
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    labels = np.asarray(labels)
    kept = [int(p) for p in positions if class_filter is None or int(labels[p]) == class_filter]
    pages = max(1, math.ceil(len(kept) / per_page))
    page = min(max(int(page), 0), pages - 1)
    return Page(kept[page * per_page : (page + 1) * per_page], page, pages, len(kept))


@dataclass(frozen=True)
class Tile:
    label: int
    student_prediction: int
    teacher_prediction: int
    classes: list[int]  # the classes whose bars are drawn: the top of either model, then the label
    student_probs: list[float]  # per entry of ``classes``
    teacher_probs: list[float]


def tiles(
    positions: Sequence[int],
    labels: np.ndarray,
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    class_names: Sequence[str],
    top: int = 3,
) -> list[Tile]:
    """One ``Tile`` per position: its label, both predictions, and both models' probabilities
    of the union of each model's ``top`` classes and the label (in the student's order)."""
    s_probs, t_probs = softmax(student_logits), softmax(teacher_logits)  # [M, K]
    top = max(1, min(int(top), len(class_names)))
    out = []
    for p in positions:
        s, t = s_probs[p], t_probs[p]  # [K]
        classes: list[int] = []
        for c in [*np.argsort(-s, kind="stable")[:top], *np.argsort(-t, kind="stable")[:top]]:
            if int(c) not in classes:
                classes.append(int(c))
        if int(labels[p]) not in classes:
            classes.append(int(labels[p]))
        out.append(
            Tile(
                label=int(labels[p]),
                student_prediction=int(s.argmax()),
                teacher_prediction=int(t.argmax()),
                classes=classes,
                student_probs=[float(s[c]) for c in classes],
                teacher_probs=[float(t[c]) for c in classes],
            )
        )
    return out


def clicked_class(selection: Mapping[str, Any] | None, class_names: Sequence[str]) -> int | None:
    """The class index of the first bar clicked in the per-class accuracy chart (whose bars
    carry their class index as ``customdata``), or None when nothing is selected."""
    points = (selection or {}).get("points") or []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if isinstance(data, (int, float)) and 0 <= int(data) < len(class_names):
            return int(data)
        if point.get("x") in class_names:  # a figure drawn without customdata
            return list(class_names).index(point["x"])
    return None
