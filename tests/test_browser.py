"""The main journey in real Chromium: pages load, a teacher trains, a run distils and compares."""

from __future__ import annotations

import os

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
