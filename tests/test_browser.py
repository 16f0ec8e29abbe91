"""The main journey in real Chromium: pages load offline, a teacher trains, a run distils and
compares, a suite updates its page as it runs, and every page restores its state on a reload.

Runs are tiny (digits, small_cnn -> mlp, 1-2 epochs) and every wait on training is a wait on
progress (``wait_for_runs``: it fails only when nothing moves for two minutes), so a busy
machine makes the journey slower, not red. The 20-run Compare view uses fabricated runs.
Screenshots go to tests/artifacts/."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time

import pytest

from tests.browser_harness import (
    ARTIFACTS,
    CHROMIUM,
    AppServer,
    assert_no_exception,
    boxes_overlap,
    wait_for_runs,
    wait_idle,
    watch_requests,
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


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


@pytest.mark.parametrize("path", ["", "distill", "runs", "compare", "ablations"])
def test_every_page_loads_offline_without_an_exception(server, page, path):
    outside = watch_requests(page)
    page.goto(f"{server.url}/{path}")
    wait_idle(page)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / f"page-{path or 'models'}.png"), full_page=True)
    assert outside == []  # no font, icon or favicon from the internet
    icon = page.locator("link[rel*=icon]").first.get_attribute("href") or ""
    assert not icon.startswith("http") or icon.startswith(server.url), icon


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


def _text(page, key: str, value: str) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(value)
    box.press("Enter")
    wait_idle(page)


def _shown(page, key: str) -> str:
    """What a selectbox or multiselect shows: its text and the value of its input."""
    return page.locator(f".st-key-{key}").evaluate(
        "el => el.textContent + ' ' + Array.from(el.querySelectorAll('input'))"
        ".map(i => i.value).join(' ')"
    )


def _launch_disabled(page) -> bool:
    return page.get_by_role("button", name="Launch", exact=True).is_disabled()


def _store_runs(home, **filters) -> list[dict]:
    from workbench.storage.store import Store

    store = Store(home)
    try:
        return store.list_runs(**filters)
    finally:
        store.close()


def _h1(page, title: str) -> None:
    page.wait_for_function(
        f"() => document.querySelector('h1') && document.querySelector('h1').innerText.includes('{title}')",
        timeout=90_000,
    )
    wait_idle(page)


@contextlib.contextmanager
def _beating(store, holder, run_id: str):
    """Keep ``holder``'s worker entry and its claim of ``run_id`` beating while the test trains
    the run in-process, as a real worker does: on a loaded machine a run (and its teacher) can
    take longer than the silence limit, after which the app would take the run back."""
    from workbench.runs import queue as runqueue

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(1.0):
            runqueue.register_worker(store, holder, {"cpu": 1})
            runqueue.heartbeat(store, holder, [run_id])

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_main_journey(server, browser):
    """Train a tiny teacher, distil a student, watch it finish, compare it, ablate it; reload
    each page on the way; an invalid temperature and a failed upload block Launch."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    outside = watch_requests(page)
    page.goto(server.url)
    wait_idle(page)

    # Models: a tiny teacher, trained now with live progress.
    _pick(page, "teacher", "small_cnn")
    _pick(page, "student", "mlp")
    _number(page, "teacher_epochs", 1)
    page.locator(".st-key-train_teacher button").click()
    wait_idle(page)
    wait_for_runs(server.home, [r["id"] for r in _store_runs(server.home, role="teacher")])
    page.get_by_text("Teacher trained").wait_for(timeout=60_000)
    wait_idle(page)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-1-models.png"), full_page=True)

    # Distill: an invalid temperature disables Launch and says why next to the field.
    _nav(page, "Distill")
    _number(page, "temperature", 0)
    assert _launch_disabled(page)
    page.get_by_text(re.compile(r"^temperature must be .*, got 0$")).wait_for(timeout=30_000)
    assert page.locator(".st-key-temperature input").input_value() in ("0", "0.00")
    page.screenshot(path=str(ARTIFACTS / "journey-2-invalid-temperature.png"), full_page=True)
    _number(page, "temperature", 3)
    assert not _launch_disabled(page)

    # The draft is in the URL: a reload keeps it.
    _number(page, "epochs", 2)
    _text(page, "run_name", "journey")
    assert "epochs=2" in page.url and "temperature=3" in page.url
    page.reload()
    _h1(page, "Distill")
    assert page.locator(".st-key-epochs input").input_value() == "2"
    assert page.locator(".st-key-run_name input").input_value() == "journey"
    assert "small_cnn" in page.locator('[data-testid="stMain"]').inner_text()

    started = time.monotonic()
    page.get_by_role("button", name="Launch", exact=True).click()
    page.locator(".st-key-run_tags input").click()  # a click right after Launch must not drop it
    page.get_by_text(re.compile(r"Queued 1 run")).wait_for(timeout=60_000)
    (run,) = _store_runs(server.home, role="student")
    assert run["name"] == "journey" and run["config"]["temperature"] == 3
    page.get_by_text(re.compile(r"(step \d+/\d+|completed)")).first.wait_for(timeout=120_000)
    _record_timing("launch_to_first_live_metric_s", time.monotonic() - started)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-3-distill.png"), full_page=True)
    wait_for_runs(server.home, [run["id"]])

    # Open Runs selects the new run; a reload of /runs?run=ID keeps it.
    page.locator(".st-key-open_runs button").click()
    _h1(page, "Runs")
    assert f"run={run['id']}" in page.url
    page.locator('[data-testid="stProgress"]').filter(has_text="completed").first.wait_for(
        timeout=60_000
    )
    assert "journey" in _shown(page, "runs_selected")
    page.reload()
    _h1(page, "Runs")
    assert "journey" in _shown(page, "runs_selected")
    assert "teacher=small_cnn" not in page.url  # each page's URL holds only its own state
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-4-runs.png"), full_page=True)

    # Compare, opened from Runs; the selection is in the URL and survives a reload.
    page.locator(".st-key-runs_compare_pick [role=combobox]").click()
    page.get_by_role("option", name=re.compile("journey")).first.click()
    page.keyboard.press("Escape")
    wait_idle(page)
    page.locator(".st-key-open_compare button").click()
    _h1(page, "Compare")
    assert f"runs={run['id']}" in page.url
    page.reload()
    _h1(page, "Compare")
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert "journey" in _shown(page, "compare_runs")
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-5-compare.png"), full_page=True)

    # A rejected upload blocks Launch until another teacher source is chosen.
    _nav(page, "Models")
    page.locator(".st-key-teacher_mode").get_by_text("upload a checkpoint").click()
    wait_idle(page)
    page.locator(".st-key-teacher_upload input[type=file]").set_input_files(
        files=[{"name": "broken-teacher.pt", "mimeType": "application/octet-stream",
                "buffer": b"this is not a checkpoint"}]
    )  # fmt: skip
    page.get_by_text(re.compile("broken-teacher.pt is not")).first.wait_for(timeout=60_000)
    _nav(page, "Distill")
    assert _launch_disabled(page)
    message = page.get_by_text(re.compile("uploaded teacher checkpoint was rejected"))
    message.wait_for()
    message.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "journey-6-upload-blocks-launch.png"))
    _nav(page, "Models")
    page.locator(".st-key-teacher_mode").get_by_text("train one now").click()
    wait_idle(page)

    # Ablations: the page's tables fill in while the suite runs. The suite is held in the queue
    # (a worker registered in the store makes the app only queue) while this test executes its
    # first run itself, so the page is seen between "nothing finished" and "all finished"
    # whatever the machine's speed; then the app executes the rest.
    from workbench.config.run_config import RunConfig
    from workbench.runs import queue as runqueue
    from workbench.storage.store import Store
    from workbench.training.loop import run

    store = Store(server.home)
    holder = runqueue.Executor("worker")
    runqueue.register_worker(store, holder, {"cpu": 1})
    _nav(page, "Distill")
    assert not _launch_disabled(page)
    _number(page, "epochs", 1)
    _number(page, "ablation_seeds", 1)
    page.get_by_role("button", name="Launch ablation suite").click()
    page.get_by_text(re.compile(r"Queued an ablation suite")).wait_for(timeout=60_000)
    page.locator(".st-key-open_ablations button").click()
    _h1(page, "Ablations")
    assert "suite=" in page.url
    (suite_run_ids,) = {tuple(r["id"] for r in _store_runs(server.home) if r.get("suite"))}
    first = runqueue.claim_next(store, holder, {"cpu"})
    assert first is not None and first["id"] in suite_run_ids
    with _beating(store, holder, first["id"]):  # a live worker's claim, however long it takes
        record = run(RunConfig.from_dict(first["config"]), store, run_id=first["id"])
    assert record["status"] == "completed", record["error"]
    page.get_by_text(re.compile(rf"1 of {len(suite_run_ids)} runs finished")).wait_for(
        timeout=60_000
    )
    # the rest of the page redraws after the progress line: wait for the variant table
    page.get_by_text("No finished runs yet").wait_for(state="detached", timeout=60_000)
    assert "completed: 1" in page.locator('[data-testid="stMain"]').inner_text()
    page.screenshot(path=str(ARTIFACTS / "journey-7-ablations-live.png"), full_page=True)
    runqueue.unregister_worker(store, holder)  # the app executes the rest
    deadline_stall = 120.0
    last, since = None, time.monotonic()
    while True:
        text = page.locator('[data-testid="stMain"]').inner_text()
        found = re.search(r"(\d+) of (\d+) runs finished", text)
        if found:
            done, total = int(found[1]), int(found[2])
            if done == total:
                break
            # progress is any run moving (a teacher trained for the suite included)
            moving = [
                (r["status"], (r.get("progress") or {}).get("step"))
                for r in _store_runs(server.home)
            ]
            if ((done, total), moving) != last:
                last, since = ((done, total), moving), time.monotonic()
        if time.monotonic() - since > deadline_stall:
            page.screenshot(path=str(ARTIFACTS / "journey-7-ablations-stalled.png"), full_page=True)
            server.dump_threads()
            states = [
                (r["status"], r.get("progress")) for r in _store_runs(server.home) if r.get("suite")
            ]
            raise TimeoutError(
                f"the Ablations page did not move for {deadline_stall:.0f}s: {last}; runs: {states}"
            )
        page.wait_for_timeout(300)
    wait_for_runs(server.home, list(suite_run_ids))
    page.reload()
    _h1(page, "Ablations")
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert page.get_by_text("Contribution of each component").count() == 1
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "journey-8-ablations.png"), full_page=True)
    assert outside == [], outside
    context.close()


def test_compare_with_20_runs_stays_legible(server, browser):
    """20 fabricated finished runs in Compare (from the URL): short names in the legends, CKA
    subplot titles that do not overlap, a legend no larger than its plot; reload keeps them."""
    from tests.test_compare_page import fabricate_run
    from workbench.storage.store import Store

    store = Store(server.home)
    weights = [(0.5, 0.5, 0.0, 0.0), (0.3, 0.3, 0.2, 0.2), (1, 0, 0, 0), (0.4, 0.4, 0.2, 0.0),
               (0.6, 0.2, 0.0, 0.2)]  # fmt: skip
    ids = []
    for w in weights:
        for seed in range(4):
            run_id = fabricate_run(store, f"w{w}", seed=seed, weights=w, tags=("twenty",))
            store.update_run(run_id, name="")  # named automatically by what differs
            ids.append(run_id)
    store.close()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    started = time.monotonic()
    page.goto(f"{server.url}/compare?runs={','.join(ids)}&group=none")
    _h1(page, "Compare")
    page.locator(".st-key-compare_cka .js-plotly-plot").wait_for(timeout=120_000)
    wait_idle(page)
    _record_timing("compare_20_runs_s", time.monotonic() - started)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "compare-20-runs.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 2400})  # the whole grid on screen at once
    wait_idle(page)
    page.locator(".st-key-compare_cka").screenshot(path=str(ARTIFACTS / "compare-20-runs-cka.png"))
    page.locator(".st-key-compare_accuracy").screenshot(
        path=str(ARTIFACTS / "compare-20-runs-accuracy.png")
    )
    titles = page.locator(".st-key-compare_cka g.annotation").all()
    assert len(titles) >= 20
    boxes = [t.bounding_box() for t in titles]
    clashes = [
        (i, j) for i in range(len(boxes)) for j in range(i) if boxes_overlap(boxes[i], boxes[j])
    ]
    assert clashes == [], clashes
    # the legend (a scrolling column beside the plot) takes less room than the plot itself
    legend = page.locator(".st-key-compare_accuracy g.legend").bounding_box()
    plot = page.locator(".st-key-compare_accuracy .nsewdrag").first.bounding_box()
    assert legend["width"] * legend["height"] < plot["width"] * plot["height"]
    assert legend["width"] < plot["width"] / 2
    entries = page.locator(".st-key-compare_accuracy g.legend .traces").evaluate_all(
        "els => els.map(e => e.textContent)"
    )
    assert entries and all("·" in e and len(e) < 60 for e in entries), entries  # short names
    page.reload()
    _h1(page, "Compare")
    page.locator(".st-key-compare_cka .js-plotly-plot").wait_for(timeout=120_000)
    wait_idle(page)
    assert page.locator(".st-key-compare_cka g.annotation").count() == len(titles)
    assert "seed 3" in _shown(page, "compare_runs")
    page.close()


def test_runs_page_with_50_runs(server, page):
    """Render time of Runs with 50 runs in the store (recorded in docs/BENCHMARKS.md)."""
    from workbench.config.run_config import LossWeights, RunConfig
    from workbench.storage.store import Store

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
            metrics={"val_acc": 0.5, "test_acc": 0.5},
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
        started = time.monotonic()
        page.goto(f"{app.url}/compare")
        page.wait_for_selector("h1", timeout=90_000)
        _record_timing("cold_first_page_heading_s", time.monotonic() - started)
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
