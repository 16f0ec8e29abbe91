"""The Runs page (issue 19): a suite column and filter, key columns first, "—" for a metric that
does not exist yet, and a URL that holds the page's own state only (no draft of Distill, no
entry added to the browser's history by merely opening a page)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.test_compare_page import fabricate_run
from workbench.config.run_config import RunConfig
from workbench.storage.store import ACTIVE, Store
from workbench.ui.naming import ACCURACY_METRIC, EPOCH_METRIC

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60
DRAFT_ONLY = ("epochs", "run_name", "temperature", "teacher", "student", "w_label")


@pytest.fixture
def store(home, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    s = Store(home)
    yield s
    deadline = time.monotonic() + 60
    while s.list_runs(status=ACTIVE) and time.monotonic() < deadline:
        time.sleep(0.2)
    st.cache_resource.clear()
    s.close()


def suite_of(store: Store, name: str, run_ids: list[str], created_at: float) -> str:
    suite_id = f"suite-{name.replace(' ', '-')}"
    store.save_suite(
        {"id": suite_id, "owner": "", "name": name, "created_at": created_at, "runs": []}
    )
    for run_id in run_ids:
        store.update_run(run_id, suite=suite_id)
    return suite_id


def runs_page(params: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(params or {})
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def table(at: AppTest):
    return at.dataframe[0]


def param(at: AppTest, key: str) -> str | None:
    value = at.query_params.get(key)
    return value[0] if isinstance(value, list) else value


@pytest.fixture
def suites(store):
    a = fabricate_run(store, "", seed=0)
    b = fabricate_run(store, "", seed=1)
    loose = fabricate_run(store, "loose")
    return {
        "a": (a, suite_of(store, "short suite", [a], 1.0)),
        "b": (b, suite_of(store, "long suite", [b], 2.0)),
        "loose": loose,
    }


def test_the_table_names_each_runs_suite_and_filters_by_it(suites):
    (a, suite_a), (b, suite_b) = suites["a"], suites["b"]
    at = runs_page()
    shown = table(at).value.set_index("id")
    assert shown.loc[a, "suite"] == "short suite" and shown.loc[b, "suite"] == "long suite"
    assert shown.loc[suites["loose"], "suite"] == ""
    at.selectbox(key="runs_suite").set_value(suite_b).run()
    assert list(table(at).value["id"]) == [b]
    assert param(at, "suite") == suite_b
    # a link restores the filter; a link to an unknown suite is said to be ignored
    assert list(table(runs_page({"suite": suite_a})).value["id"]) == [a]
    stale = runs_page({"suite": "suite-nope"})
    assert len(table(stale).value) == 3
    assert any("suite=suite-nope" in i.value for i in stale.info)


def test_the_key_columns_come_first(suites):
    order = list(table(runs_page()).proto.column_order)
    assert order[:4] == ["shown as", "status", ACCURACY_METRIC, EPOCH_METRIC]
    assert "suite" in order and order.index("suite") < order.index("config")


def test_a_run_without_an_accuracy_shows_a_dash(store):
    config = RunConfig(teacher="small_cnn", student="mlp")
    run_id = store.create_run(config, status="cancelled")  # never finished an epoch
    at = runs_page()
    assert table(at).value.set_index("id")[ACCURACY_METRIC].isna()[run_id]
    assert table(at).proto.placeholder == "—"  # what the grid shows instead of "None"


def test_the_runs_url_holds_no_distill_draft(store):
    fabricate_run(store, "done")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/distill.py").run()
    at.number_input(key="epochs").set_value(60)
    at.text_input(key="run_name").set_value("my draft").run()
    assert param(at, "epochs") == "60"  # Distill's own URL keeps its draft
    at.query_params.clear()  # as the sidebar's link does (AppTest's switch_page keeps them)
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    assert not set(DRAFT_ONLY) & set(at.query_params), dict(at.query_params)
    at.slider(key="runs_smooth").set_value(0.5).run()
    assert param(at, "smooth") == "0.5"
    assert not set(DRAFT_ONLY) & set(at.query_params), dict(at.query_params)
    at.switch_page("pages/distill.py").run()  # the draft is still the session's
    assert at.number_input(key="epochs").value == 60


def test_opening_a_page_adds_nothing_to_its_url(store):
    first = fabricate_run(store, "first")
    second = fabricate_run(store, "second")
    at = runs_page()
    # the newest run is shown, and the bare URL already says so: no rewrite (no history entry)
    assert at.session_state["runs_run"] == second
    assert "run" not in at.query_params, dict(at.query_params)
    at.selectbox(key="runs_selected").set_value(first).run()
    assert param(at, "run") == first  # a choice goes into the URL


# ------------------------------------------------------------------------------ the browser
browser_only = pytest.mark.skipif(
    not os.path.exists("/usr/bin/chromium"), reason="no Chromium at /usr/bin/chromium"
)


@pytest.mark.browser
@browser_only
def test_back_from_ablations_takes_one_press_and_runs_fit_1440(tmp_path, browser):
    from tests.browser_harness import AppServer, assert_no_exception, wait_idle

    home = tmp_path / "home"
    store = Store(home)
    run_ids = [fabricate_run(store, f"run {i}", seed=i) for i in range(2)]
    suite_of(store, "a suite", run_ids, time.time())
    store.update_run(run_ids[0], metrics={})  # a run without an accuracy
    store.close()
    app = AppServer(home, tmp_path / "streamlit.log")
    try:
        app.wait_healthy()
        page = browser.new_page(viewport={"width": 1440, "height": 1000})

        def heading(title: str) -> None:
            page.wait_for_function(
                "t => document.querySelector('h1') && document.querySelector('h1')"
                ".innerText.includes(t)",
                arg=title,
                timeout=90_000,
            )
            wait_idle(page)

        page.goto(f"{app.url}/runs")
        heading("Runs")
        page.screenshot(path=str(tmp_path / "runs-1440.png"), full_page=True)
        grid = page.locator('[data-testid="stDataFrame"]').first.inner_text()
        assert "Runs" in page.locator("h1").first.inner_text() and grid is not None
        nav = page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_role("link", name="Ablations").click()
        heading("Ablations")
        page.go_back()
        heading("Runs")
        assert "/runs" in page.url and "/ablations" not in page.url
        assert_no_exception(page)
        page.close()
    finally:
        app.stop()
