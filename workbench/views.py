"""Plain-data views for the app's pages: run tables, progress lines, teacher choices, the
side-by-side summary of a teacher and a student, CSV exports.

Everything here takes store records or registry names and returns plain values (dicts, strings,
frozen dataclasses), so the pages only lay them out and the views can be tested without a UI.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.config import RunConfig
from workbench.errors import WorkbenchError

__all__ = [
    "ModelPair",
    "format_duration",
    "format_percent",
    "history_csv",
    "inspect_pair",
    "layer_rows",
    "progress_fraction",
    "progress_text",
    "run_label",
    "run_row",
    "runs_table",
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
    """``87.2%``, or ``-`` when there is no value (yet)."""
    return "-" if value is None or value != value else f"{value:.1%}"


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


def run_label(record: Mapping[str, Any]) -> str:
    """A stable, unique name for a run in selectboxes and legends: ``name · id`` (or the role).

    Status and accuracy stay out: a widget keeps the label it was first drawn with.
    """
    return f"{record.get('name') or record.get('role') or 'run'} · {record['id']}"


def _summary(config: Mapping[str, Any]) -> str:
    try:
        return RunConfig.from_dict(config).summary()
    except WorkbenchError as exc:  # a record written by another version of the workbench
        return f"(config no longer valid: {exc})"


def run_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the runs table."""
    metrics = record.get("metrics") or {}
    status = record.get("status", "")
    eta = (record.get("progress") or {}).get("eta_s") if status == "running" else None
    seconds = record.get("seconds")
    if seconds is None and status == "running" and record.get("started_at"):
        seconds = time.time() - record["started_at"]
    return {
        "id": record["id"],
        "name": record.get("name") or "",
        "role": record.get("role", ""),
        "status": status,
        "progress": progress_fraction(record),
        "eta": format_duration(eta),
        "val_acc": metrics.get("val_acc"),
        "duration": format_duration(seconds),
        "config": _summary(record.get("config") or {}),
        "teacher": record.get("teacher_source") or "",
        "tags": ", ".join(record.get("tags") or []),
        "error": record.get("error") or "",
    }


def runs_table(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [run_row(r) for r in records]


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
            acc = (r.get("metrics") or {}).get("val_acc")
            acc_text = f"val acc {format_percent(acc)}"
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


@dataclass(frozen=True)
class ModelPair:
    """A teacher and a student built for one dataset, side by side."""

    teacher: str
    student: str
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    teacher_params: int
    student_params: int
    teacher_layers: tuple[Any, ...]  # LayerInfo
    student_layers: tuple[Any, ...]
    suggested_pairs: tuple[tuple[str, str], ...]
    pairing_error: str = ""  # why no pairs could be suggested

    @property
    def size_ratio(self) -> float:
        """Teacher parameters / student parameters."""
        return self.teacher_params / max(1, self.student_params)


def inspect_pair(teacher: str, student: str, dataset: str, data_path: str = "") -> ModelPair:
    """Build both models for ``dataset`` and list their sizes, candidate layers, suggested pairs.

    Raises the library's ``WorkbenchError`` (``DatasetUnavailableError``, ``UnknownNameError``)
    when the dataset or a model cannot be had.
    """
    from workbench.data import load_dataset
    from workbench.errors import IncompatibleModelsError
    from workbench.features import pair_layers
    from workbench.models import build_model, count_params, feature_layers

    data = load_dataset(dataset, data_path=data_path)
    shape, k = tuple(data.input_shape), int(data.num_classes)
    t_model, s_model = build_model(teacher, shape, k), build_model(student, shape, k)
    t_layers, s_layers = feature_layers(t_model, shape), feature_layers(s_model, shape)
    pairs: tuple[tuple[str, str], ...] = ()
    error = ""
    try:
        pairs = pair_layers(s_layers, t_layers)
    except IncompatibleModelsError as exc:
        error = str(exc)
    return ModelPair(
        teacher=teacher,
        student=student,
        dataset=dataset,
        input_shape=shape,
        num_classes=k,
        teacher_params=count_params(t_model),
        student_params=count_params(s_model),
        teacher_layers=tuple(t_layers),
        student_layers=tuple(s_layers),
        suggested_pairs=tuple(pairs),
        pairing_error=error,
    )
