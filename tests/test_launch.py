"""workbench.ui.draft: the Distill draft's checks, where each message goes, and the launch."""

from __future__ import annotations

import os
import tempfile

import pytest

from workbench.config.run_config import COMPONENTS, PRESETS, RunConfig
from workbench.errors import CheckpointError, DatasetUnavailableError, IncompatibleModelsError
from workbench.ui import draft as launch


def draft(**changes):
    """A valid draft as the app's session holds it (small_cnn -> mlp on digits)."""
    defaults = RunConfig(teacher="small_cnn", student="mlp")
    values = {
        "dataset": "digits",
        "data_path": "",
        "teacher": "small_cnn",
        "student": "mlp",
        "teacher_mode": launch.TEACHER_MODES[0],
        "teacher_epochs": 1,
        "teacher_run": "",
        "layer_pairs": (),
        "temperature": defaults.temperature,
        "feature_kind": defaults.feature_kind,
        "relation_kind": defaults.relation_kind,
        "weighting": defaults.weighting,
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.001,
        "seeds": "1",
        "device": "auto",
    }
    values |= {f"w_{c}": v for c, v in next(iter(PRESETS.values())).as_dict().items()}
    return values | changes


def test_a_valid_draft_gives_one_config_per_seed():
    configs, errors = launch.check_draft(draft(seeds="0, 4"))
    assert errors == {}
    assert [c.seed for c in configs] == [0, 4]
    assert configs[0].temperature == 4.0 and configs[0].epochs == 2


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0])
def test_an_invalid_temperature_is_an_error_not_a_default(temperature):
    configs, errors = launch.check_draft(draft(temperature=temperature))
    assert configs == []
    assert (
        set(errors) == {"temperature"}
        and "temperature must be a number from 0.05 to 100" in errors["temperature"]
    )
    routed = launch.route_errors(errors)
    assert routed == {"kinds": [errors["temperature"]]}  # under the temperature's row, once


def test_every_invalid_field_is_reported_next_to_its_widget():
    bad = draft(epochs=0, batch_size=0, lr=-1.0, seeds="x", w_label=-1.0)
    _, errors = launch.check_draft(bad)
    assert {"epochs", "batch_size", "lr", "seeds", "weights"} <= set(errors)
    routed = launch.route_errors(errors)
    assert len(routed["training"]) == 3 and routed["seeds"] == [errors["seeds"]]
    assert routed["weights"] == [errors["weights"]]
    placed = [m for messages in routed.values() for m in messages]
    assert sorted(placed) == sorted(errors.values())  # each message exactly once


def test_a_rejected_upload_blocks_launch_instead_of_training_a_teacher():
    upload = launch.TEACHER_MODES[2]
    _, errors = launch.check_draft(
        draft(teacher_mode=upload, teacher_upload_error="not a state dict of small_cnn")
    )
    assert "rejected" in errors["teacher_run"] and "not a state dict" in errors["teacher_run"]
    routed = launch.route_errors(errors)
    assert routed["launch"][0].startswith("Change this on the Models page: ")
    _, none_yet = launch.check_draft(draft(teacher_mode=upload))
    assert "no teacher checkpoint uploaded" in none_yet["teacher_run"]
    # an accepted upload (a teacher run) or training one now can be launched
    assert launch.check_draft(draft(teacher_mode=upload, teacher_run="abc"))[1] == {}
    assert launch.check_draft(draft(teacher_upload_error="old"))[1] == {}


def test_a_half_filled_pair_row_blocks_launch():
    _, errors = launch.check_draft(draft(layer_pairs_error="layer pair row 2 has no teacher"))
    assert launch.route_errors(errors) == {"pairs": ["layer pair row 2 has no teacher"]}


def test_preflight_routes_pair_problems_to_the_pairs_and_keeps_other_errors_whole():
    config = RunConfig(teacher="small_cnn", student="mlp")

    def incompatible(_):
        raise IncompatibleModelsError("at needs conv layers on both sides")

    def no_data(_):
        raise DatasetUnavailableError("cifar10 is not on disk: run ...")

    assert launch.launch_errors(lambda: incompatible(config)) == (
        None,
        {"layer_pairs": "at needs conv layers on both sides"},
        None,
    )
    result, errors, problem = launch.launch_errors(lambda: no_data(config))
    assert result is None and errors == {} and isinstance(problem, DatasetUnavailableError)
    assert launch.launch_errors(lambda: ["run0"]) == (["run0"], {}, None)


def test_launch_runs_names_and_tags_each_run():
    configs = [RunConfig(seed=s) for s in (0, 1)]
    calls = []

    def submit(submissions):
        calls.extend((s.config.seed, s.name, list(s.tags)) for s in submissions)
        return [f"run{s.config.seed}" for s in submissions]

    ids = launch.launch_runs(configs, submit, name=" at sweep ", tags="kd, at, kd,")
    assert ids == ["run0", "run1"]
    assert calls == [
        (0, "at sweep · seed 0", ["kd", "at"]),
        (1, "at sweep · seed 1", ["kd", "at"]),
    ]
    assert launch.run_names("solo", [3]) == ["solo"] and launch.run_names("", [0, 1]) == ["", ""]


def test_pairs_reset_only_when_the_models_change():
    state = {}
    assert launch.reset_pairs(state, ("a", "b", "digits", ""), [("s1", "t1")])
    assert state["layer_pairs"] == (("s1", "t1"),)
    state["layer_pairs"] = (("s2", "t2"),)  # edited by the user
    assert not launch.reset_pairs(state, ("a", "b", "digits", ""), [("s1", "t1")])
    assert state["layer_pairs"] == (("s2", "t2"),)
    assert launch.reset_pairs(state, ("a", "c", "digits", ""), [])
    assert state["layer_pairs"] == ()


def test_the_upload_message_names_the_uploaded_file():
    temp = os.path.join(tempfile.gettempdir(), "tmpab12cd.pt")
    exc = CheckpointError(f"{temp} is not a state dict: save model.state_dict()")
    assert launch.upload_message(exc, "teacher.pt") == (
        "teacher.pt is not a state dict: save model.state_dict()"
    )
    bare = CheckpointError("tmpckj0fic8.pt is not a readable PyTorch state dict (IndexError)")
    assert launch.upload_message(bare, "mine.pth").startswith("mine.pth is not a readable")


def test_draft_key_changes_with_the_draft():
    assert launch.draft_key(draft()) == launch.draft_key(draft())
    assert launch.draft_key(draft()) != launch.draft_key(draft(temperature=2.0))
    assert launch.draft_key(draft()) != launch.draft_key(draft(seeds="2"))
    assert {f"w_{c}" for c in COMPONENTS} <= set(draft())


def test_a_run_name_of_two_lines_blocks_launch_like_on_the_command_line():
    configs, errors = launch.check_draft(draft(run_name="two\nlines"))
    assert configs == [] and set(errors) == {"run_name"}
    assert errors["run_name"].startswith("name must be one line of printable text")
    assert launch.route_errors(errors) == {"name": [errors["run_name"]]}  # under the name field
    assert launch.check_draft(draft(run_name="  my run  "))[1] == {}


# ---------------------------------------------------------------------------------- issue 19
def test_messages_name_the_fields_as_the_form_does():
    """The form says Learning rate, Batch size, Label weight: so do its messages."""
    _, errors = launch.check_draft(draft(lr=-1.0, batch_size=0, w_label=-1.0, epochs=None))
    assert errors["lr"] == "Learning rate (lr) must be a number from 1e-06 to 1, got -1"
    assert errors["batch_size"].startswith("Batch size (batch_size) must be a whole number")
    assert errors["weights"].startswith("Label weight (weights.label) must be a number")
    assert errors["epochs"] == "Epochs must be a whole number from 1 to 500; the field is empty"
    for message in errors.values():
        assert not message.startswith(("lr ", "batch_size ", "weight label", "epochs "))
    assert launch.form_message("unknown feature kind 'x'") == "unknown feature kind 'x'"


def test_the_launch_slot_shows_only_the_latest_outcome():
    queued = {"kind": "runs", "ids": ["r1"], "for": "draft A"}
    shown = launch.launch_message
    assert shown(queued, "draft A", blocked=False, refused=False) == queued
    assert shown(queued, "draft B", blocked=False, refused=False) == queued  # still the latest
    # a refused click, or a draft changed into one that cannot launch, replaces it
    assert shown(queued, "draft A", blocked=False, refused=True) == launch.NOTHING_QUEUED
    assert shown(queued, "draft B", blocked=True, refused=False) == launch.NOTHING_QUEUED
    assert shown(None, "draft A", blocked=True, refused=False) == launch.NOTHING_QUEUED
    assert shown(None, "draft A", blocked=False, refused=False) is None
    # launched (the demo preset) while the draft had errors: what was queued is said
    assert shown(queued, "draft A", blocked=True, refused=False) == queued


@pytest.fixture
def distill(home, monkeypatch):
    """The Distill page in AppTest, on a store whose app queues runs but runs none of them."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP, ROOT, TIMEOUT, tiny_models
    from workbench.storage.store import Store

    monkeypatch.syspath_prepend(str(ROOT))
    settings = home.parent / "workbench.toml"
    settings.write_text('[workers]\napp_executes = "none"\n')
    monkeypatch.setenv("KDWB_CONFIG", str(settings))
    store = Store(home)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    tiny_models(at)
    at.switch_page("pages/distill.py").run()
    assert not at.exception, [e.value for e in at.exception]
    yield at, store
    st.cache_resource.clear()
    store.close()


def launch_slot(at) -> tuple[list[str], list[str]]:
    return [s.value for s in at.success], [c.value for c in at.caption if "queued" in c.value]


def test_a_failing_launch_replaces_the_queued_message(distill):
    at, store = distill
    at.number_input(key="epochs").set_value(1).run()
    at.button(key="launch").click().run()
    assert launch_slot(at) == (["Queued 1 run."], [])
    at.selectbox(key="feature_kind").set_value("at").run()  # mlp has no 4-D layers
    at.button(key="launch").click().run()
    assert not at.exception
    assert any("attention transfer needs 4-D" in e.value for e in at.error)
    assert launch_slot(at) == ([], ["Nothing was queued."])  # not above an old "Queued"
    assert len(store.list_runs(role="student")) == 1


def test_a_draft_made_invalid_after_a_launch_shows_one_message(distill):
    at, _ = distill
    at.number_input(key="epochs").set_value(1).run()
    at.button(key="launch").click().run()
    assert launch_slot(at)[0] == ["Queued 1 run."]
    at.number_input(key="lr").set_value(-1.0).run()
    assert [e.value for e in at.error] == [
        "Learning rate (lr) must be a number from 1e-06 to 1, got -1"
    ]
    assert launch_slot(at) == ([], ["Nothing was queued."])


def test_the_demo_ablation_is_one_click_away(distill):
    from workbench.ablation.suites import demo_preset

    at, store = distill
    preset = demo_preset()
    assert any(preset.shows in c.value for c in at.caption)  # what it shows, beside it
    at.button(key="launch_demo").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (suite,) = store.list_suites()
    assert suite["base"] == preset.config.to_dict() and suite["seeds"] == preset.seeds
    assert len(suite["runs"]) == preset.runs
    (message,) = launch_slot(at)[0]
    assert message.startswith("Queued an ablation suite") and str(preset.runs) in message
    assert at.session_state["last_suite"] == suite["id"]  # Ablations opens on it
