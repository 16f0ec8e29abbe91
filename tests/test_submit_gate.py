"""The one submit gate (issue 17): a CLI ``run`` and a Distill launch load the data and build
each model once before the run starts, and the CLI and the page refuse an invalid teacher run
with the same message (``workbench.training.teachers.check_teacher_run``, the one rule)."""

from __future__ import annotations

import io
import sys
from collections import Counter

import pytest
import torch

import workbench.ablation.suites  # noqa: F401  (imported before the counters are installed)
import workbench.distill.model_pair  # noqa: F401
import workbench.runs.job_manager  # noqa: F401
import workbench.runs.submit  # noqa: F401
from tests.test_app import app, errors, store, tiny_models, wait_until_idle  # noqa: F401
from workbench.cli import main
from workbench.data import datasets
from workbench.models import registry
from workbench.storage.store import Store
from workbench.training import loop

FAST = ["--teacher", "small_cnn", "--student", "mlp", "--epochs", "1", "--teacher-epochs", "1"]


@pytest.fixture
def counted(monkeypatch):
    """Every module's ``load_dataset`` and ``build_model`` count their calls (``("data", name)``,
    ``("model", name)``), and the loop's ``run`` records the counts at the moment a run would
    start, then ends the run at once."""
    calls: Counter = Counter()
    at_start: list[Counter] = []
    real_load, real_build = datasets.load_dataset, registry.build_model

    def load_dataset(name, *args, **kwargs):
        calls["data", name] += 1
        return real_load(name, *args, **kwargs)

    def build_model(name, *args, **kwargs):
        calls["model", name] += 1
        return real_build(name, *args, **kwargs)

    for module in list(sys.modules.values()):
        if not (getattr(module, "__name__", "") or "").startswith(("workbench", "pages")):
            continue
        if getattr(module, "load_dataset", None) is real_load:
            monkeypatch.setattr(module, "load_dataset", load_dataset)
        if getattr(module, "build_model", None) is real_build:
            monkeypatch.setattr(module, "build_model", build_model)

    def run(config, run_store, on_step=None, stop=None, run_id=None, fence=None):
        at_start.append(Counter(calls))
        return run_store.update_run(run_id, status="completed", metrics={})

    monkeypatch.setattr(loop, "run", run)
    return calls, at_start


def test_a_cli_run_loads_the_data_and_builds_each_model_once_before_it_starts(home, counted):
    calls, at_start = counted
    assert main(["run", *FAST, "--json"]) == 0
    (before,) = at_start
    assert before == {("data", "digits"): 1, ("model", "small_cnn"): 1, ("model", "mlp"): 1}


def test_a_distill_launch_loads_the_data_and_builds_each_model_once_before_it_starts(
    store,  # noqa: F811
    counted,
):
    calls, at_start = counted
    at = app()
    tiny_models(at)
    at.switch_page("pages/distill.py").run()
    at.number_input(key="epochs").set_value(1).run()
    calls.clear()  # what the pages drew so far (the Models tables) is not the launch
    at.button(key="launch").click().run()
    assert not at.exception and not errors(at), errors(at)
    (run_id,) = at.session_state["launched"]
    wait_until_idle(store)
    (before,) = at_start
    assert before == {("data", "digits"): 1, ("model", "small_cnn"): 1, ("model", "mlp"): 1}
    assert store.get_run(run_id)["status"] == "completed"


def _uploaded_teacher(into: Store) -> str:
    from workbench.training.teachers import import_uploaded_teacher

    data = datasets.load_dataset("digits")
    buffer = io.BytesIO()
    torch.save(
        registry.build_model("small_cnn", data.input_shape, data.num_classes).state_dict(), buffer
    )
    return import_uploaded_teacher(
        into, buffer.getvalue(), "cnn.pt", teacher="small_cnn", dataset="digits"
    )


def test_the_cli_and_the_distill_page_refuse_an_invalid_teacher_run_alike(
    store,  # noqa: F811
    capsys,
):
    teacher = _uploaded_teacher(store)
    at = app()
    tiny_models(at)
    at.radio(key="teacher_mode").set_value("pick a trained teacher").run()
    assert at.session_state["teacher_run"] == teacher
    store.weights_path(teacher).unlink()  # the picked teacher lost its weights meanwhile

    at.switch_page("pages/distill.py").run()
    at.button(key="launch").click().run()
    assert not at.exception
    page = [e for e in errors(at) if teacher in e]
    assert main(["run", *FAST, "--teacher-run", teacher]) == 2
    cli = capsys.readouterr().err.strip().removeprefix("error: ")
    assert page == [cli], (page, cli)
    assert cli == f"teacher_run {teacher} has no checkpoint in the store; train it again"
    assert [r["id"] for r in store.list_runs()] == [teacher]  # nothing was queued
