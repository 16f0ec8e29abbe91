"""The Search page in real Chromium (issue 22 item 7): a finished 3-trial search, linked as
``/search?search=ID``, shows its trial table and Optuna's Plotly figures.

The search is tiny (digits, a small_cnn teacher of 1 epoch, mlp students of 2 epochs) and
driven in-process before the server starts; every wait is on the page, not on a clock. The
screenshot goes to tests/artifacts/search-finished.png."""

from __future__ import annotations

import os

import pytest

from tests.browser_harness import ARTIFACTS, CHROMIUM, AppServer, assert_no_exception, wait_idle
from tests.test_search_page import finished_search

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run the browser tests",
    ),
]

WAIT_MS = 180_000


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A store with alice's finished 3-trial search and a server on it as alice."""
    home = tmp_path_factory.mktemp("search-browser") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDWB_HOME", str(home))
        search = finished_search(home, trials=3)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = AppServer(home, ARTIFACTS / "streamlit-search.log", env={"KDWB_USER": "alice"})
    try:
        server.wait_healthy()
        yield server, search
    finally:
        server.stop()


def test_a_finished_search_shows_its_trials_and_figures(lab, browser):
    server, search = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/search?search={search['id']}")
    page.locator(".st-key-search_history .js-plotly-plot").wait_for(timeout=WAIT_MS)
    tables = page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]')
    tables.first.wait_for(timeout=WAIT_MS)
    wait_idle(page)
    assert_no_exception(page)
    main = page.locator('[data-testid="stMain"]')
    text = main.inner_text()
    assert "3 of 3 trials finished" in text
    assert "Result on test" in text and "McNemar p" in text
    assert "not found" not in text
    assert page.locator(".js-plotly-plot").count() >= 2  # history, parallel coordinates, ...
    # The trial table comes first; the grid draws on a canvas, its hidden accessible table
    # carries the same cells.
    cells = tables.first.evaluate("el => el.textContent")
    assert "validation accuracy" in cells and "temperature" in cells, cells[:500]
    assert "complete" in cells or "pruned" in cells
    assert "search=" + search["id"] in page.url  # the link's state stays in the URL
    page.screenshot(path=str(ARTIFACTS / "search-finished.png"), full_page=True)
    tables.first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "search-trials.png"))
    page.close()
