"""Plain-data views for the pages: durations, progress, run rows, teacher choices, CSV, pairs."""

from __future__ import annotations

import csv
import io
import math
import time

import pytest

from workbench.config.run_config import LossWeights, RunConfig
from workbench.distill.model_pair import inspect_pair
from workbench.ui.tables import (
    RUN_COLUMNS,
    format_duration,
    format_percent,
    history_csv,
    latest_accuracy,
    progress_fraction,
    progress_text,
    run_table,
    teacher_choices,
)

STUDENT = RunConfig(teacher="small_cnn", student="mlp", epochs=2)
TEACHER = STUDENT.teacher_config()


def record(config=STUDENT, **fields):
    base = {
        "id": "r1",
        "name": "",
        "tags": [],
        "role": config.role,
        "status": "queued",
        "config": config.to_dict(),
        "progress": {
            "epoch": 0,
            "epochs": config.epochs,
            "step": 0,
            "total_steps": 0,
            "eta_s": None,
        },
        "metrics": {},
        "seconds": None,
        "started_at": None,
        "error": None,
        "teacher_source": None,
    }
    return base | fields


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (float("nan"), ""),
        (-1, ""),
        (0, "0 s"),
        (42.4, "42 s"),
        (185, "3 min 05 s"),
        (3720, "1 h 02 min"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_percent():
    assert format_percent(0.8722) == "87.2%"
    assert format_percent(None) == format_percent(float("nan")) == "—"


def test_progress_of_a_running_run():
    r = record(
        status="running",
        progress={"epoch": 1, "epochs": 2, "step": 10, "total_steps": 40, "eta_s": 12.0},
    )
    assert progress_fraction(r) == 0.25
    assert progress_text(r) == "running: epoch 1/2, step 10/40, ETA 12 s"
    assert progress_text(record(status="running")).startswith("running: starting")
    assert progress_text(record()).startswith("queued")
    assert progress_fraction(record(status="completed")) == 1.0
    assert progress_text(record(status="failed")) == "failed"


def test_run_table_summarises_a_record():
    r = record(
        status="completed",
        name="baseline",
        tags=["a", "b"],
        seconds=65.0,
        metrics={"val_acc": 0.9, "test_acc": 0.88, "teacher_acc": 0.95},
        teacher_source="cache",
    )
    row = run_table([r]).iloc[0]
    assert (
        row["name"] == "baseline"
        and row["tags"] == "a, b"
        and row["val_acc"] == 0.9
        and row["test_acc"] == 0.88
    )
    assert row["duration"] == "1 min 05 s" and row["eta"] == "" and row["progress"] == 1.0
    assert row["config"] == STUDENT.summary() and row["teacher_source"] == "cache"
    assert (row["teacher_acc"], row["dataset"], row["student"]) == (0.95, "digits", "mlp")
    assert row["weights"] == ",".join(
        f"{c}={w:g}" for c, w in STUDENT.weights.as_dict().items() if w > 0
    )


def test_run_table_columns_and_empty_table():
    assert list(run_table([]).columns) == RUN_COLUMNS
    assert run_table([]).empty


def test_running_and_cancelled_runs_show_their_last_epoch_accuracy():
    epochs = {
        "r1": [{"epoch": 1, "val_acc": 0.62}, {"epoch": 2, "val_acc": 0.97}],
        "r2": [{"epoch": 1, "val_acc": 0.5}],
        "r3": [],
    }
    runs = [
        record(status="running", id="r1"),
        record(status="cancelled", id="r2"),
        record(status="queued", id="r3"),
        record(status="completed", id="r4", metrics={"val_acc": 0.8, "test_acc": 0.78}),
    ]
    table = run_table(runs, epochs=lambda run_id: epochs.get(run_id, [{"val_acc": 0.1}]))
    assert table["val_acc"].tolist()[:2] == [0.97, 0.5]
    assert math.isnan(table["val_acc"].tolist()[2])
    assert table["val_acc"].tolist()[3] == 0.8  # the final one, not the epoch rows'
    assert latest_accuracy(runs[0]) is None  # without the epoch rows nothing to show
    assert latest_accuracy(runs[0], epochs["r1"]) == 0.97


def test_run_table_of_a_running_run_counts_its_time_so_far():
    row = run_table([record(status="running", started_at=time.time() - 5)]).iloc[0]
    assert row["duration"] in ("5 s", "6 s")


def test_run_table_survives_a_config_from_another_version():
    row = run_table([record() | {"config": {"bogus": 1}}]).iloc[0]
    assert "no longer valid" in row["config"]


def test_teacher_choices_match_model_dataset_and_status():
    runs = [
        record(TEACHER, id="t1", status="completed", metrics={"val_acc": 0.8, "test_acc": 0.79}),
        record(TEACHER, id="t2", status="failed"),
        record(
            TEACHER.replace(dataset="digits", teacher="mlp", student="mlp"),
            id="t3",
            status="completed",
        ),
        record(STUDENT, id="s1", status="completed"),
    ]
    choices = teacher_choices(runs, dataset="digits", teacher="small_cnn")
    assert list(choices) == ["t1"] and "test acc 79.0%" in choices["t1"]
    assert teacher_choices(runs, dataset="digits", teacher="resnet18") == {}


def test_history_csv_round_trips():
    rows = [{"step": 1, "total": 2.5}, {"step": 2, "total": 1.5, "label": 1.0}]
    parsed = list(csv.DictReader(io.StringIO(history_csv(rows))))
    assert parsed == [
        {"step": "1", "total": "2.5", "label": ""},
        {"step": "2", "total": "1.5", "label": "1.0"},
    ]
    assert history_csv([]) == "\n"


def test_inspect_pair_on_digits():
    pair = inspect_pair("small_cnn", "mlp", "digits")
    assert pair.input_shape == (1, 8, 8) and pair.num_classes == 10
    assert [li.path for li in pair.student_layers] == ["layer1", "layer2"]
    assert [li.path for li in pair.teacher_layers] == ["block1", "block2", "block3"]
    assert pair.suggested_pairs == (("layer1", "block2"), ("layer2", "block3"))
    assert pair.size_ratio == pytest.approx(pair.teacher_params / pair.student_params)
    assert pair.pairing_error == ""


def test_inspect_pair_passes_on_the_library_error():
    from workbench.errors import DatasetUnavailableError, UnknownNameError

    with pytest.raises(UnknownNameError):
        inspect_pair("nope", "mlp", "digits")
    with pytest.raises(DatasetUnavailableError):
        inspect_pair("small_cnn", "mlp", "image_folder", "/definitely/not/here")


def test_weights_of_a_teacher_record_are_label_only():
    assert RunConfig.from_dict(record(TEACHER)["config"]).weights == LossWeights(1, 0, 0, 0)
