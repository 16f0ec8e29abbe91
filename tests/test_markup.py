"""No markup from user text (issue 18 item 5): run names, tags, owner and suite names, class
names and URL values are shown as text on every page, in every figure and in the report.

The payloads are planted in a store of fabricated runs, seen by bob (not their owner, so the
"Owned by" line shows); every page is rendered through AppTest and each rendered markdown body,
caption, alert and widget label is checked for a live link, image, autolink or HTML tag, and
every string of every Plotly figure for an ``<a`` or ``<img`` tag.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.test_compare_page import fabricate_run, recorded
from workbench.ablation.suites import launch_suite
from workbench.config.run_config import LossWeights, RunConfig
from workbench.storage.store import Store
from workbench.ui.escape import plain, plain_label
from workbench.ui.plots import curves, heatmaps
from workbench.ui.report import comparison_report

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60
IMAGE = "![x](http://127.0.0.1:9/t.png)"
LINK = "[click](http://evil.example)"
ANCHOR = '<a href="http://evil.example">x</a>'
IMG = "<img src=x>"
PAYLOADS = (IMAGE, LINK, ANCHOR, IMG)
TEXT_KINDS = ("Markdown", "Caption", "Error", "Warning", "Info", "Success", "Title", "Subheader")


# ---------------------------------------------------------------------------------- detectors
def live_markup(text: str) -> list[str]:
    """What in a markdown body would render as a link, an image, an autolink or an HTML tag.
    A backslash-escaped character renders as itself, so escaped ones are taken out first."""
    bare = re.sub(r"\\.", "", text)
    found = []
    if re.search(r"\[[^\]]*\]\(", bare):
        found.append("markdown link or image")
    if re.search(r"(?i)<(a|img)\b", bare):
        found.append("HTML tag")
    if re.search(r"(?i)(https?://|www\.)", bare):
        found.append("autolink")
    return found


def rendered_texts(at: AppTest) -> list[str]:
    """Every markdown body (markdown, captions, alerts, titles) and every label on the page."""
    out: list[str] = []

    def walk(node) -> None:
        kind = type(node).__name__
        if kind in TEXT_KINDS and isinstance(getattr(node, "value", None), str):
            out.append(node.value)
        label = getattr(node, "label", None)
        if isinstance(label, str):
            out.append(label)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return out


def figure_strings(spec: object) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict):
        return [s for v in spec.values() for s in figure_strings(v)]
    if isinstance(spec, list):
        return [s for v in spec for s in figure_strings(v)]
    return []


def live_tags(strings: list[str]) -> list[str]:
    return [s for s in strings if re.search(r"(?i)<(a|img)\b", s)]


def assert_no_markup(at: AppTest, where: str = "") -> None:
    assert not at.exception, (where, [e.value for e in at.exception])
    leaks = {t: live_markup(t) for t in rendered_texts(at) if live_markup(t)}
    assert not leaks, (where, leaks)
    for chart in at.get("plotly_chart"):
        assert not live_tags(figure_strings(json.loads(chart.proto.spec))), (where, chart.key)


# ---------------------------------------------------------------------------------- the helpers
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (IMAGE, r"\!\[x\](http\://127.0.0.1\:9/t.png)"),
        (LINK, r"\[click\](http\://evil.example)"),
        (ANCHOR, r'\<a href="http\://evil.example"\>x\</a\>'),
        (IMG, r"\<img src=x\>"),
        ("**bold** `code` ~x~ $x$ :red[x] :material/home:", r"\*\*bold\*\* \`code\` \~x\~ \$x\$ \:red\[x\] \:material/home\:"),
        ("www.evil.example", r"www\.evil.example"),
        ("alice@lab.example", r"alice\@lab.example"),
        ("- item", r"\- item"),
        ("1. item", r"1\. item"),
        ("a\nb\r\n===", "a b ==="),
        ("_em_ small_cnn", r"\_em\_ small_cnn"),
        ("page: text", "page: text"),
        ("KD · seed 0 (2 seeds)", "KD · seed 0 (2 seeds)"),
        ("back\\slash", "back\\\\slash"),
    ],
)  # fmt: skip
def test_plain_escapes_markdown(text, expected):
    assert plain(text) == expected
    assert not live_markup(plain(text))


@pytest.mark.parametrize("text", PAYLOADS)
def test_the_detector_sees_the_payloads_unescaped(text):
    assert live_markup(text)


def test_plain_label_escapes_html():
    assert plain_label(ANCHOR) == '&lt;a href="http://evil.example"&gt;x&lt;/a&gt;'
    assert plain_label("R&D <img src=x>") == "R&amp;D &lt;img src=x&gt;"
    assert plain_label("KD · seed 0") == "KD · seed 0"


# ---------------------------------------------------------------------------------- the pages
@pytest.fixture
def planted(home, monkeypatch):
    """Runs named, tagged and owned by the payloads, a suite named and owned by one, and class
    names that are payloads; the app is opened by bob (no workers: nothing executes)."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("KDWB_USER", "bob")
    config = home.parent / "workbench.toml"
    config.write_text('[workers]\napp_executes = "none"\n')
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    store = Store(home)
    ids = []
    for i, payload in enumerate(PAYLOADS):
        run_id = fabricate_run(store, payload, seed=i, tags=(payload,))
        probe = store.probe(run_id)
        probe["class_names"] = [payload] * len(probe["class_names"])
        store.save_probe(run_id, probe)
        store.update_run(run_id, owner=PAYLOADS[-1 - i], teacher_note=payload)
        ids.append(run_id)
    failed = fabricate_run(store, LINK + " failed", status="failed")
    ids.append(failed)
    base = RunConfig(weights=LossWeights(0.5, 0.5, 0.0, 0.0))
    suite = launch_suite(base, store, recorded(store), seeds=1, name=LINK, owner=ANCHOR)
    for entry in suite["runs"]:
        store.update_run(entry["run_id"], status="completed", metrics={"test_acc": 0.5})
    yield store, ids, suite
    st.cache_resource.clear()
    store.close()


def render(page: str, params: dict[str, str] | None = None, **state: object) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(params or {})
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page).run()
    return at


def test_no_page_renders_markup_from_user_text(planted):
    store, ids, suite = planted
    url = {"teacher_run": LINK, "data_path": IMAGE, "seeds": ANCHOR, "smooth": IMAGE}
    pages = {
        "pages/models.py": render("pages/models.py", url),
        "pages/distill.py": render("pages/distill.py", url | {"teacher_mode": "pick a trained teacher"}),
        "pages/runs.py": render("pages/runs.py", url | {"run": ids[0]}),
        "pages/runs.py#link": render("pages/runs.py", {"run": LINK}),
        "pages/runs.py#failed": render("pages/runs.py", {"run": ids[-1]}),
        "pages/compare.py": render(
            "pages/compare.py", {"runs": ",".join([*ids, IMAGE, LINK]), "group": "none"}
        ),
        "pages/ablations.py": render("pages/ablations.py", {"suite": suite["id"]}),
        "pages/ablations.py#link": render("pages/ablations.py", {"suite": IMG}),
    }  # fmt: skip
    for name, at in pages.items():
        assert_no_markup(at, name)
    texts = "\n".join(rendered_texts(pages["pages/runs.py"]))
    assert "Owned by" in texts and r"\<img src=x\>" in texts  # the owner, as text
    compare = pages["pages/compare.py"]
    assert "No probe for" in "\n".join(c.value for c in compare.caption)
    assert any("Not found" in w.value for w in compare.warning)
    charts = {c.key: json.loads(c.proto.spec) for c in compare.get("plotly_chart")}
    names = [t.get("name") for t in charts["compare_accuracy"]["data"]]
    assert plain_label(ANCHOR) in names  # the name is there, as text
    assert any("not found" in i.value for i in pages["pages/ablations.py#link"].info)


def test_the_report_holds_no_markup_from_user_text(planted, downloads):
    store, ids, _ = planted
    at = render("pages/compare.py", {"group": "none"}, compare_runs=ids)
    assert_no_markup(at)
    html = downloads["compare_report"]()
    assert 'class="figure"' in html
    for payload in (ANCHOR, IMG):
        assert payload not in html
    assert plain_label(ANCHOR) in html or plain_label(ANCHOR).replace("/", "\\/") in html


def test_figures_hold_no_tags_from_user_text(planted):
    store, ids, _ = planted
    probe = store.probe(ids[0])
    figures = [
        curves.accuracy_curves({p: store.epochs(i) for p, i in zip(PAYLOADS, ids, strict=False)}),
        curves.curve_figure({ANCHOR: [(0, 1), (1, 2)]}, title=IMG, x_title=ANCHOR, y_title=IMG),
        curves.weight_curves({ANCHOR: store.history(ids[0]), IMG: store.history(ids[1])}),
        heatmaps.cka_heatmaps({ANCHOR: probe, IMG: {**probe, "cka": None}}),
        heatmaps.cka_difference(probe, probe, label=ANCHOR, baseline_label=IMG),
        heatmaps.gram_heatmaps(probe, 0),
    ]
    for fig in figures:
        assert not live_tags(figure_strings(json.loads(fig.to_json())))
    html = comparison_report(IMG, [(ANCHOR, fig) for fig in figures], [])
    assert ANCHOR not in html and IMG not in html
