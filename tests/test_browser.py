"""The main journey in real Chromium: pages load, a teacher trains, a run distils and compares."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.browser_harness import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_FLAGS,
    AppServer,
    assert_no_exception,
    wait_idle,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run the browser tests (.ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    app = AppServer(tmp_path_factory.mktemp("browser-home"), ARTIFACTS / "streamlit.log")
    try:
        app.wait_healthy()
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


@pytest.mark.parametrize("path", ["", "distill", "runs", "compare"])
def test_every_page_loads_without_an_exception(server, page, path):
    page.goto(f"{server.url}/{path}")
    wait_idle(page)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / f"page-{path or 'models'}.png"), full_page=True)


# ------------------------------------------------------------------------------ the journey
def _pick(page, key: str, option: str) -> None:
    """Choose ``option`` (its name, as the options read "name: description") in selectbox ``key``."""
    page.locator(f".st-key-{key} [role=combobox]").click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(option)}\b")).first.click()
    wait_idle(page)


def _number(page, key: str, value: int | float) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def _nav(page, title: str) -> None:
    """Switch page through the sidebar, keeping this browser session (and its choices)."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.wait_for_function(
        f"() => document.querySelector('h1') && document.querySelector('h1').innerText.includes('{title}')"
    )
    wait_idle(page)


def _record_timing(name: str, seconds: float) -> None:
    path = ARTIFACTS / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = round(seconds, 2)
    path.write_text(json.dumps(data, indent=2))


def test_main_journey(server, browser):
    """Train a tiny teacher, distil a student, watch it finish, compare it, ablate it."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.goto(server.url)
    wait_idle(page)

    # Models: a tiny teacher, trained now with live progress.
    _pick(page, "teacher", "small_cnn")
    _pick(page, "student", "mlp")
    _number(page, "teacher_epochs", 1)
    page.locator(".st-key-train_teacher button").click()
    page.get_by_text("Teacher trained").wait_for(timeout=120_000)
    wait_idle(page)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-1-models.png"), full_page=True)

    # Distill: the course's hybrid loss, launched; time to the first live metric.
    _nav(page, "Distill")
    _number(page, "epochs", 15)  # long enough that the second session below opens mid-run
    started = time.monotonic()
    page.locator(".st-key-launch button").click()
    page.get_by_text(re.compile(r"Queued 1 run")).wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"(step \d+/\d+|completed)")).first.wait_for(timeout=120_000)
    _record_timing("launch_to_first_live_metric_s", time.monotonic() - started)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-2-distill.png"), full_page=True)

    # A second browser session sees the same run, and reloading it loses nothing.
    other = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    other.goto(f"{server.url}/runs")
    other.locator('[data-testid="stProgress"]').first.wait_for(timeout=60_000)
    seen_running = (
        other.locator('[data-testid="stProgress"]').filter(has_text="running").count() > 0
    )
    _record_timing("second_session_saw_the_run_running", float(seen_running))
    other.locator('[data-testid="stProgress"]').filter(
        has_text=re.compile("running|completed")
    ).first.wait_for(timeout=30_000)
    other.reload()
    wait_idle(other)
    other.locator('[data-testid="stProgress"]').filter(has_text="completed").first.wait_for(
        timeout=120_000
    )
    other.context.close()

    # Runs: it finished.
    _nav(page, "Runs")
    page.locator('[data-testid="stProgress"]').filter(has_text="completed").first.wait_for(
        timeout=120_000
    )
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-3-runs.png"), full_page=True)

    # Compare: the run's curves, opened from Runs as a user would.
    _nav(page, "Runs")
    page.locator(".st-key-runs_compare_pick [role=combobox]").click()
    page.get_by_role("option", name=re.compile("student")).first.click()
    page.keyboard.press("Escape")
    wait_idle(page)
    page.locator(".st-key-open_compare button").click()
    page.wait_for_function(
        "() => document.querySelector('h1') && document.querySelector('h1').innerText.includes('Compare')"
    )
    wait_idle(page)
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-4-compare.png"), full_page=True)

    # Ablate: one small leave-one-out suite from the same form.
    _nav(page, "Distill")
    _number(page, "epochs", 1)
    _number(page, "ablation_seeds", 2)
    page.get_by_role("button", name="Launch ablation suite").click()
    page.get_by_text(re.compile(r"Queued an ablation suite")).wait_for(timeout=60_000)
    page.locator(".st-key-open_ablations button").click()
    page.wait_for_function(
        "() => document.querySelector('h1') && document.querySelector('h1').innerText.includes('Ablations')"
    )
    page.get_by_text(re.compile(r"12 of 12 runs finished")).wait_for(timeout=300_000)
    wait_idle(page)
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert page.get_by_text("Contribution of each component").count() == 1
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-5-ablations.png"), full_page=True)
    context.close()


def test_runs_page_with_50_runs(server, page):
    """Render time of Runs with 50 runs in the store (recorded in docs/BENCHMARKS.md)."""
    from workbench.config import LossWeights, RunConfig
    from workbench.store import Store

    store = Store(server.home)
    config = RunConfig(teacher="small_cnn", student="mlp", weights=LossWeights(1, 0, 0, 0))
    have = len(store.list_runs())
    for i in range(max(0, 50 - have)):
        run_id = store.create_run(config.replace(seed=i), name=f"fabricated {i}")
        store.update_run(
            run_id,
            status="completed",
            finished_at=time.time(),
            seconds=1.0,
            metrics={"val_acc": 0.5},
        )
        store.set_epochs(
            run_id,
            [{"epoch": 1, "val_acc": 0.5, "agreement": None, "train_loss": 1.0, "time": 1.0}],
        )
    started = time.monotonic()
    page.goto(f"{server.url}/runs")
    wait_idle(page, settle_ms=300)
    _record_timing("runs_page_50_runs_s", time.monotonic() - started)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "runs-50.png"), full_page=True)


def test_deep_link_on_a_fresh_server_goes_through_the_app(tmp_path, browser):
    """A first request to /compare must not run the page alone (Streamlit's pages/ fallback)."""
    app = AppServer(tmp_path / "home", ARTIFACTS / "streamlit-deep-link.log")
    try:
        app.wait_healthy()
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{app.url}/compare")
        wait_idle(page)
        page.wait_for_function(
            "() => document.querySelector('h1') && document.querySelector('h1').innerText.includes('Compare')"
        )
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Ablations" in nav and "_shared" not in nav and "app" not in nav.split()
        assert_no_exception(page)
        page.close()
    finally:
        app.stop()
