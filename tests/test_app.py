"""AppTest for every page of the app, reached through app.py's st.navigation.

Each test gets its own store (KDWB_HOME in tmp_path); the process-wide JobManager is cached per
store home and the cache is cleared after each test, once its runs have finished.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from workbench.config.run_config import COMPONENTS, PRESETS
from workbench.storage.store import ACTIVE, Store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60  # seconds per script run: the first one imports torch and builds the models


@pytest.fixture
def store(home, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `streamlit run` puts app.py's folder on sys.path
    s = Store(home)
    yield s
    wait_until_idle(s)
    st.cache_resource.clear()  # the next test gets a fresh JobManager
    s.close()


def wait_until_idle(store: Store, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while store.list_runs(status=ACTIVE) and time.monotonic() < deadline:
        time.sleep(0.2)
    return store.list_runs()


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def tiny_models(at: AppTest) -> None:
    """small_cnn teacher (1 epoch) and mlp student: a run takes seconds on a CPU."""
    at.selectbox(key="teacher").set_value("small_cnn").run()
    at.selectbox(key="student").set_value("mlp").run()
    at.number_input(key="teacher_epochs").set_value(1).run()


# ---------------------------------------------------------------------------------- every page
@pytest.mark.parametrize(
    ("page", "keys"),
    [
        (None, ["dataset", "teacher", "teacher_mode", "train_teacher", "student"]),
        ("pages/models.py", ["dataset", "teacher", "student"]),
        ("pages/distill.py", ["w_label", "temperature", "feature_kind", "seeds", "launch"]),
        ("pages/runs.py", []),
        ("pages/compare.py", []),
    ],
)
def test_every_page_renders_without_exceptions(store, page, keys):
    at = app(page)
    assert not errors(at)
    present = {w.key for w in at.main if getattr(w, "key", None)}
    present |= {
        w.key
        for kind in ("selectbox", "radio", "button", "number_input", "text_input")
        for w in at.get(kind)
    }
    assert set(keys) <= present, set(keys) - present


def test_app_title_and_navigation(store):
    at = app()
    assert at.title[0].value == "Models"
    for page in ("pages/distill.py", "pages/runs.py", "pages/compare.py"):
        at.switch_page(page).run()
        assert not at.exception
    assert at.title[0].value == "Compare"


# ---------------------------------------------------------------------------------- models
def test_models_page_shows_both_models_and_suggested_pairs(store):
    at = app()
    assert at.selectbox(key="dataset").value == "digits"
    assert at.selectbox(key="teacher").value == "resnet18"
    assert at.selectbox(key="student").value == "small_cnn"
    labels = [m.label for m in at.metric]
    assert "Teacher resnet18" in labels and "Student small_cnn" in labels and "Size ratio" in labels
    layer_tables = [d.value for d in at.dataframe if "output shape" in d.value.columns]
    assert [list(t["layer"]) for t in layer_tables][1] == ["block1", "block2", "block3"]
    pairs = at.session_state["layer_pairs"]
    assert pairs and all(s.startswith("block") for s, _ in pairs)
    editor = at.data_editor[0].value
    assert list(editor.columns) == ["student", "teacher"] and len(editor) == len(pairs)


def test_choices_persist_across_pages(store):
    at = app()
    tiny_models(at)
    at.switch_page("pages/distill.py").run()
    assert "small_cnn" in at.markdown[0].value and "mlp" in at.markdown[0].value
    at.switch_page("pages/models.py").run()
    assert at.selectbox(key="teacher").value == "small_cnn"
    assert at.selectbox(key="student").value == "mlp"
    assert at.number_input(key="teacher_epochs").value == 1
    assert at.session_state["layer_pairs"] == (("layer1", "block2"), ("layer2", "block3"))


def test_dataset_not_on_disk_shows_the_library_error(store):
    at = app()
    at.selectbox(key="dataset").set_value("mnist").run()
    assert not at.exception
    assert any("mnist" in e for e in errors(at)), errors(at)
    assert not at.data_editor  # no models built without data


def test_image_folder_asks_for_a_folder(store, tmp_path):
    at = app()
    at.selectbox(key="dataset").set_value("image_folder").run()
    assert at.text_input(key="data_path").value == ""
    at.text_input(key="data_path").set_value(str(tmp_path / "nowhere")).run()
    assert not at.exception
    assert errors(at)


def test_train_teacher_button_trains_and_the_teacher_can_be_picked(store):
    at = app()
    tiny_models(at)
    at.button(key="train_teacher").click().run()
    assert not at.exception and not errors(at)
    runs = wait_until_idle(store)
    assert [(r["role"], r["status"]) for r in runs] == [("teacher", "completed")]
    at.run()
    assert any("Teacher trained" in s.value for s in at.success)
    at.radio(key="teacher_mode").set_value("pick a trained teacher").run()
    assert at.selectbox(key="teacher_pick").value == runs[0]["id"]
    assert at.session_state["teacher_run"] == runs[0]["id"]


def _state_dict_bytes(model_name: str) -> bytes:
    from workbench.data.datasets import load_dataset
    from workbench.models.registry import build_model

    data = load_dataset("digits")
    buffer = io.BytesIO()
    torch.save(build_model(model_name, data.input_shape, data.num_classes).state_dict(), buffer)
    return buffer.getvalue()


def test_upload_checkpoint_errors_are_shown_next_to_the_uploader(store):
    at = app()
    at.selectbox(key="teacher").set_value("small_cnn").run()
    at.radio(key="teacher_mode").set_value("upload a checkpoint").run()
    uploader = at.file_uploader(key="teacher_upload")
    uploader.set_value(("junk.pt", b"this is not a checkpoint", "application/octet-stream")).run()
    assert not at.exception
    assert any("not a readable PyTorch state dict" in e for e in errors(at)), errors(at)
    assert at.session_state["teacher_run"] == ""

    at.file_uploader(key="teacher_upload").set_value(
        ("mlp.pt", _state_dict_bytes("mlp"), "application/octet-stream")
    ).run()
    assert any("not a small_cnn" in e for e in errors(at)), errors(at)
    assert store.list_runs() == []

    at.file_uploader(key="teacher_upload").set_value(
        ("cnn.pt", _state_dict_bytes("small_cnn"), "application/octet-stream")
    ).run()
    assert not errors(at)
    (record,) = store.list_runs()
    assert record["role"] == "teacher" and record["teacher_source"] == "upload"
    assert at.session_state["teacher_run"] == record["id"]


# ---------------------------------------------------------------------------------- distill
def test_presets_fill_the_form(store):
    at = app("pages/distill.py")
    for name, weights in PRESETS.items():
        key = next(b.key for b in at.button if b.label == name)
        at.button(key=key).click().run()
        assert [at.number_input(key=f"w_{c}").value for c in COMPONENTS] == [
            weights.as_dict()[c] for c in COMPONENTS
        ]
        assert f"{weights.label:g} \\cdot" in at.latex[0].value


def launch_disabled(at: AppTest) -> bool:
    return at.button(key="launch").disabled and at.button(key="launch_ablation").disabled


def test_all_weights_zero_disables_launch_with_the_reason(store):
    at = app("pages/distill.py")
    for c in COMPONENTS:
        at.number_input(key=f"w_{c}").set_value(0.0)
    at.run()
    assert not at.exception
    assert any("all loss weights are zero" in e for e in errors(at)), errors(at)
    assert launch_disabled(at)
    assert store.list_runs() == []


def test_bad_seeds_disable_launch_with_the_reason(store):
    at = app("pages/distill.py")
    at.text_input(key="seeds").set_value("0, x").run()
    assert [e for e in errors(at) if "seeds" in e] and launch_disabled(at)
    at.text_input(key="seeds").set_value("2").run()
    assert not errors(at) and not launch_disabled(at)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_an_invalid_temperature_blocks_launch_instead_of_becoming_the_default(store, temperature):
    at = app("pages/distill.py")
    at.number_input(key="temperature").set_value(temperature).run()
    # the field keeps what was typed (no widget minimum replaces it) and says why, once
    assert at.number_input(key="temperature").value == temperature
    assert errors(at) == [f"temperature must be a number from 0.05 to 100, got {temperature:g}"]
    assert launch_disabled(at)
    assert any("Nothing was queued" in c.value for c in at.caption)
    assert store.list_runs() == []


def test_a_rejected_upload_blocks_launch_until_another_source_is_chosen(store):
    at = app()
    at.selectbox(key="teacher").set_value("small_cnn").run()
    at.radio(key="teacher_mode").set_value("upload a checkpoint").run()
    at.file_uploader(key="teacher_upload").set_value(
        ("my-teacher.pt", b"this is not a checkpoint", "application/octet-stream")
    ).run()
    assert any("my-teacher.pt" in e for e in errors(at)), errors(at)  # not the temporary file
    at.switch_page("pages/distill.py").run()
    assert launch_disabled(at)
    (message,) = errors(at)
    assert message.startswith("Change this on the Models page") and "rejected" in message
    at.switch_page("pages/models.py").run()
    at.radio(key="teacher_mode").set_value("train one now").run()
    at.switch_page("pages/distill.py").run()
    assert not errors(at) and not launch_disabled(at)
    assert store.list_runs() == []


def test_the_preset_in_use_is_highlighted(store):
    at = app("pages/distill.py")
    presets = {b.label: b for b in at.button if b.key and b.key.startswith("preset_")}
    first = next(iter(PRESETS))
    assert [n for n, b in presets.items() if b.proto.type == "primary"] == [first]
    at.number_input(key="w_label").set_value(0.77).run()
    presets = {b.label: b for b in at.button if b.key and b.key.startswith("preset_")}
    assert all(b.proto.type != "primary" for b in presets.values())


def test_the_distill_draft_is_in_the_url_and_a_reload_restores_it(store):
    at = app()
    tiny_models(at)
    at.switch_page("pages/distill.py").run()
    at.number_input(key="temperature").set_value(2.5)
    at.selectbox(key="feature_kind").set_value("mse")
    at.text_input(key="run_name").set_value("my draft").run()
    params = dict(at.query_params)
    assert params["temperature"] == "2.5" and params["feature_kind"] == "mse"
    assert params["teacher"] == "small_cnn" and params["run_name"] == "my draft"
    assert "epochs" not in params  # unchanged fields keep the URL short
    # a reload: a new session with the same URL
    fresh = AppTest.from_file(APP, default_timeout=TIMEOUT)
    fresh.query_params.update(params)
    fresh.run()
    fresh.switch_page("pages/distill.py").run()
    assert not fresh.exception
    assert fresh.number_input(key="temperature").value == 2.5
    assert fresh.selectbox(key="feature_kind").value == "mse"
    assert fresh.text_input(key="run_name").value == "my draft"
    assert fresh.session_state["teacher"] == "small_cnn"
    assert fresh.session_state["layer_pairs"] == at.session_state["layer_pairs"]


def test_layers_that_cannot_be_paired_show_the_error_and_queue_nothing(store):
    at = app()
    tiny_models(at)  # the mlp student has vector layers only
    at.switch_page("pages/distill.py").run()
    at.selectbox(key="feature_kind").set_value("at").run()
    at.button(key="launch").click().run()
    assert not at.exception
    assert any("attention transfer needs 4-D" in e for e in errors(at)), errors(at)
    assert store.list_runs() == []


# ---------------------------------------------------------------------------------- the journey
def test_launch_runs_and_compare(store):
    at = app()
    tiny_models(at)
    at.switch_page("pages/distill.py").run()
    at.number_input(key="epochs").set_value(1)
    at.text_input(key="seeds").set_value("2")
    at.text_input(key="run_name").set_value("tiny kd")
    at.text_input(key="run_tags").set_value("demo, kd")
    at.button(key="launch").click().run()
    assert not at.exception and not errors(at), errors(at)
    launched = at.session_state["launched"]
    assert len(launched) == 2
    assert [store.get_run(r)["name"] for r in launched] == ["tiny kd · seed 0", "tiny kd · seed 1"]
    assert store.get_run(launched[1])["tags"] == ["demo", "kd"]

    started = time.monotonic()
    runs = wait_until_idle(store, timeout=90)
    assert time.monotonic() - started < 90
    by_id = {r["id"]: r for r in runs}
    assert all(by_id[r]["status"] == "completed" for r in launched), [
        (r["status"], r["error"]) for r in runs
    ]
    assert sorted(by_id[r]["config"]["seed"] for r in launched) == [0, 1]
    assert sum(r["role"] == "teacher" for r in runs) == 1  # the seeds share one teacher

    at.button(key="open_runs").click().run()
    assert not at.exception and not errors(at)
    assert at.title[0].value == "Runs"
    assert at.selectbox(key="runs_selected").value == launched[0]  # the new run, selected
    table = at.dataframe[0].value
    assert set(launched) <= set(table["id"]) and set(table["status"]) == {"completed"}
    assert table.set_index("id").loc[launched[0], "shown as"] == "tiny kd · seed 0"
    at.switch_page("pages/runs.py")  # AppTest stays on the page it ran before st.switch_page
    at.selectbox(key="runs_selected").set_value(launched[1]).run()
    at.selectbox(key="runs_selected").set_value(launched[0]).run()
    assert {"run_losses", "run_accuracy"} <= {c.key for c in at.get("plotly_chart")}
    assert {"run_download_checkpoint", "run_download_csv"} <= {
        d.key for d in at.get("download_button")
    }

    at.text_input(key=f"run_name_{launched[0]}").set_value("first")
    at.text_input(key=f"run_tags_{launched[0]}").set_value("tiny, demo")
    at.button(key="run_rename_save").click().run()
    assert store.get_run(launched[0])["name"] == "first"
    assert store.get_run(launched[0])["tags"] == ["tiny", "demo"]
    at.run()
    assert at.selectbox(key="runs_selected").value == launched[0]  # no jump after a rename
    assert at.query_params["run"] in (launched[0], [launched[0]])

    at.multiselect(key="runs_compare_pick").set_value(launched).run()
    at.button(key="open_compare").click().run()
    assert not at.exception
    assert at.title[0].value == "Compare"
    assert at.multiselect(key="compare_runs").value == launched
    assert {"compare_accuracy", "compare_losses"} <= {c.key for c in at.get("plotly_chart")}


def test_delete_needs_a_confirmation(store):
    from workbench.config.run_config import LossWeights, RunConfig

    run_id = store.create_run(RunConfig(weights=LossWeights(1, 0, 0, 0)), status="failed")
    store.update_run(run_id, error="boom: something to fix")
    at = app("pages/runs.py")
    assert any("boom: something to fix" in e for e in errors(at))
    at.button(key="run_delete").click().run()
    assert store.has_run(run_id)
    at.button(key="run_delete_no").click().run()
    assert store.has_run(run_id)
    at.button(key="run_delete").click().run()
    at.button(key="run_delete_yes").click().run()
    assert not at.exception
    assert not store.has_run(run_id)
    assert any("No runs yet" in i.value for i in at.info)


def _scratch(epochs: int = 1):
    from workbench.config.run_config import LossWeights, RunConfig

    return RunConfig(student="mlp", weights=LossWeights(1, 0, 0, 0), epochs=epochs, device="cpu")


def test_an_interrupted_run_can_be_restarted(store):
    run_id = store.create_run(_scratch(), name="lost", status="interrupted")
    at = app("pages/runs.py")
    at.button(key="run_restart").click().run()
    assert not at.exception and not errors(at)
    runs = wait_until_idle(store)
    (new,) = [r for r in runs if r["id"] != run_id]
    assert new["status"] == "completed" and new["name"] == "lost"
    at.run()
    assert at.selectbox(key="runs_selected").value == new["id"]


def test_an_interrupted_run_resumes_from_its_checkpoint(store):
    import threading

    from workbench.training.loop import run

    config = _scratch(epochs=3)
    run_id = store.create_run(config, name="stopped")
    stop = threading.Event()
    run(
        config,
        store,
        on_step=lambda e: e["phase"] == "epoch" and stop.set(),
        stop=stop,
        run_id=run_id,
    )
    store.update_run(run_id, status="interrupted")
    at = app("pages/runs.py")
    at.selectbox(key="runs_selected").select(run_id).run()
    at.button(key="run_resume").click().run()
    assert not at.exception and not errors(at)
    (record,) = wait_until_idle(store)
    assert record["id"] == run_id and record["status"] == "completed"
    assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2, 3]
    assert record["executions"] == 2  # the first start, and the resume


def test_a_run_shows_its_gradient_shares_and_a_term_that_barely_acts(store):
    from workbench.config.run_config import LossWeights, RunConfig

    config = RunConfig(weights=LossWeights(0.3, 0.3, 0.2, 0.2), device="cpu")
    run_id = store.create_run(config, status="completed")
    store.set_history(
        run_id,
        [
            {"step": s, "epoch": 1, "time": s, "label": 1.0, "response": 1.0, "feature": 1.0,
             "relation": 1.0, "total": 1.0, "g_label": 0.5, "g_response": 0.4,
             "g_feature": 0.095, "g_relation": 0.005}
            for s in range(10, 110, 10)
        ],
    )  # fmt: skip
    at = app("pages/runs.py")
    at.selectbox(key="runs_selected").select(run_id).run()
    assert not at.exception
    assert "run_shares" in {c.key for c in at.get("plotly_chart")}
    assert any("relation barely acts" in w.value for w in at.warning)


def test_a_running_run_can_be_cancelled(store):
    at = app()
    from pages._shared import manager  # the app's JobManager for this store

    run_id = manager().submit(_scratch(epochs=500))
    deadline = time.monotonic() + 30
    while store.get_run(run_id)["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    at.switch_page("pages/runs.py").run()
    assert at.selectbox(key="runs_selected").value == run_id
    at.button(key="run_cancel").click().run()
    assert not at.exception
    (record,) = wait_until_idle(store, timeout=30)
    assert record["status"] == "cancelled"


def test_edited_layer_pairs_carry_over_to_distill(store):
    at = app()
    tiny_models(at)
    editor = at.data_editor[0]
    at.session_state[editor.key] = {
        "edited_rows": {"0": {"teacher": "block1"}},
        "added_rows": [{"student": "layer2", "teacher": "block1"}],
        "deleted_rows": [1],
    }
    at.run()
    assert not at.exception and not errors(at)
    edited = (("layer1", "block1"), ("layer2", "block1"))
    assert at.session_state["layer_pairs"] == edited
    at.switch_page("pages/distill.py").run()
    assert at.session_state["layer_pairs"] == edited
    assert [tuple(row) for row in at.data_editor[0].value.to_numpy()] == list(edited)
