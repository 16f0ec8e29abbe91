"""Compare's views of what the student learned (issue 21) in real Chromium, on real runs:
3 configs x 2 seeds show every new view (seed-mean CKA, embeddings, calibration, the logit
gap, the gallery and Grad-CAM after a click on a class's bar), and 20 runs stay legible.

The runs are tiny (digits, a small_cnn teacher trained once, 1-epoch students) and trained
in-process before the server starts; every wait is on the page, not on a clock. Screenshots go
to tests/artifacts/insight-*.png."""

from __future__ import annotations

import os

import pytest

from tests.browser_harness import (
    ARTIFACTS,
    CHROMIUM,
    AppServer,
    assert_no_exception,
    boxes_overlap,
    wait_idle,
)
from workbench.cli import main
from workbench.storage.store import Store

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run the browser tests",
    ),
]

CONFIGS = {  # name -> flags of the 3 configs of 2 seeds
    "kd": ["--weights", "label=0.5,response=0.5"],
    "scratch": ["--weights", "label=1"],
    "hybrid": ["--weights", "label=0.4,response=0.4,feature=0.2"],
}
MORE = (
    [  # 14 more runs (7 settings x 2 seeds): 20 in all
        ["--weights", "label=0.5,response=0.5", "--temperature", str(t)] for t in (1, 2, 8)
    ]
    + [
        ["--weights", w]
        for w in ("label=0.3,response=0.7", "label=0.7,response=0.3", "label=0.5,relation=0.5")
    ]
    + [["--weights", "label=0.5,feature=0.5"]]
)
VIEWS = (  # the new charts' keys: each must be drawn
    "compare_same_layer_cka",
    "compare_embeddings",
    "compare_reliability",
    "compare_logit_gap",
    "compare_gallery_classes",
    "compare_gallery",
)
WAIT_MS = 180_000


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A store with the 20 runs and a server on it: (server, ids of the 3x2, all 20 ids)."""
    home = tmp_path_factory.mktemp("insight-browser") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDWB_HOME", str(home))
        six = [
            _train(home, name, seed, flags) for name, flags in CONFIGS.items() for seed in (0, 1)
        ]
        more = [_train(home, f"more{i}", seed, f) for i, f in enumerate(MORE) for seed in (0, 1)]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = AppServer(home, ARTIFACTS / "streamlit-insight.log")
    try:
        server.wait_healthy()
        yield server, six, six + more
    finally:
        server.stop()


def _train(home, name: str, seed: int, flags: list[str]) -> str:
    args = ["run", "--teacher", "small_cnn", "--student", "small_cnn", "--epochs", "1"]
    args += ["--teacher-epochs", "2", "--device", "cpu", "--seed", str(seed), "--name", name]
    assert main([*args, "--json", *flags]) == 0
    store = Store(home)
    try:
        return store.list_runs(role="student")[0]["id"]  # newest first
    finally:
        store.close()


def _open(browser, server, ids: list[str], query: str = ""):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/compare?runs={','.join(ids)}{query}")
    page.locator(".st-key-compare_gallery .js-plotly-plot").wait_for(timeout=WAIT_MS)
    wait_idle(page)
    assert_no_exception(page)
    return page


def _views_drawn(page) -> None:
    for key in VIEWS:
        assert page.locator(f".st-key-{key} .js-plotly-plot").count() == 1, key


def test_three_configs_of_two_seeds_show_every_new_view(lab, browser):
    server, six, _ = lab
    page = _open(browser, server, six)
    _views_drawn(page)
    main_text = page.locator('[data-testid="stMain"]').inner_text()
    assert "mean of its seeds" in main_text  # the seed groups' CKA
    assert "run them again" not in main_text  # every run has the new probe data
    page.screenshot(path=str(ARTIFACTS / "insight-3x2.png"), full_page=True)
    for key in ("compare_same_layer_cka", "compare_embeddings", "compare_reliability"):
        page.locator(f".st-key-{key}").screenshot(path=str(ARTIFACTS / f"insight-3x2-{key}.png"))

    # A click on a class's bar filters the gallery to that class: the class where the
    # teacher leads the student most, so the first group (teacher right) has its images.
    plot = page.locator(".st-key-compare_gallery_classes .js-plotly-plot")
    plot.scroll_into_view_if_needed()
    teacher, student = plot.evaluate("d => d.data.map(t => t.y)")
    worst = max(range(len(teacher)), key=lambda c: teacher[c] - student[c])
    bars = page.locator(".st-key-compare_gallery_classes g.trace.bars").first.locator("path")
    bars.nth(worst).hover(force=True)  # the teacher's bar of that class
    page.mouse.down()
    page.mouse.up()
    page.wait_for_function(
        "c => Array.from(document.querySelectorAll('.st-key-compare_gallery_class input'))"
        ".some(i => i.value === c)",
        arg=str(worst),
        timeout=WAIT_MS,
    )
    wait_idle(page)
    assert_no_exception(page)
    titles = page.locator(".st-key-compare_gallery g.annotation").evaluate_all(
        "els => els.map(e => e.textContent).filter(t => t.startsWith('label'))"
    )
    assert titles and all(t.startswith(f"label {worst}") for t in titles), titles

    # Grad-CAM of a picked image: teacher and runs side by side.
    page.mouse.move(0, 0)  # off the chart: its hover label goes
    picker = page.locator(".st-key-compare_cam_images")
    picker.scroll_into_view_if_needed()
    try:
        picker.locator("input").click()
        page.get_by_role("option").first.click(timeout=10_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "insight-cam-picker-failed.png"), full_page=True)
        raise
    page.keyboard.press("Escape")
    wait_idle(page)
    page.locator(".st-key-compare_cam_go button").click()
    page.locator(".st-key-compare_cam .js-plotly-plot").wait_for(timeout=WAIT_MS)
    wait_idle(page)
    assert_no_exception(page)
    page.locator(".st-key-compare_gallery").screenshot(path=str(ARTIFACTS / "insight-gallery.png"))
    page.locator(".st-key-compare_cam").screenshot(path=str(ARTIFACTS / "insight-cam.png"))
    page.close()


def test_twenty_runs_stay_legible(lab, browser):
    """Every view drawn for 20 runs one by one; the embedding maps' titles do not overlap."""
    server, _, twenty = lab
    page = _open(browser, server, twenty, "&group=none")
    _views_drawn(page)
    page.screenshot(path=str(ARTIFACTS / "insight-20-runs.png"), full_page=True)
    for key in ("compare_same_layer_cka", "compare_embeddings", "compare_logit_gap"):
        page.locator(f".st-key-{key}").screenshot(path=str(ARTIFACTS / f"insight-20-{key}.png"))
        titles = page.locator(f".st-key-{key} g.annotation").all()
        boxes = [t.bounding_box() for t in titles]
        clashes = [
            (i, j)
            for i in range(len(boxes))
            for j in range(i)
            if boxes[i] and boxes[j] and boxes_overlap(boxes[i], boxes[j])
        ]
        assert clashes == [], (key, clashes)
    assert page.locator(".st-key-compare_embeddings g.annotation").count() >= 21  # + teacher
    page.close()
