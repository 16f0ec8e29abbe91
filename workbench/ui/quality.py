"""What Compare's calibration and class-similarity views draw, from the selected runs' probes
(``workbench.training.calibration`` wrote them): per run its reliability bins, ECE and gap
matrix, its teacher's bins once, and the runs probed before these views existed, which are
named so the page can say to run them again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.ui.insight import never_tested

__all__ = ["QualityViews", "quality_views"]


@dataclass
class QualityViews:
    reliability: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    ece: dict[str, float] = field(default_factory=dict)
    teacher: list[dict[str, float]] | None = None  # the teacher's bins, when all share one
    gaps: dict[str, list[list[float]]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    older: list[str] = field(default_factory=list)  # probed before the views: run it again
    blind: list[str] = field(default_factory=list)  # search trials: they never read test


def quality_views(
    records: Sequence[Mapping[str, Any]],
    probes: Mapping[str, Mapping[str, Any] | None],
    names: Mapping[str, str],
) -> QualityViews:
    """The views' data for the student runs among ``records`` (``probes``: run id -> probe,
    ``names``: run id -> shown name). A run without a probe (a teacher run, an unfinished run)
    is not listed; one whose probe predates these views is in ``older``, a search's trial (it
    never read test) in ``blind``."""
    views = QualityViews()
    teachers = set()
    for record in records:
        probe = probes.get(record["id"])
        if record.get("role", "student") != "student" or not probe:
            continue
        name = names.get(record["id"], record["id"])
        if "reliability" not in probe:
            (views.blind if never_tested(record) else views.older).append(name)
            continue
        views.reliability[name] = list(probe["reliability"])
        ece = (record.get("metrics") or {}).get("ece")
        if isinstance(ece, int | float):
            views.ece[name] = float(ece)
        if probe.get("teacher_reliability"):
            teachers.add(record.get("teacher_run"))
            views.teacher = views.teacher or list(probe["teacher_reliability"])
        if probe.get("logit_gap_matrix"):
            views.gaps[name] = probe["logit_gap_matrix"]
            views.class_names = views.class_names or [
                str(c) for c in probe.get("class_names") or []
            ]
    if len(teachers) > 1:  # one dashed "teacher" line would stand for several teachers
        views.teacher = None
    if views.gaps and len(views.class_names) != len(next(iter(views.gaps.values()))):
        views.class_names = [str(i) for i in range(len(next(iter(views.gaps.values()))))]
    return views
