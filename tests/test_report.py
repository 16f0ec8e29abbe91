from __future__ import annotations

from html.parser import HTMLParser

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from workbench.ui.report import comparison_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Checker(HTMLParser):
    """Checks that every element closes in order, and collects scripts and text."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.script_srcs: list[str] = []
        self.text: list[str] = []
        self.plotly_divs = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and "src" in attrs:
            self.script_srcs.append(attrs["src"])
        if "plotly-graph-div" in (attrs.get("class") or ""):
            self.plotly_divs += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("td", "th", "h1", "h2", "title"):
            self.text.append(data.strip())


def build():
    curve = go.Figure(go.Scatter(x=[1, 2, 3], y=[0.5, 0.7, 0.8], name="hybrid"))
    heat = go.Figure(go.Heatmap(z=[[0.1, 0.9], [0.4, 0.6]]))
    runs = pd.DataFrame(
        {"name": ["hybrid <b>", "scratch"], "val_acc": [0.9134, None], "weights": ["a&b", "c"]}
    )
    contrib = pd.DataFrame({"component": ["feature"], "contribution": [0.0312]})
    return comparison_report(
        "Ablation of <hybrid> loss",
        [("Validation accuracy", curve), ("CKA & friends", heat)],
        [("Runs", runs), ("Contributions", contrib)],
    )


def test_report_is_standalone_and_well_formed():
    html = build()
    checker = Checker()
    checker.feed(html)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert checker.script_srcs == []  # nothing loaded from the network
    assert checker.plotly_divs == 2
    assert html.lstrip().lower().startswith("<!doctype html>")
    # plotly.js inline exactly once
    bundle = get_plotlyjs()
    assert html.count(bundle[:200]) == 1
    assert len(html) > len(bundle)
    # (the bundle itself names a topojson URL used only by geo maps)
    assert "cdn.plot.ly" not in html.replace(bundle, "")


def test_report_contains_titles_and_escaped_values():
    html = build()
    checker = Checker()
    checker.feed(html)
    text = checker.text
    for title in (
        "Ablation of <hybrid> loss",
        "Validation accuracy",
        "CKA & friends",
        "Runs",
        "Contributions",
    ):
        assert title in text
    for value in ("hybrid <b>", "0.9134", "a&b", "scratch", "feature", "0.0312", "\u2014"):
        assert value in text
    assert "hybrid &lt;b&gt;" in html  # escaped in the source, not markup
    assert "<b>" not in html.split("<body>", 1)[1].split("<script", 1)[0]


def test_report_without_figures():
    html = comparison_report("Empty", [], [("t", pd.DataFrame({"x": [1]}))])
    checker = Checker()
    checker.feed(html)
    assert checker.errors == [] and checker.stack == []
    assert "<script" not in html
