from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _no_run_left_training():
    """Runs that pages or tests queued and left training are stopped and joined when the
    session ends: a daemon thread inside torch while the interpreter exits aborts it."""
    yield
    from workbench.runs.job_manager import JobManager

    JobManager.stop_all()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A temporary store home (KDWB_HOME), so no test touches ./cache."""
    path = tmp_path / "home"
    monkeypatch.setenv("KDWB_HOME", str(path))
    return path


@pytest.fixture
def store(home):
    from workbench.storage.store import Store

    s = Store(home)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright, headless, for the real-browser tests of a module
    (those modules skip themselves when /usr/bin/chromium is missing)."""
    from playwright.sync_api import sync_playwright

    from tests.browser_harness import CHROMIUM, CHROMIUM_FLAGS

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def downloads(monkeypatch):
    """The data of every download button a page draws, by its key, caught on its way in
    (AppTest has no download endpoint). Both ``st.download_button`` and a container's
    ``.download_button`` are caught."""
    import streamlit as st
    from streamlit.delta_generator import DeltaGenerator

    captured = {}
    method = DeltaGenerator.download_button

    def spy(self, label, data, *args, **kwargs):
        captured[kwargs.get("key")] = data
        return method(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", spy)
    monkeypatch.setattr(st, "download_button", lambda *a, **kw: spy(st._main, *a, **kw))
    return captured
