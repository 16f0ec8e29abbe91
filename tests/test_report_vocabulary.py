"""One accuracy vocabulary (issue 19, items 1 and 12): ``test_acc`` is the headline and always
named, ``val_acc`` is named as validation, agreement says its split, a metric that does not exist
yet is "—", and the CLI's ``show --json`` and the Runs page give the same numbers for one run.

The runs are fabricated in the store (nothing trains); their numbers are the issue's example: a
student at 0.9583 on the test split and 0.9750 on validation, agreement 0.8440 (test) and 0.8833
(validation, the last epoch), its teacher at 0.9833 (test).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from workbench.cli import main
from workbench.cli_output import Progress
from workbench.config.run_config import RunConfig
from workbench.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60
DASH = "—"
STUDENT = RunConfig(teacher="small_cnn", student="mlp", weights={"label": 1.0}, device="cpu")
METRICS = {
    "val_acc": 0.975,
    "best_val_acc": 0.975,
    "test_acc": 0.9583,
    "teacher_acc": 0.9833,
    "agreement": 0.844,
    "final_losses": {"label": 0.1, "response": 0.0, "feature": 0.0, "relation": 0.0, "total": 0.1},
}
EPOCHS = [
    {"epoch": 1, "val_acc": 0.9, "agreement": 0.8, "train_loss": 1.0, "time": 1.0},
    {"epoch": 2, "val_acc": 0.975, "agreement": 0.8833, "train_loss": 0.5, "time": 2.0},
]


@pytest.fixture
def lab(home, monkeypatch):
    """A finished student and a queued one (nothing executes them), both alice's."""
    monkeypatch.syspath_prepend(str(ROOT))  # `streamlit run` puts app.py's folder on sys.path
    monkeypatch.setenv("KDWB_USER", "alice")
    config = home.parent / "workbench.toml"
    config.write_text('[workers]\napp_executes = "none"\n')  # the queued run stays queued
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    store = Store(home)
    done = store.create_run(STUDENT, name="label only", owner="alice", status="completed")
    store.set_epochs(done, EPOCHS)
    now = time.time()
    store.update_run(done, started_at=now - 5, finished_at=now, seconds=5.0, metrics=METRICS)
    queued = store.create_run(STUDENT.replace(seed=1), name="waiting", owner="alice")
    yield store, {"done": done, "queued": queued}
    st.cache_resource.clear()
    store.close()


def _json(capsys, args: list[str]):
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------- --json: named fields
NAMED = {
    "test_acc": 0.9583,
    "val_acc": 0.975,
    "teacher_test_acc": 0.9833,
    "teacher_acc": 0.9833,  # kept: it always was the teacher's test accuracy
    "agreement_test": 0.844,
    "agreement": 0.844,  # kept: it always was the test split's
    "agreement_val": 0.8833,
}


def test_show_json_names_every_accuracy_with_its_split(lab, capsys):
    store, runs = lab
    shown = _json(capsys, ["show", runs["done"], "--json"])
    assert {k: shown[k] for k in NAMED} == NAMED
    assert shown["metrics"] == METRICS and len(shown["epochs"]) == 2  # the record, as before


def test_runs_json_names_every_accuracy_with_its_split(lab, capsys):
    store, runs = lab
    listed = {r["run_id"]: r for r in _json(capsys, ["runs", "--json"])}
    assert {k: listed[runs["done"]][k] for k in NAMED} == NAMED
    assert {k: listed[runs["queued"]][k] for k in NAMED} == dict.fromkeys(NAMED)


# ---------------------------------------------------------------------- text
def test_runs_text_has_a_header_naming_its_columns(lab, capsys):
    store, runs = lab
    assert main(["runs"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert "test acc" in header and "val acc" in header and "status" in header
    assert header.index("test acc") < header.index("val acc")
    (done,) = [line for line in lines if runs["done"] in line]
    (queued,) = [line for line in lines if runs["queued"] in line]
    assert done.index("0.9583") == header.index("test acc")  # each number under its name
    assert done.index("0.9750") == header.index("val acc")
    assert queued[header.index("test acc")] == DASH and queued[header.index("val acc")] == DASH
    assert "None" not in "\n".join(lines)


def test_show_text_names_test_and_validation(lab, capsys):
    store, runs = lab
    assert main(["show", runs["done"]]) == 0
    out = capsys.readouterr().out
    assert "test accuracy 0.9583 (validation 0.9750)" in out
    assert "teacher test accuracy 0.9833" in out
    assert "agreement with teacher 0.8440 (test; validation 0.8833)" in out
    assert "epoch 2: val acc 0.9750, val agreement 0.8833" in out
    assert "val_acc" not in out and "teacher_acc" not in out


def test_show_text_of_a_run_without_metrics_says_dash_not_none(lab, capsys):
    store, runs = lab
    assert main(["show", runs["queued"]]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {DASH} (validation {DASH})" in out
    assert f"agreement with teacher {DASH}" in out
    assert "None" not in out


def test_progress_names_the_validation_split():
    lines = []

    class Lines:
        def write(self, text):
            lines.append(text)

    event = {"role": "student", "phase": "epoch", "epoch": 1, "epochs": 2}
    Progress(Lines())(event | {"val_acc": 0.9, "agreement": 0.8833})
    text = "".join(lines)
    assert "val acc 0.9000" in text and "val agreement 0.8833" in text
    assert "val_acc" not in text and " agreement 0.8833" not in text.replace("val agreement", "")


# ---------------------------------------------------------------------- errors in the form's words
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "5"], "Learning rate (lr) must be a number from 1e-06 to 1, got 5"),
        (["--batch-size", "1"], "Batch size (batch_size) must be a whole number from 2 to 4096"),
        (["--epochs", "abc"], "Epochs (epochs) must be a whole number from 1 to 500, got 'abc'"),
        (["--temperature", "0"], "Temperature T (temperature) must be a number from 0.05 to 100"),
        (["--weights", "label=-1"], "Label weight (weights.label) must be a number from 0 to 100"),
    ],
)
def test_cli_errors_name_the_forms_label_and_the_field(home, capsys, args, message):
    assert main(["run", "--teacher", "small_cnn", "--student", "mlp", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_a_config_files_error_names_the_label_too(home, tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("lr = 5.0\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config file {path}: Learning rate (lr) must be a number" in err, err


# ---------------------------------------------------------------------- the CLI and the Runs page
def _open_runs(run_id: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"run": run_id})
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_show_json_and_the_runs_page_give_the_same_accuracies(lab, capsys):
    from workbench.ui.tables import format_percent

    store, runs = lab
    shown = _json(capsys, ["show", runs["done"], "--json"])
    at = _open_runs(runs["done"])
    assert at.selectbox(key="runs_selected").value == runs["done"]
    table = at.dataframe[0].value.set_index("id")
    assert table.loc[runs["done"], "test_acc"] == shown["test_acc"]
    assert table.loc[runs["done"], "val_acc"] == shown["val_acc"]
    detail = {m.label: m.value for m in at.metric}  # the selected run's headline numbers
    assert detail["test acc"] == format_percent(shown["test_acc"]) == "95.8%"
    assert detail["teacher test acc"] == format_percent(shown["teacher_test_acc"])
    assert detail["Agreement with teacher (test)"] == format_percent(shown["agreement_test"])
    assert detail["val acc"] == format_percent(shown["val_acc"])


def test_suite_text_names_the_split_of_its_accuracy(capsys):
    import pandas as pd

    from workbench.cli_output import print_suite

    analysis = {
        "summary": pd.DataFrame(
            [
                {"variant": "full", "n": 2, "mean": 0.9583, "std": 0.01},
                {"variant": "label only", "n": 1, "mean": 0.95, "std": float("nan")},
            ]
        ),
        "contributions": pd.DataFrame(),
        "shapley": None,
        "metric": "test_acc",
        "split": "test",
    }
    print_suite({"id": "s1", "name": "demo"}, analysis)
    out = capsys.readouterr().out
    assert "full                   test acc 0.9583 +- 0.0100 (n=2)" in out
    assert f"label only             test acc 0.9500 +- {DASH} (n=1)" in out
    assert "nan" not in out
