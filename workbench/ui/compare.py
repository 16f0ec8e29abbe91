"""The Compare page's logic: filter the runs, pick the selection, group seeds, shape the tables.

Pure functions of the store's plain records, history rows and probes (``docs/ARCHITECTURE.md``);
the figures themselves come from ``workbench.ui.plots``. A *unit* is what one curve, one heatmap or
one table column stands for: a single run, or (with seeds grouped) every seed of one config.
A group's probe is the mean over its seeds of what can be averaged (CKA, pair cosines, per-class
accuracy, agreement), which is meaningful because every run of a dataset is probed on the same
samples (``workbench.training.probe``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from workbench.ui.naming import ACCURACY_METRIC, field_text, flat_config, group_fields, short_names
from workbench.ui.plots import curves, summaries
from workbench.ui.tables import run_table

__all__ = [
    "FILTERS",
    "adaptive_weighting",
    "comparable_first",
    "fit_columns",
    "LOSS_CHOICES",
    "curve_runs",
    "data_version",
    "default_baseline",
    "diff_records",
    "diff_table",
    "filter_runs",
    "filter_values",
    "has_probe_data",
    "most_different_pair",
    "pair_cosine_table",
    "parcoords_records",
    "per_class_table",
    "probe_units",
    "colours",
    "group_choices",
    "same_layer_indices",
    "same_layer_table",
    "same_layers",
    "selection_options",
    "selection_table",
    "units",
    "valid_selection",
]

Record = Mapping[str, Any]
Probe = Mapping[str, Any]

FILTERS = ("status", "dataset", "teacher", "student", "tags")
LOSS_CHOICES = ("total", "label", "response", "feature", "relation")
AGREEMENT_ROW = "agreement"


# ---------------------------------------------------------------------- filters and selection
def _values(record: Record, name: str) -> list[str]:
    """The values of filter ``name`` that ``record`` has (a run has several tags)."""
    if name == "status":
        return [str(record.get("status"))]
    if name == "tags":
        return [str(t) for t in record.get("tags") or []]
    value = (record.get("config") or {}).get(name)
    return [] if value in (None, "") else [str(value)]


def filter_values(records: Iterable[Record]) -> dict[str, list[str]]:
    """``{filter: sorted distinct values}`` over ``records``, for the filter multiselects."""
    records = list(records)
    return {
        name: sorted({v for r in records for v in _values(r, name)}, key=str.lower)
        for name in FILTERS
    }


def filter_runs(records: Iterable[Record], chosen: Mapping[str, Iterable[str]]) -> list[Record]:
    """The records that match every filter with a choice; a filter left empty matches all.

    A record matches a filter when one of its values is chosen (for tags: any chosen tag).
    """
    wanted = {name: set(values) for name, values in chosen.items() if values}
    unknown = set(wanted) - set(FILTERS)
    if unknown:
        raise ValueError(f"unknown filter {sorted(unknown)}; the filters are {FILTERS}")
    return [
        r for r in records if all(set(_values(r, name)) & vals for name, vals in wanted.items())
    ]


def valid_selection(requested: Iterable[str] | None, available: Iterable[str]) -> list[str]:
    """``requested`` run ids that still exist, in their order, without repeats."""
    available = set(available)
    return [r for r in dict.fromkeys(requested or ()) if r in available]


def selection_options(shown: Sequence[str], selected: Sequence[str]) -> list[str]:
    """The runs the selection widget offers: the filtered table's runs, then any selected run
    the filters hide (a filter never silently drops a run from the comparison)."""
    return list(dict.fromkeys([*shown, *selected]))


def data_version(record: Record) -> tuple[Any, ...]:
    """What changes whenever a run's history, epochs or probe can change: a cache key part."""
    progress = record.get("progress") or {}
    return (
        record.get("id"),
        record.get("status"),
        record.get("finished_at"),
        progress.get("step"),
        progress.get("epoch"),
    )


# ---------------------------------------------------------------------- units
NO_GROUP = "none"
SEED_GROUP = "seeds of one config"


def group_choices(records: Iterable[Record]) -> list[str]:
    """What the curves can be grouped (or coloured) by: nothing, the seeds of one config, or any
    config field of these runs (``naming.group_fields``)."""
    return [NO_GROUP, SEED_GROUP, *(f for f in group_fields(records) if f != "seed")]


def units(records: Iterable[Record], *, group_by: str = SEED_GROUP) -> dict[str, list[Record]]:
    """``{label: member records}``: one run per unit named by ``naming.short_names``
    (``NO_GROUP``), the seeds of one config (``SEED_GROUP``, ``curves.group_runs``), or the runs
    that share a value of the config field ``group_by`` (``"feature_kind at (3 runs)"``)."""
    records = list(records)
    if group_by == SEED_GROUP:
        return curves.group_runs(records)
    if group_by in ("", NO_GROUP, None):
        names = short_names(records)
        return {names[r["id"]]: [r] for r in records}
    groups: dict[str, list[Record]] = {}
    for record in records:
        value = flat_config(record.get("config") or {}).get(group_by)
        groups.setdefault(field_text(group_by, value), []).append(record)
    return {
        (f"{label} ({len(members)} runs)" if len(members) > 1 else label): members
        for label, members in groups.items()
    }


def colours(unit_map: Mapping[str, Sequence[Record]], colour_by: str) -> dict[str, int] | None:
    """``{unit label: palette index}``: units whose first run shares the value of the config field
    ``colour_by`` share a colour (in order of first appearance); None to colour each unit."""
    if colour_by in ("", NO_GROUP, SEED_GROUP, None):
        return None
    index: dict[str, int] = {}
    out = {}
    for label, members in unit_map.items():
        value = json.dumps(flat_config(members[0].get("config") or {}).get(colour_by), default=str)
        out[label] = index.setdefault(value, len(index))
    return out


def curve_runs(
    unit_map: Mapping[str, Sequence[Record]], rows: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """The ``runs`` argument of ``curves.accuracy_curves`` / ``loss_curves`` / ``weight_curves``:
    ``{label: one run's rows}`` or ``{label: [rows of each seed]}``; units without rows are left
    out (``rows`` maps a run id to its history or epoch rows)."""
    out: dict[str, Any] = {}
    for label, members in unit_map.items():
        present = [list(rows[m["id"]]) for m in members if rows.get(m["id"])]
        if present:
            out[label] = present[0] if len(present) == 1 else present
    return out


def same_layers(probe: Probe, other: Probe) -> bool:
    """Whether two probes measured the same student and teacher layers (CKA is comparable)."""
    return all(
        list(probe.get(side) or []) == list(other.get(side) or [])
        for side in ("student_layers", "teacher_layers")
    )


def _mean(values: Sequence[Any]) -> Any:
    """Element-wise mean of equally shaped numbers or arrays, ignoring NaN (NaN where all are)."""
    stacked = np.asarray([np.asarray(v, dtype=float) for v in values])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN entry stays NaN
        mean = np.nanmean(stacked, axis=0)
    return float(mean) if np.ndim(mean) == 0 else mean


def _group_probe(probes: Sequence[Probe]) -> dict[str, Any]:
    """One probe for a group of seeds: the first seed's layers, class names and Gram matrices,
    and the mean of each measurement over the seeds that have it (None when the shapes, or for
    CKA the layer lists, differ: then there is no meaningful mean)."""
    first = dict(probes[0])
    if len(probes) == 1:
        return first
    layers_agree = all(same_layers(p, first) for p in probes)
    for key in ("cka", "pair_cosine", "per_class_acc", "agreement"):
        values = [p[key] for p in probes if p.get(key) is not None]
        comparable = len({np.shape(v) for v in values}) == 1 and (key != "cka" or layers_agree)
        first[key] = _mean(values) if values and comparable else None
        if key == "cka" and first[key] is not None:  # the seeds' spread, for mean ± sd views
            first["cka_sd"], first["cka_seeds"] = _sd(values), len(values)
    first["seeds"] = len(probes)
    return first


def _sd(values: Sequence[Any]) -> np.ndarray:
    """Element-wise sample standard deviation (ddof 1) of equally shaped arrays, ignoring NaN;
    NaN where fewer than two values are finite."""
    stacked = np.asarray([np.asarray(v, dtype=float) for v in values])  # [seeds, ...]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fewer than two: NaN
        return np.nanstd(stacked, axis=0, ddof=1)


def same_layer_indices(probe: Probe) -> list[tuple[int, int]]:
    """``(student row, teacher column)`` of the probe's CKA matrix at corresponding layers: the
    run's distilled pairs when it has them, else the teacher layer at the same relative depth
    (student layer i of S against teacher layer round(i (T - 1) / (S - 1)) of T)."""
    s_layers = list(probe.get("student_layers") or [])
    t_layers = list(probe.get("teacher_layers") or [])
    if not s_layers or not t_layers:
        return []
    pairs = [tuple(p) for p in probe.get("pairs") or []]
    if pairs and all(s in s_layers and t in t_layers for s, t in pairs):
        return [(s_layers.index(s), t_layers.index(t)) for s, t in pairs]
    if len(s_layers) == 1:
        return [(0, len(t_layers) - 1)]
    step = (len(t_layers) - 1) / (len(s_layers) - 1)
    return [(i, round(i * step)) for i in range(len(s_layers))]


def same_layer_table(probes: Mapping[str, Probe]) -> pd.DataFrame:
    """One row per unit and corresponding layer pair (``same_layer_indices``): ``run``,
    ``pair`` ("student layer → teacher layer"), ``cka`` (the seeds' mean for a group), ``sd``
    (NaN for a single run) and ``seeds``."""
    rows = []
    for label, probe in probes.items():
        cka = probe.get("cka")
        if cka is None:
            continue
        cka, sd = np.asarray(cka, dtype=float), probe.get("cka_sd")
        s_layers, t_layers = list(probe["student_layers"]), list(probe["teacher_layers"])
        for i, j in same_layer_indices(probe):
            rows.append(
                {
                    "run": label,
                    "pair": f"{s_layers[i]} → {t_layers[j]}",
                    "cka": float(cka[i, j]),
                    "sd": float(np.asarray(sd)[i, j]) if sd is not None else math.nan,
                    "seeds": int(probe.get("cka_seeds") or 1),
                }
            )
    return pd.DataFrame(rows, columns=["run", "pair", "cka", "sd", "seeds"])


def probe_units(
    unit_map: Mapping[str, Sequence[Record]], probes: Mapping[str, Probe | None]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({label: probe}, [labels without a probe])``; a group's probe averages its seeds'
    (see the module docstring). ``probes`` maps a run id to its probe or None."""
    found: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for label, members in unit_map.items():
        present = [probes[m["id"]] for m in members if probes.get(m["id"])]
        if present:
            found[label] = _group_probe(present)
        else:
            missing.append(label)
    return found, missing


def has_probe_data(probe: Probe, what: str) -> bool:
    """Whether ``probe`` holds ``what``: ``"cka"``, ``"grams"``, ``"pair_cosine"``,
    ``"per_class_acc"``."""
    value = probe.get(what)
    if value is None:
        return False
    return bool(len(value)) if not isinstance(value, np.ndarray) else value.size > 0


def default_baseline(probes: Mapping[str, Probe]) -> str:
    """The label whose layers most other units share (the first on ties): a baseline that a
    CKA difference can be taken against."""
    labels = list(probes)
    return max(
        labels,
        key=lambda a: (sum(same_layers(probes[a], probes[b]) for b in labels), -labels.index(a)),
    )


def most_different_pair(probes: Mapping[str, Probe]) -> tuple[str, str] | None:
    """``(baseline, run)``: of the units with comparable CKA matrices (``same_layers``, same
    shape), the two whose CKA differs most (mean ``|CKA(run) - CKA(baseline)|`` over the cells),
    the earlier label first; the first such pair on ties; None when no two are comparable.

    The default of the CKA difference: two runs of one config and seed are identical, and a
    difference of zeros shows nothing."""
    labels = [label for label in probes if has_probe_data(probes[label], "cka")]
    best: tuple[float, tuple[str, str]] | None = None
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            x, y = (np.asarray(probes[k]["cka"], dtype=float) for k in (a, b))
            if x.shape != y.shape or not same_layers(probes[a], probes[b]):
                continue
            gap = np.abs(x - y)
            score = float(np.nanmean(gap)) if np.isfinite(gap).any() else 0.0
            if best is None or score > best[0]:
                best = (score, (a, b))
    return None if best is None else best[1]


def comparable_first(probes: Mapping[str, Probe], baseline: str) -> list[str]:
    """The labels other than ``baseline``, those with the baseline's layers first (in order),
    so a CKA difference against the baseline picks a comparable run by default."""
    others = [label for label in probes if label != baseline]
    return sorted(others, key=lambda label: not same_layers(probes[label], probes[baseline]))


def adaptive_weighting(records: Iterable[Record]) -> bool:
    """Whether one of ``records`` adapts its loss weights while it trains (a weighting scheme
    other than ``fixed``): only then do its weights over time say anything."""
    return any((r.get("config") or {}).get("weighting", "fixed") != "fixed" for r in records)


# ---------------------------------------------------------------------- tables
# What a table's columns take on screen (Streamlit's "small" and "medium" widths), and what a
# 1440 px window leaves the page's content in the wide layout, beside the sidebar.
SMALL_PX, MEDIUM_PX, CONTENT_PX = 75, 200, 1100


def fit_columns(frame: pd.DataFrame, width_px: int = CONTENT_PX) -> tuple[pd.DataFrame, bool]:
    """``(frame, False)`` when its columns (``SMALL_PX`` each, beside a ``MEDIUM_PX`` index)
    fit ``width_px``; else ``(frame.T, True)`` when the transpose fits or is narrower, so a
    table of many units and few rows (per-class accuracy) is read without scrolling sideways."""

    def width(f: pd.DataFrame) -> int:
        return MEDIUM_PX + SMALL_PX * len(f.columns)

    if width(frame) <= width_px or width(frame.T) >= width(frame):
        return frame, False
    flipped = frame.T
    flipped.index.name, flipped.columns.name = frame.columns.name or "run", None
    return flipped, True


def pair_cosine_table(probes: Mapping[str, Probe]) -> pd.DataFrame:
    """Mean cosine of adapted student feature and teacher feature per distilled layer pair:
    one row per pair ``"student -> teacher"``, one column per unit (NaN where a unit lacks the
    pair); units without cosines (no feature loss, no teacher) are left out."""
    columns: dict[str, dict[str, float]] = {}
    for label, probe in probes.items():
        cosines = probe.get("pair_cosine")
        if cosines is None or len(cosines) == 0:
            continue
        pairs = probe.get("pairs") or []
        columns[label] = {
            f"{s} -> {t}": float(c) for (s, t), c in zip(pairs, cosines, strict=False)
        }
    frame = pd.DataFrame(columns)
    frame.index.name = "layer pair"
    return frame


def per_class_table(probes: Mapping[str, Probe]) -> pd.DataFrame:
    """Validation accuracy per class, one column per unit, under a first row ``agreement`` with
    the teacher-student agreement; units without per-class accuracy are left out."""
    columns: dict[str, list[float]] = {}
    names: list[str] = []
    for label, probe in probes.items():
        acc = probe.get("per_class_acc")
        if acc is None or len(acc) == 0:
            continue
        if len(probe.get("class_names") or []) > len(names):
            names = [str(n) for n in probe["class_names"]]
        agreement = probe.get("agreement")
        columns[label] = [
            float(agreement) if agreement is not None else math.nan,
            *(float(a) for a in acc),
        ]
    if not columns:
        return pd.DataFrame(index=pd.Index([], name="class"))
    rows = max(len(v) for v in columns.values()) - 1
    names = (names + [str(c) for c in range(len(names), rows)])[:rows]
    padded = {k: v + [math.nan] * (rows + 1 - len(v)) for k, v in columns.items()}
    return pd.DataFrame(padded, index=pd.Index([AGREEMENT_ROW, *names], name="class"))


def diff_records(unit_map: Mapping[str, Sequence[Record]]) -> list[dict[str, Any]]:
    """One record per unit for ``summaries.config_diff``, named by the unit's label; a group's
    ``seed`` is the list of its seeds (``"0, 1, 2"``)."""
    out = []
    for label, members in unit_map.items():
        config = dict(members[0].get("config") or {})
        if len(members) > 1:
            config["seed"] = ", ".join(str((m.get("config") or {}).get("seed")) for m in members)
        out.append({"id": members[0].get("id"), "name": label, "config": config})
    return out


def diff_table(unit_map: Mapping[str, Sequence[Record]]) -> pd.DataFrame:
    """``summaries.config_diff`` of the units as text (one column per unit label, ``-`` for a field
    a run lacks), so mixed values show the same in a table and in the report."""
    frame = summaries.config_diff(diff_records(unit_map))
    return frame.map(lambda v: "-" if v is None else str(v)).astype(object)


def parcoords_records(records: Iterable[Record], *, grouped: bool) -> list[dict[str, Any]]:
    """Student runs with a final accuracy for ``summaries.parallel_coordinates``; with ``grouped``,
    one record per seed group with the mean accuracy of its finished seeds."""
    done = [
        r
        for r in records
        if r.get("role", "student") == "student"
        and isinstance((r.get("metrics") or {}).get(ACCURACY_METRIC), (int, float))
        and math.isfinite((r.get("metrics") or {}).get(ACCURACY_METRIC))
    ]
    if not grouped:
        return [dict(r) for r in done]
    out = []
    for members in curves.group_runs(done).values():
        acc = float(np.mean([m["metrics"][ACCURACY_METRIC] for m in members]))
        out.append({**members[0], "metrics": {**members[0]["metrics"], ACCURACY_METRIC: acc}})
    return out


def selection_table(
    records: Iterable[Record], epochs: Callable[[str], Sequence[Mapping[str, Any]]] | None = None
) -> pd.DataFrame:
    """``tables.run_table`` with each run's seed group, for the Compare table."""
    records = list(records)
    table = run_table(records, epochs).drop(columns=["queue", "visibility"])
    group_of = {  # only groups of several seeds: a one-run "group" would just repeat its name
        m["id"]: label
        for label, members in curves.group_runs(records).items()
        if len(members) > 1
        for m in members
    }
    table.insert(4, "group", [group_of.get(r.get("id"), "") for r in records])
    return table
