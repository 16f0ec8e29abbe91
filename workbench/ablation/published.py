"""Published CIFAR-100 top-1 accuracies, shown beside a user's runs of the same recipe.

Sources read (the stored copies of their READMEs; every number below is copied from them, in
percent):

- **RepDistiller README** (HobbitLong/RepDistiller, ``README.md``), "Benchmark Results on
  CIFAR-100", table 1, "Teacher and student are of the same architectural type": the CRD paper's
  Table 1 (Tian, Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020). The
  teacher's and student's own accuracies, and KD, FitNet, AT, SP, CC, VID, RKD, PKT, AB, FT,
  FSP, NST and CRD for the seven pairs. FSP for wrn-40-2 -> wrn-40-1 is printed ``0.00`` there
  (not a result) and left out. That stored README has no CRD+KD row, so there is none here.
- **mdistiller README** (megvii-research/mdistiller, ``README.md``), "Decoupled Knowledge
  Distillation", "Main Benchmark Results", "On CIFAR-100", first table: DKD (Zhao et al., CVPR
  2022) for six of the pairs (not resnet110 -> resnet20). Its KD row repeats RepDistiller's and
  is not repeated here. It gives no teacher or student accuracies.
- **DIST README** (hunto/DIST_KD, ``README.md``), "Reproducing our results", "CIFAR-100": DIST
  (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022) for the three
  same-architecture pairs it lists, with the ``±`` it prints and the teacher's and student's
  accuracies in brackets.

Not found: no stored source gives a ReviewKD CIFAR-100 number (mdistiller's README lists ReviewKD
as supported but gives no result; dvlab-research/ReviewKD's ``README.md`` and
``CIFAR-100/README.md`` give none), so there are no ReviewKD rows.

Model names, literature -> workbench: wrn-40-2 / WRN-40-2 -> ``wrn_40_2`` (likewise wrn_40_1,
wrn_16_2), ResNet56 -> ``resnet56`` (resnet110, resnet32, resnet20), resnet32x4 / ResNet32x4 ->
``resnet32x4`` (resnet8x4), vgg13 / VGG13 -> ``vgg13`` (vgg8).

When a run matches a row (``published_for``):

- the **recipe** is the papers' protocol, ``RECIPES["crd-cifar100"]`` as ``apply_presets``
  applies it (so lr 0.01 for MobileNet and ShuffleNet students), on ``cifar100``, the whole
  training set (``train_fraction`` 1), with ``augment`` on: RepDistiller's
  ``dataset/cifar100.py`` trains with ``RandomCrop(32, padding=4)`` and a horizontal flip, which
  is the workbench's augmentation. ``teacher_epochs`` is not compared (the teacher may be a
  stored run); the table shows your teacher's accuracy beside the published one instead;
- the **method** (``method_of``) is the label term plus exactly one distillation term, at fixed
  weights. That is the sources' recipe: RepDistiller's ``scripts/run_cifar_distill.sh`` trains
  every method but KD with ``-a 0`` (no KD term) and the cross-entropy weight at its default 1,
  so a FitNet row is FitNet + CE, not FitNet + KD; KD is ``-r 0.1 -a 0.9``; DKD and DIST add
  their loss to CE. The weights' values and the temperature are not compared: the workbench's
  terms are not scaled like the reference code's (FitNet's ``-b 100``, AT's ``-b 1000``).

CRD, AB, FT and FSP have no counterpart in the workbench: their rows are there for reference,
and no config maps to them. RepDistiller's ``train_student.py`` reports the best test accuracy
over its epochs; a workbench run's ``test_acc`` is its final model's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scipy import stats

from workbench.ablation.statistics import variant_summary
from workbench.config.recipes import apply_presets
from workbench.config.run_config import IDENTITY_ADDED_LATER, fingerprint_of, summary_of

__all__ = [
    "CAPTION",
    "PROTOCOL",
    "PUBLISHED",
    "Published",
    "follows_protocol",
    "method_of",
    "published_for",
    "published_rows",
]

PROTOCOL = "crd-cifar100"  # the recipe of every table below
CAPTION = (
    "Your finished runs that follow the papers' CIFAR-100 recipe (crd-cifar100, augmentation on, "
    "the whole training set) with the label term and one distillation term, beside the published "
    "top-1 of that method for the same teacher and student. One row per configuration; ± is a "
    "95% t-interval over its seeds. RepDistiller's script reports the best test accuracy over "
    "its epochs; yours is the final model's."
)


@dataclass(frozen=True)
class Published:
    """One published CIFAR-100 result, in percent: ``top1`` of ``student`` distilled from
    ``teacher`` by ``method``; the teacher's and student's own accuracies and the ``±`` beside
    ``top1`` where the source prints them."""

    method: str
    teacher: str
    student: str
    top1: float
    source: str
    teacher_top1: float | None = None
    student_top1: float | None = None
    spread: float | None = None


REPDISTILLER = "RepDistiller README, CIFAR-100 table 1 (same architecture; Tian et al., ICLR 2020)"
MDISTILLER = "mdistiller README, DKD CIFAR-100 table (Zhao et al., CVPR 2022)"
DIST_KD = "DIST_KD README, CIFAR-100 table (Huang et al., NeurIPS 2022)"

# RepDistiller's table 1, column by column: (teacher, student) and their own accuracies.
_CRD_PAIRS = (
    ("wrn_40_2", "wrn_16_2", 75.61, 73.26),
    ("wrn_40_2", "wrn_40_1", 75.61, 71.98),
    ("resnet56", "resnet20", 72.34, 69.06),
    ("resnet110", "resnet20", 74.31, 69.06),
    ("resnet110", "resnet32", 74.31, 71.14),
    ("resnet32x4", "resnet8x4", 79.42, 72.50),
    ("vgg13", "vgg8", 74.64, 70.36),
)
# ... and its rows, one value per column above (None: the README's 0.00, not a result).
_CRD_TABLE = {
    "KD": (74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98),
    "FitNet": (73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02),
    "AT": (74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43),
    "SP": (73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68),
    "CC": (73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71),
    "VID": (74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23),
    "RKD": (73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48),
    "PKT": (74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88),
    "AB": (72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94),
    "FT": (73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58),
    "FSP": (72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23),
    "NST": (73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53),
    "CRD": (75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94),
}
# mdistiller's DKD row, in its README's column order.
_DKD = (
    ("resnet56", "resnet20", 71.97),
    ("resnet110", "resnet32", 74.11),
    ("resnet32x4", "resnet8x4", 76.32),
    ("wrn_40_2", "wrn_16_2", 76.23),
    ("wrn_40_2", "wrn_40_1", 74.81),
    ("vgg13", "vgg8", 74.68),
)
# DIST_KD's rows: teacher, student, DIST, its ±, teacher's and student's own accuracies.
_DIST = (
    ("wrn_40_2", "wrn_40_1", 74.43, 0.24, 75.61, 71.98),
    ("resnet56", "resnet20", 71.75, 0.30, 72.34, 69.06),
    ("resnet32x4", "resnet8x4", 76.31, 0.19, 79.42, 72.50),
)

PUBLISHED: tuple[Published, ...] = (
    *(
        Published(method, t, s, top1, REPDISTILLER, teacher_top1, student_top1)
        for method, values in _CRD_TABLE.items()
        for (t, s, teacher_top1, student_top1), top1 in zip(_CRD_PAIRS, values, strict=True)
        if top1 is not None
    ),
    *(Published("DKD", t, s, top1, MDISTILLER) for t, s, top1 in _DKD),
    *(Published("DIST", t, s, top1, DIST_KD, ta, sa, sd) for t, s, top1, sd, ta, sa in _DIST),
)

# The workbench's loss kinds -> the method of the tables (kinds not listed map to none).
_RESPONSE_METHODS = {"kd": "KD", "dkd": "DKD", "dist": "DIST"}
_FEATURE_METHODS = {
    "fitnet": "FitNet",
    "mse": "FitNet",
    "at": "AT",
    "at_paper": "AT",
    "nst": "NST",
    "vid": "VID",
    "reviewkd": "ReviewKD",
    "ofd": "OFD",
}
_RELATION_METHODS = {
    "sp": "SP",
    "sp_paper": "SP",
    "rkd": "RKD",
    "rkd_paper": "RKD",
    "pkt": "PKT",
    "cc": "CC",
    "crd": "CRD",
}
_KINDS = {
    "response": ("response_kind", _RESPONSE_METHODS),
    "feature": ("feature_kind", _FEATURE_METHODS),
    "relation": ("relation_kind", _RELATION_METHODS),
}


def method_of(config: Mapping[str, Any]) -> str | None:
    """The published method a stored config trains (``"KD"``, ``"FitNet"``, ...): a student run
    with fixed weights, the label term on and exactly one distillation term on, of a kind a
    table lists; None otherwise (a scratch student, a hybrid, cosine features)."""
    weights = config.get("weights") or {}
    on = [name for name, value in weights.items() if _positive(value)]
    terms = [name for name in on if name != "label"]
    if config.get("role", "student") != "student" or config.get("weighting", "fixed") != "fixed":
        return None
    if "label" not in on or len(terms) != 1 or terms[0] not in _KINDS:
        return None
    field, methods = _KINDS[terms[0]]
    return methods.get(config.get(field))


def follows_protocol(config: Mapping[str, Any]) -> bool:
    """True when a stored config trains with the papers' recipe (``PROTOCOL`` as
    ``apply_presets`` sets it for this student) on the whole of CIFAR-100 with augmentation."""
    expected = apply_presets({"student": config.get("student")}, recipe=PROTOCOL)
    del expected["student"], expected["teacher_epochs"]  # a stored teacher may stand in
    expected |= {"dataset": "cifar100", "augment": True, "train_fraction": 1.0}
    # A field older than the record is at its default (as for the record's fingerprint).
    return all(
        _same(config.get(name, IDENTITY_ADDED_LATER.get(name)), value)
        for name, value in expected.items()
    )


def published_for(config: Mapping[str, Any]) -> list[Published]:
    """The published rows a stored config (``RunConfig.to_dict()``) can be compared with: same
    teacher and student, the papers' recipe, the same method. Empty when nothing matches."""
    method = method_of(config)
    if method is None or not follows_protocol(config):
        return []
    pair = (config.get("teacher"), config.get("student"))
    return [p for p in PUBLISHED if p.method == method and (p.teacher, p.student) == pair]


def published_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Display rows: one per published row and configuration (a seed group) of the finished
    ``records`` that match it, with their mean test accuracy and its 95% t-interval over seeds
    beside the published top-1, all in percent. Empty when no record matches."""
    groups: dict[tuple[str, int], tuple[Published, dict[int, Mapping[str, Any]]]] = {}
    for record in records:
        config = record.get("config") or {}
        if _test_acc(record) is None:
            continue
        for row in published_for(config):
            key = (fingerprint_of(config, exclude_seed=True), PUBLISHED.index(row))
            groups.setdefault(key, (row, {}))[1][int(config.get("seed", 0))] = record
    ordered = sorted(groups.items(), key=lambda item: (item[0][1], item[0][0]))
    return [_display_row(row, members) for (_, _), (row, members) in ordered]


def _display_row(row: Published, members: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    summary = variant_summary({"yours": {s: _test_acc(r) for s, r in members.items()}}).iloc[0]
    n, mean, sd = int(summary["n"]), float(summary["mean"]), float(summary["std"])
    half = math.nan
    if n >= 2 and sd > 0:
        half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    teachers = [r["metrics"].get("teacher_acc") for r in members.values()]
    teachers = [float(t) for t in teachers if _finite(t)]
    first = next(iter(members.values()))
    return {
        "method": row.method,
        "teacher": row.teacher,
        "student": row.student,
        "seeds": n,
        "your test acc (percent)": 100 * mean,
        "your 95% CI ± (percent)": _percent(half),
        "published top-1 (percent)": row.top1,
        "published ± (percent)": row.spread,
        "your teacher (percent)": _percent(sum(teachers) / len(teachers)) if teachers else None,
        "published teacher (percent)": row.teacher_top1,
        "source": row.source,
        "configuration": summary_of(first.get("config") or {}),
    }


def _test_acc(record: Mapping[str, Any]) -> float | None:
    """A finished run's test accuracy (a fraction), None for one without."""
    value = (record.get("metrics") or {}).get("test_acc")
    return float(value) if record.get("status") == "completed" and _finite(value) else None


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    if isinstance(expected, list):
        return isinstance(value, list | tuple) and list(value) == expected
    if isinstance(expected, float):
        return isinstance(value, int | float) and math.isclose(value, expected, rel_tol=1e-9)
    return value == expected


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _percent(value: float) -> float | None:
    return 100 * value if math.isfinite(value) else None
