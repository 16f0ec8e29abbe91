"""Plain-data views for the app's pages: run tables, progress lines, teacher choices, the
side-by-side summary of a teacher and a student, CSV exports.

Everything here takes store records or registry names and returns plain values (dicts, strings,
frozen dataclasses), so the pages only lay them out and the views can be tested without a UI.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from workbench.config.run_config import RunConfig
from workbench.errors import WorkbenchError
from workbench.ui.naming import ACCURACY_LABEL, ACCURACY_METRIC, EPOCH_METRIC

__all__ = [
    "MISSING",
    "RUN_COLUMNS",
    "RUNS_PAGE_COLUMNS",
    "format_duration",
    "format_percent",
    "history_csv",
    "layer_rows",
    "progress_fraction",
    "progress_text",
    "latest_accuracy",
    "queue_text",
    "run_table",
    "suite_column",
    "suite_names",
    "teacher_choices",
]


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``; an empty string for unknown."""
    if seconds is None or seconds != seconds or seconds < 0:  # None, NaN, negative
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_percent(value: float | None) -> str:
    """``87.2%``, or ``—`` (``MISSING``) when there is no value (yet)."""
    return MISSING if value is None or value != value else f"{value:.1%}"


def progress_fraction(record: Mapping[str, Any]) -> float:
    """Done fraction in [0, 1]: 1 for a completed run, steps done / total steps otherwise."""
    if record.get("status") == "completed":
        return 1.0
    p = record.get("progress") or {}
    total = p.get("total_steps") or 0
    return min(1.0, max(0.0, (p.get("step") or 0) / total)) if total else 0.0


def progress_text(record: Mapping[str, Any]) -> str:
    """``running: epoch 2/3, step 40/84, ETA 12 s`` (or the final status)."""
    status = record.get("status", "")
    p = record.get("progress") or {}
    if status == "queued":
        return "queued: waiting for a free device"
    if status != "running":
        return status
    if not p.get("total_steps"):
        return "running: starting (loading data, preparing the teacher)"
    eta = format_duration(p.get("eta_s"))
    text = f"running: epoch {p.get('epoch', 0)}/{p.get('epochs', 0)}, step {p['step']}/{p['total_steps']}"
    return f"{text}, ETA {eta}" if eta else text


def latest_accuracy(
    record: Mapping[str, Any], epochs: Sequence[Mapping[str, Any]] | None = None
) -> float | None:
    """The run's latest validation accuracy (``naming.EPOCH_METRIC``): the final one, else that
    of its last finished epoch, so a running or cancelled run shows where it got to."""
    value = (record.get("metrics") or {}).get(EPOCH_METRIC)
    if _finite(value):
        return float(value)
    for row in reversed(epochs or ()):
        if _finite(row.get(EPOCH_METRIC)):
            return float(row[EPOCH_METRIC])
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _summary(config: Mapping[str, Any]) -> str:
    """A stored config's one-line summary; remembered per config, since validating a config
    for every row of a polled table of hundreds of runs is most of the table's cost."""
    return _summary_of_text(json.dumps(config, sort_keys=True, default=str))


@functools.lru_cache(maxsize=4096)
def _summary_of_text(text: str) -> str:
    try:
        return RunConfig.from_dict(json.loads(text)).summary()
    except WorkbenchError as exc:  # a record written by another version of the workbench
        return f"(config no longer valid: {exc})"


RUN_COLUMNS = [
    "id", "name", "owner", "visibility", "role", "status", "queue", "progress", "eta",
    ACCURACY_METRIC, EPOCH_METRIC, "teacher_acc", "agreement", "ece", "nll", "logit_gap",
    "knn_acc", "silhouette", "duration", "seconds", "dataset",
    "teacher", "student", "weights", "temperature", "seed", "config", "teacher_source", "tags",
    "error", "created",
]  # fmt: skip


# What the test logits and the test view's embeddings say (calibration, class similarities,
# separability: workbench.training.calibration, workbench.insight.probe_view).
QUALITY_COLUMNS = ("ece", "nll", "logit_gap", "knn_acc", "silhouette")
MISSING = "—"  # a table cell of a metric that does not exist yet (a queued run's accuracy)
# The Runs page's columns, key ones first: what tells runs apart and how they did fits 1440 px
# (the issue saw test and val accuracy hidden on the right); the long ones follow.
RUNS_PAGE_COLUMNS = (
    "shown as", "status", ACCURACY_METRIC, EPOCH_METRIC, "progress", "suite", "queue", "eta",
    "duration", "owner", "visibility", "role", "id", "config", "teacher_source", "tags", "error",
)  # fmt: skip


def suite_names(suites: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{suite id: name}``; a name that several suites share gets their creation time
    (``"leave-one-out (2026-11-27 18:15)"``)."""
    suites = list(suites)
    counts = Counter(suite.get("name") or suite["id"] for suite in suites)
    names = {}
    for suite in suites:
        name = suite.get("name") or suite["id"]
        if counts[name] > 1 and suite.get("created_at") is not None:
            name += f" ({datetime.fromtimestamp(suite['created_at']):%Y-%m-%d %H:%M})"
        names[suite["id"]] = name
    return names


def suite_column(records: Iterable[Mapping[str, Any]], names: Mapping[str, str]) -> list[str]:
    """Each run's suite as the table shows it: its name, nothing for a run of no suite, and
    "(suite not found)" for a suite that was deleted or that this user may not see."""
    return [names.get(r["suite"], "(suite not found)") if r.get("suite") else "" for r in records]


def queue_text(place: Any) -> str:
    """A queued run's place: ``#3, in about 4 min`` (``#3`` when no estimate)."""
    if place is None:
        return ""
    if place.eta_s is None:
        return f"#{place.position}"
    if place.eta_s < 1:
        return f"#{place.position}, next"
    return f"#{place.position}, in about {format_duration(place.eta_s)}"


def run_table(
    records: Iterable[Mapping[str, Any]],
    epochs: Callable[[str], Sequence[Mapping[str, Any]]] | None = None,
    plan: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per run, for the Runs and Compare tables (``RUN_COLUMNS``).

    ``plan``: run id -> ``queueplan.Place`` of queued runs (the ``queue`` column).

    ``epochs(run_id)`` gives a run's epoch rows: runs without a final accuracy (running,
    cancelled) then show their latest one. ``weights`` lists the non-zero weights as
    ``label=0.3,response=0.7`` (what ``config.parse_weights`` reads); ``created`` is local time.
    """
    rows = []
    for r in records:
        config = r.get("config") or {}
        metrics = r.get("metrics") or {}
        status = r.get("status", "")
        eta = (r.get("progress") or {}).get("eta_s") if status == "running" else None
        seconds = r.get("seconds")
        if seconds is None and status == "running" and r.get("started_at"):
            seconds = time.time() - r["started_at"]
        weights = config.get("weights") or {}
        final = _finite(metrics.get(EPOCH_METRIC))
        created = r.get("created_at")
        rows.append(
            {
                "id": r["id"],
                "name": r.get("name") or "",
                "owner": r.get("owner") or "",
                "visibility": "private" if r.get("private") else "lab",
                "role": r.get("role", ""),
                "status": status,
                "queue": queue_text((plan or {}).get(r["id"])) if status == "queued" else "",
                "progress": progress_fraction(r),
                "eta": format_duration(eta),
                ACCURACY_METRIC: metrics.get(ACCURACY_METRIC),
                EPOCH_METRIC: latest_accuracy(
                    r, None if final or epochs is None else epochs(r["id"])
                ),
                "teacher_acc": metrics.get("teacher_acc"),
                "agreement": metrics.get("agreement"),
                **{name: metrics.get(name) for name in QUALITY_COLUMNS},
                "duration": format_duration(seconds),
                "seconds": seconds,
                "dataset": config.get("dataset"),
                "teacher": config.get("teacher"),
                "student": config.get("student"),
                "weights": ",".join(f"{c}={w:g}" for c, w in weights.items() if w and w > 0),
                "temperature": config.get("temperature"),
                "seed": config.get("seed"),
                "config": _summary(config),
                "teacher_source": r.get("teacher_source") or "",
                "tags": ", ".join(r.get("tags") or []),
                "error": r.get("error") or "",
                "created": datetime.fromtimestamp(created) if created is not None else None,
            }
        )
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    numeric = (ACCURACY_METRIC, EPOCH_METRIC, "teacher_acc", "agreement", "seconds")
    numeric += ("temperature", "progress", *QUALITY_COLUMNS)
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["created"] = pd.to_datetime(frame["created"])
    return frame


def teacher_choices(
    records: Iterable[Mapping[str, Any]], *, dataset: str, teacher: str, data_path: str = ""
) -> dict[str, str]:
    """Completed teacher runs of ``teacher`` on ``dataset``: run id -> label with val accuracy."""
    choices = {}
    for r in records:
        config = r.get("config") or {}
        if (
            r.get("role") == "teacher"
            and r.get("status") == "completed"
            and config.get("dataset") == dataset
            and config.get("teacher") == teacher
            and (config.get("data_path") or "") == (data_path or "")
        ):
            acc = (r.get("metrics") or {}).get(ACCURACY_METRIC)
            acc_text = f"{ACCURACY_LABEL} {format_percent(acc)}"
            name = r.get("name") or f"{teacher}, {config.get('epochs', '?')} ep"
            choices[r["id"]] = f"{name} ({acc_text}, {r['id']})"
    return choices


def history_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Metric history rows (one dict per logged step) as CSV text, columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def layer_rows(layers: Iterable[Any]) -> list[dict[str, Any]]:
    """``LayerInfo``s as table rows: layer path, output shape, parameters."""
    return [
        {"layer": li.path, "output shape": " x ".join(map(str, li.shape)), "params": li.params}
        for li in layers
    ]
