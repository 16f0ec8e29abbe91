"""AppTests of the Search page (issue 22 item 7): the empty state, a search started from the
Distill draft and watched to its end, the figures and trial table of a finished search, a bad
space as one line, a link to an unknown search, the best config opened in Distill, and another
user's private search kept out of sight.

Local mode as ``KDWB_USER=alice`` (not the OS user, so not an admin). The finished search is
prepared in-process (``workbench.search.driver.drive`` beside a worker thread) once per module;
the runs are tiny (digits, a small_cnn teacher of 1 epoch, mlp students of 2 epochs).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from workbench.config.run_config import LossWeights, RunConfig
from workbench.lab.identity import User
from workbench.search.searches import create_search, search_runs
from workbench.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60  # seconds per script run: the first one imports torch
STALL_S = 180.0  # a wait fails only when nothing moved for this long (a loaded machine is slow)
TINY = RunConfig(
    dataset="digits",
    teacher="small_cnn",
    student="mlp",
    epochs=2,
    teacher_epochs=1,
    weights=LossWeights(0.5, 0.5, 0.0, 0.0),
)
TINY_DRAFT = {  # the same, as the Distill draft holds it
    "teacher": "small_cnn",
    "student": "mlp",
    "epochs": 2,
    "teacher_epochs": 1,
    "w_label": 0.5,
    "w_response": 0.5,
    "w_feature": 0.0,
    "w_relation": 0.0,
    "layer_pairs": (),  # paired automatically (the Models page left the default models' pairs)
}


def finished_search(home: Path, *, trials: int, owner: str = "alice", name: str = "tiny") -> dict:
    """A search of ``TINY`` over weights and temperature, driven to its end in this process
    with a worker thread that trains its runs; returns its record."""
    from workbench.runs.worker import worker_thread
    from workbench.search.driver import drive

    store = Store(home)
    search = create_search(
        store, TINY, name=name, over="weights,temperature", trials=trials, retrain_seeds=1,
        owner=owner,
    )  # fmt: skip
    try:
        with worker_thread(store):
            return drive(store, search["id"], user=User(owner), poll_s=0.1)
    finally:
        store.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A store with alice's finished 2-trial search and carol's private one (never driven)."""
    home = tmp_path_factory.mktemp("search-page") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDWB_HOME", str(home))
        search = finished_search(home, trials=2)
        store = Store(home)
        secret = create_search(
            store, TINY, name="carol's secret", over="temperature", trials=2, owner="carol",
            private=True,
        )  # fmt: skip
        store.close()
    return home, search, secret


@pytest.fixture
def alice(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `streamlit run` puts app.py's folder on sys.path
    monkeypatch.setenv("KDWB_USER", "alice")
    yield
    st.cache_resource.clear()  # the next test gets a fresh job manager


@pytest.fixture
def on_shared(shared, alice, monkeypatch):
    monkeypatch.setenv("KDWB_HOME", str(shared[0]))
    return shared


def open_search(params: dict[str, str] | None = None, draft: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(params or {})
    at.run()
    for key, value in (draft or {}).items():
        at.session_state[key] = value
    at.switch_page("pages/search.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def stored_runs(home: Path, search_id: str) -> list[dict]:
    store = Store(home)
    try:
        return search_runs(store, search_id)
    finally:
        store.close()


def stored_searches(home: Path) -> set[str]:
    store = Store(home)
    try:
        return {s["id"] for s in store.values("search:")}
    finally:
        store.close()


def frame(at: AppTest, column: str):
    """The first table drawn with ``column`` (AppTest's tables carry no key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in at.get(kind))


def test_the_empty_state_invites_a_search(home, alice):
    at = open_search()
    assert not at.error
    assert "No search yet" in texts(at, "info")
    assert at.button(key="search_start").disabled is False
    assert not [s for s in at.selectbox if s.key == "search_pick"]


def test_a_search_started_from_the_draft_runs_to_its_result(home, alice):
    at = open_search(draft=TINY_DRAFT)
    at.number_input(key="search_trials").set_value(2)
    at.number_input(key="search_retrain").set_value(1)
    at.button(key="search_start").click().run()
    assert not at.exception and not at.error, texts(at, "error")
    store = Store(home)
    try:
        search_id = at.selectbox(key="search_pick").value
        assert search_id and store.get(f"search:{search_id}")["owner"] == "alice"
        seen, moved = None, time.monotonic()
        while "Result on test" not in texts(at, "subheader"):
            state = [
                (r["status"], len(store.epochs(r["id"]))) for r in search_runs(store, search_id)
            ]
            if state != seen:
                seen, moved = state, time.monotonic()
            assert time.monotonic() - moved < STALL_S, f"the search made no progress: {state}"
            assert not store.get(f"search:{search_id}").get("error")
            time.sleep(0.5)
            at.run()
        assert not at.exception and not at.error, texts(at, "error")
        assert len(frame(at, "run ids")) == 2
        assert "2 of 2 trials finished" in str(at.get("progress")[0].proto.text)
    finally:
        store.close()


def test_a_finished_search_shows_its_figures_trials_and_result(on_shared):
    _, search, _ = on_shared
    at = open_search({"search": search["id"]})
    assert not at.error, texts(at, "error")
    assert at.selectbox(key="search_pick").value == search["id"]
    charts = {c.key for c in at.get("plotly_chart")}
    assert {"search_history", "search_parallel", "search_contour"} <= charts, charts
    table = frame(at, "run ids")
    assert list(table["trial"]) == [0, 1] and set(table["state"]) <= {"complete", "pruned"}
    run_ids = {r["id"] for r in stored_runs(on_shared[0], search["id"])}
    for ids, link in zip(table["run ids"], table["open"], strict=True):
        assert ids and set(ids.split(", ")) <= run_ids
        assert link == f"runs?run={ids}"  # one seed per trial: its run on the Runs page
    assert "weight_label" in table.columns and "temperature" in table.columns
    labels = [m.label for m in at.metric]
    assert "best - base on test (points)" in labels and "McNemar p" in labels
    assert "noise floor" in texts(at, "info")  # the result's note
    assert frame(at, "importance")["parameter"].tolist()
    assert not [b for b in at.button if b.key in ("search_stop", "search_continue")]


def test_an_empty_space_is_one_line_error(on_shared):
    at = open_search()
    before = stored_searches(on_shared[0])
    at.multiselect(key="search_over").set_value([])
    at.button(key="search_start").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "search space is empty" in at.error[0].value
    assert "\n" not in at.error[0].value
    assert stored_searches(on_shared[0]) == before


def test_a_link_to_an_unknown_search_shows_no_other_search(on_shared):
    at = open_search({"search": "unknown"})
    assert "Search unknown not found" in texts(at, "info")
    assert at.selectbox(key="search_pick").value is None
    assert not at.dataframe and not at.get("plotly_chart")


def test_another_users_private_search_is_not_shown(on_shared):
    _, search, secret = on_shared
    at = open_search({"search": secret["id"]})
    picker = at.selectbox(key="search_pick")
    assert picker.value is None and f"Search {secret['id']} not found" in texts(at, "info")
    assert picker.options == [f"{search['name']} ({search['id']})"]


def test_open_best_in_distill_sets_the_draft(on_shared):
    _, search, _ = on_shared
    at = open_search({"search": search["id"]})
    at.button(key="search_open_best").click().run()
    assert not at.exception and at.title[0].value == "Distill"
    best = search["result"]["best"]["params"]
    assert at.session_state["w_label"] == pytest.approx(best["weight_label"])
    assert at.session_state["w_response"] == pytest.approx(best["weight_response"])
    assert at.session_state["temperature"] == pytest.approx(best["temperature"])
    assert (at.session_state["teacher"], at.session_state["student"]) == ("small_cnn", "mlp")
    assert at.session_state["epochs"] == 2


def test_stop_then_continue(home, alice):
    """Stop asks the app's driver to stop (the trial's runs go on); then Continue is offered."""
    from workbench.runs import queue as runqueue
    from workbench.search.background import driver_of
    from workbench.storage.store import ACTIVE

    at = open_search(draft=TINY_DRAFT)
    at.number_input(key="search_trials").set_value(3)
    at.button(key="search_start").click().run()
    search_id = at.selectbox(key="search_pick").value
    store = Store(home)
    try:
        assert driver_of(store, search_id) is not None  # the page that follows sees it driven
        at.button(key="search_stop").click().run()
        assert not at.exception and not at.error, texts(at, "error")
        deadline = time.monotonic() + STALL_S
        while driver_of(store, search_id) is not None:
            assert time.monotonic() < deadline, "the driver did not stop"
            time.sleep(0.2)
        at.run()
        assert "No one drives it now" in texts(at, "caption")
        assert [b for b in at.button if b.key == "search_continue"]
        for record in search_runs(store, search_id):  # nothing left training after the test
            if record["status"] in ACTIVE:
                runqueue.cancel(store, record["id"])
        deadline = time.monotonic() + STALL_S
        while any(r["status"] in ACTIVE for r in search_runs(store, search_id)):
            assert time.monotonic() < deadline, "the cancelled runs did not stop"
            time.sleep(0.2)
    finally:
        store.close()
