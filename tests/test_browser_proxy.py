"""A shared lab instance in real Chromium: the app in ``proxy`` identity mode, alice and bob in
two browser contexts, each reaching it through an authenticating proxy that names them.

How the user header reaches Streamlit: ``st.context.headers`` are the headers of the
WebSocket handshake, and Chromium does not add Playwright's ``extra_http_headers`` to that
handshake (it adds them to page loads and fetches only; ``context.route`` does not see
WebSockets either). A probe showed it: a context with ``extra_http_headers={"X-Forwarded-User":
"alice"}`` got "no X-Forwarded-User header" from the app. So each user gets a
``UserProxy`` (tests/browser_harness.py): a tiny forwarding proxy, as oauth2-proxy or Authelia
would be in a lab, that sets the header on every request (WebSocket upgrade included) and drops
a client's own. A context that skips the proxy and talks to the server directly is a request
without the header.

The scenario (issue 9, "Done when"), deterministic on a machine of any speed:

1. alice launches a run from Distill in her browser and it completes;
2. the queue is held (a registered worker that claims nothing: in ``app_executes = "auto"`` the
   app only queues while a worker is alive), and alice queues three more runs through the
   library on the same store;
3. bob sees alice's runs on Runs with no Cancel, Delete or Private (alice sees them on the same
   runs), and "Owned by alice";
4. bob launches a run from Distill; the hold is lifted, and the app's one CPU slot starts bob's
   run before alice's three (the fair order: alice was served last);
5. alice makes her first run private in her browser: bob's deep link to it says not found, and
   his table and run picker no longer list it.

Runs are tiny (digits, mlp, label loss only, 1 epoch) and every wait is on progress or on the
page, never a fixed sleep, so a loaded machine makes it slower, not red. Screenshots go to
tests/artifacts/proxy-*.png.
"""

from __future__ import annotations

import os
import re
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlencode

import pytest

from tests.browser_harness import (
    ARTIFACTS,
    CHROMIUM,
    AppServer,
    UserProxy,
    assert_no_exception,
    wait_for_runs,
    wait_idle,
)
from tests.test_browser import _record_timing

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run the browser tests (.ci/run does)",
    ),
]

SETTINGS = """\
[identity]
mode = "proxy"
header = "X-Forwarded-User"

[limits]
running_runs = 1

[workers]
app_executes = "auto"  # the app executes unless a worker is alive (the test's hold is one)
"""
# The Distill draft of a tiny run, as URL parameters (a new session reads its draft from the URL).
TINY = {
    "teacher": "small_cnn",
    "student": "mlp",
    "epochs": "1",
    "teacher_epochs": "1",
    "w_label": "1.0",
    "w_response": "0.0",
    "w_feature": "0.0",
    "w_relation": "0.0",
}
NO_HEADER = (
    "no X-Forwarded-User header on this request: this instance is in proxy mode and must be "
    "reached through its authenticating proxy"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The server in proxy mode, and a proxy per user in front of it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_factory.mktemp("proxy-lab")
    settings = tmp / "workbench.toml"
    settings.write_text(SETTINGS)
    app = AppServer(
        tmp / "home", ARTIFACTS / "streamlit-proxy.log", env={"KDWB_CONFIG": str(settings)}
    )
    proxies = {name: UserProxy(app.port, name) for name in ("alice", "bob")}
    try:
        app.wait_healthy()
        yield app, proxies
    finally:
        for proxy in proxies.values():
            proxy.close()
        app.stop()


def _new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    return context.new_page()


def _h1(page, title: str) -> None:
    page.wait_for_function(
        f"() => document.querySelector('h1') && document.querySelector('h1').innerText.includes('{title}')",
        timeout=90_000,
    )
    wait_idle(page)


def _signed_in_as(page, name: str) -> None:
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text(f"Signed in as {name}", exact=True).wait_for(timeout=60_000)


def _store(home):
    from workbench.storage.store import Store

    return Store(home)


def _record(home, run_id: str) -> dict:
    store = _store(home)
    try:
        return store.get_run(run_id)
    finally:
        store.close()


def _launch(page, proxy: UserProxy, name: str, home) -> str:
    """Launch one tiny run from Distill as the proxy's user; returns its id (from the store)."""
    store = _store(home)
    before = {r["id"] for r in store.list_runs()}
    page.goto(f"{proxy.url}/distill?{urlencode(TINY | {'run_name': name})}")
    _h1(page, "Distill")
    _signed_in_as(page, proxy.user)
    page.get_by_role("button", name="Launch", exact=True).click()
    page.get_by_text("Queued 1 run.").wait_for(timeout=90_000)
    _assert_no_error(page)
    (run,) = [r for r in store.list_runs() if r["id"] not in before]
    store.close()
    assert run["owner"] == proxy.user and run["name"] == name, run
    return run["id"]


def _open_run(page, proxy: UserProxy, run_id: str) -> None:
    page.goto(f"{proxy.url}/runs?run={run_id}")
    _h1(page, "Runs")
    _signed_in_as(page, proxy.user)
    # the run's actions are drawn last: the downloads are there for everyone who may see it
    try:
        page.locator(".st-key-run_download_csv").wait_for(timeout=90_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "proxy-failed-open-run.png"), full_page=True)
        raise
    wait_idle(page)
    _assert_no_error(page)


def _assert_no_error(page) -> None:
    """No exception box, and no "Something went wrong" (a page's last net, ``show_error``)."""
    assert_no_exception(page)
    wrong = page.get_by_text("Something went wrong")
    assert wrong.count() == 0, wrong.first.inner_text()


def _table_text(page) -> str:
    """The Runs table's cells as text (the grid draws on a canvas; its hidden accessible
    table carries the same cells)."""
    table = page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]')
    table.wait_for(timeout=60_000)
    return table.evaluate("el => el.textContent")


def _run_options(page) -> str:
    """The options of the Run picker (opened, read, closed)."""
    page.locator(".st-key-runs_selected [role=combobox]").click()
    listbox = page.get_by_role("listbox")
    listbox.wait_for(timeout=30_000)
    text = listbox.inner_text()
    page.keyboard.press("Escape")
    return text


@contextmanager
def _queue_held(home):
    """Hold the queue: a registered worker that claims nothing. While it beats, the app (in
    ``app_executes = "auto"``) leaves queued runs to workers, so they stay queued."""
    from workbench.runs import queue as runqueue

    store = _store(home)
    holder = runqueue.Executor("worker")
    stop = threading.Event()
    runqueue.register_worker(store, holder, {"cpu": 1})

    def beat() -> None:  # a silent worker is taken for dead after SILENT_AFTER_S
        while not stop.wait(runqueue.SILENT_AFTER_S / 6):
            runqueue.register_worker(store, holder, {"cpu": 1})

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        runqueue.unregister_worker(store, holder)
        store.close()


def test_a_request_without_the_user_header_gets_one_line(lab, browser):
    """Straight to the server, past the proxy: the one-line reason, no traceback, no page."""
    app, _ = lab
    page = _new_page(browser)
    page.goto(f"{app.url}/runs")
    alert = page.locator('[data-testid="stAlert"]')
    alert.get_by_text(NO_HEADER, exact=True).wait_for(timeout=90_000)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]')"
        ".getAttribute('data-test-script-state') === 'notRunning'",
        timeout=90_000,
    )
    _assert_no_error(page)
    main = page.locator('[data-testid="stMain"]').inner_text()
    assert "Traceback" not in main and "Signed in as" not in main
    assert alert.count() == 1
    assert page.locator("h1").count() == 0  # no page ran for an unknown user
    # nor is the pages/ folder listed (a script that stops before st.navigation gets that)
    assert page.locator('[data-testid="stSidebarNav"]').count() == 0
    assert page.get_by_text("shared", exact=True).count() == 0
    page.screenshot(path=str(ARTIFACTS / "proxy-no-header.png"), full_page=True)
    page.context.close()


def test_two_users_share_the_instance(lab, browser):
    app, proxies = lab
    alice_proxy, bob_proxy = proxies["alice"], proxies["bob"]
    alice, bob = _new_page(browser), _new_page(browser)
    started = time.monotonic()

    # 1. alice launches a run in her browser; it completes.
    first = _launch(alice, alice_proxy, "alice first", app.home)
    wait_for_runs(app.home, [first])
    assert _record(app.home, first)["status"] == "completed"

    from workbench.config.run_config import LossWeights, RunConfig

    tiny = RunConfig(teacher="small_cnn", student="mlp", epochs=1, weights=LossWeights(1, 0, 0, 0))
    with _queue_held(app.home):
        # 2. alice queues three more through the library (the queue is held: they wait).
        store = _store(app.home)
        queued = [
            store.create_run(tiny.replace(seed=i), name=f"alice queued {i}", owner="alice")
            for i in range(1, 4)
        ]
        store.close()

        # 3. bob sees alice's runs without her actions; alice has them on the same runs.
        _open_run(bob, bob_proxy, first)
        bob.get_by_text(re.compile(r"^Owned by alice: only they or an admin")).wait_for()
        for key in ("run_cancel", "run_delete", f"run_private_{first}", "run_rename_save"):
            assert bob.locator(f".st-key-{key}").count() == 0, key
        for name in ("Cancel run", "Delete run"):
            assert bob.get_by_role("button", name=name).count() == 0, name
        table = _table_text(bob)
        assert "alice first" in table and "alice queued 3" in table, table
        assert re.search(r"#\d+", table), table  # the queue column: alice's queued runs' places
        bob.screenshot(path=str(ARTIFACTS / "proxy-bob-sees-alice-run.png"), full_page=True)

        _open_run(bob, bob_proxy, queued[0])
        bob.get_by_text(re.compile(r"^Owned by alice:")).wait_for()
        assert bob.locator(".st-key-run_cancel").count() == 0
        assert bob.get_by_role("button", name="Cancel run").count() == 0
        bob.screenshot(path=str(ARTIFACTS / "proxy-bob-sees-alice-queued.png"), full_page=True)

        _open_run(alice, alice_proxy, queued[0])  # the owner does get them
        assert alice.locator(".st-key-run_cancel").count() == 1
        assert alice.get_by_text(re.compile(r"^Owned by")).count() == 0
        _open_run(alice, alice_proxy, first)
        assert alice.locator(".st-key-run_delete").count() == 1
        assert alice.locator(f".st-key-run_private_{first}").count() == 1

        # 4. bob launches a run from Distill while alice's three wait.
        bobs = _launch(bob, bob_proxy, "bob run", app.home)
        assert all(_record(app.home, r)["status"] == "queued" for r in queued)
    # the hold is lifted: the app executes the queue with its one CPU slot
    records = {r["id"]: r for r in wait_for_runs(app.home, [bobs, *queued])}
    assert all(r["status"] == "completed" for r in records.values()), records
    order = sorted(records, key=lambda r: records[r]["claimed_at"])
    assert order[0] == bobs, [records[r]["name"] for r in order]  # before all of alice's queue

    # 5. alice makes her first run private in her browser; to bob it no longer exists.
    _open_run(alice, alice_proxy, first)
    alice.locator(f".st-key-run_private_{first}").get_by_text("Private").click()
    deadline = time.monotonic() + 90
    while not _record(app.home, first).get("private"):
        assert time.monotonic() < deadline, "the Private toggle did not reach the store"
        alice.wait_for_timeout(200)
    wait_idle(alice)
    _assert_no_error(alice)
    alice.screenshot(path=str(ARTIFACTS / "proxy-alice-private.png"), full_page=True)

    bob.goto(f"{bob_proxy.url}/runs?run={first}")
    _h1(bob, "Runs")
    _signed_in_as(bob, "bob")
    bob.get_by_text(f"Run {first} not found: it was deleted, or it is private.").wait_for(
        timeout=60_000
    )
    wait_idle(bob)
    _assert_no_error(bob)
    table = _table_text(bob)
    assert "alice first" not in table and first not in table, table
    assert "alice queued 1" in table and "bob run" in table, table
    options = _run_options(bob)
    assert "alice first" not in options and "bob run" in options, options
    bob.screenshot(path=str(ARTIFACTS / "proxy-bob-private-not-found.png"), full_page=True)

    # alice still has it, marked private
    _open_run(alice, alice_proxy, first)
    table = _table_text(alice)
    assert "alice first" in table, table
    toggle = alice.locator(f".st-key-run_private_{first} input")  # the key columns fill the
    assert toggle.is_checked()  # first screen now: the visibility column is further right
    _record_timing("proxy_two_users_scenario_s", time.monotonic() - started)
    alice.context.close()
    bob.context.close()
