"""workbench.ui.report's exports: the CSVs keep every config field, the per-epoch CSV is one long
table of many runs, and the HTML report's run table reads on a page (issue 19, item 5)."""

from __future__ import annotations

import io
import json
from html.parser import HTMLParser

import pandas as pd
import pytest
import streamlit as st

from tests.test_compare_page import open_compare
from workbench.config.run_config import LossWeights, RunConfig
from workbench.ui import report


def record(run_id: str, *, status: str = "completed", acc: float | None = 0.9, **config):
    base = RunConfig(
        teacher="small_cnn", student="mlp", weights=LossWeights(0.3, 0.3, 0.2, 0.2), **config
    )
    return {
        "id": run_id,
        "name": "",
        "role": "student",
        "status": status,
        "config": base.to_dict(),
        "metrics": {"val_acc": acc, "test_acc": acc - 0.01} if acc is not None else {},
        "created_at": 1_700_000_000.0,
        "progress": {},
    }


SHORT = record("short", epochs=3, lr=0.01, batch_size=32, weighting="uncertainty")
LONG = record(
    "long", epochs=60, feature_kind="at", layer_pairs=(("block1", "layer1.0"),), status="queued"
)
LONG["metrics"] = {}
EPOCHS = {
    "short": [{"epoch": e, "val_acc": 0.5 + 0.1 * e, "train_loss": 1.0 / e} for e in (1, 2, 3)],
    "long": [{"epoch": 1, "val_acc": 0.4, "agreement": 0.3}],
}


def test_the_runs_csv_has_every_config_field_as_a_column():
    frame = report.runs_export([SHORT, LONG], EPOCHS.get, {"short": "3 ep", "long": "60 ep"})
    for field in report.CONFIG_FIELDS:
        if field != "weights":
            assert field in frame.columns, field
    assert {f"weights.{c}" for c in ("label", "response", "feature", "relation")} <= set(frame)
    rows = frame.set_index("id")
    assert rows.loc["short", "epochs"] == 3 and rows.loc["long", "epochs"] == 60
    assert rows.loc["short", "lr"] == 0.01 and rows.loc["short", "batch_size"] == 32
    assert rows.loc["short", "weighting"] == "uncertainty"
    assert rows.loc["long", "feature_kind"] == "at"
    assert json.loads(rows.loc["long", "layer_pairs"]) == [["block1", "layer1.0"]]
    assert rows.loc["short", "weights.feature"] == 0.2
    assert rows.loc["long", "shown as"] == "60 ep"
    # the outcome stays beside the setup
    assert rows.loc["short", "test_acc"] == pytest.approx(0.89)
    assert rows.loc["long", "val_acc"] == pytest.approx(0.4)  # its last epoch, while queued
    # a CSV that reads back with the same setup
    back = pd.read_csv(io.StringIO(frame.to_csv(index=False))).set_index("id")
    assert back.loc["long", "epochs"] == 60 and back.loc["short", "relation_kind"] == "sp"


def test_the_epochs_csv_is_one_long_table_of_every_run_and_epoch():
    frame = report.epochs_export([SHORT, LONG], EPOCHS.get, {"short": "a", "long": "b"})
    assert list(frame.columns[:4]) == ["id", "shown as", "name", "epoch"]
    assert {"val_acc", "train_loss", "agreement", "epochs", "lr", "weighting"} <= set(frame)
    assert frame["id"].tolist() == ["short"] * 3 + ["long"]
    assert frame["epoch"].tolist() == [1, 2, 3, 1]
    assert frame["val_acc"].tolist() == pytest.approx([0.6, 0.7, 0.8, 0.4])
    assert frame["epochs"].tolist() == [3, 3, 3, 60]  # each row says its run's setup
    assert frame["train_loss"].isna().tolist() == [False, False, False, True]
    empty = report.epochs_export([], EPOCHS.get)
    assert empty.empty and "epochs" in empty.columns


class Tables(HTMLParser):
    """The column headers (``<thead>``) of each <table> of a report."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[str]] = []
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        self._in_head |= tag == "thead"

    def handle_endtag(self, tag):
        self._in_head &= tag != "thead"

    def handle_data(self, data):
        if self._in_head and data.strip():
            self.tables[-1].append(data.strip())


def test_the_reports_run_table_has_a_few_columns_and_wraps():
    table = report.report_run_table([SHORT, LONG], {"short": "3 ep"})
    assert tuple(table.columns) == report.REPORT_RUN_COLUMNS
    assert len(table.columns) <= 6
    assert table["test acc"].tolist() == ["89.0%", "\u2014"]  # not "None", not "nan"
    setup = table.set_index("run")["setup"]
    assert "3 ep" in setup["3 ep"] and "lr 0.01" in setup["3 ep"] and "uncertainty" in setup["3 ep"]
    assert "60 ep" in setup["long"] and "feature at" in setup["long"]
    assert "pairs block1>layer1.0" in setup["long"]
    html = report.comparison_report("r", [], [("Runs", table)])
    parser = Tables()
    parser.feed(html)
    (headers,) = parser.tables
    assert headers == list(report.REPORT_RUN_COLUMNS)
    style = html.split("<style>", 1)[1].split("</style>", 1)[0]
    assert "max-width: 100%" in style and "overflow-wrap: anywhere" in style
    assert '<div class="table-wrap">' in html


def test_the_compare_pages_downloads_keep_the_setup(home, monkeypatch, downloads):
    """The Compare page's CSVs and report, caught on their way into the download buttons."""
    from tests.test_compare_page import ROOT, fabricate_store
    from workbench.storage.store import Store

    monkeypatch.syspath_prepend(str(ROOT))
    store = Store(home)
    runs = fabricate_store(store)
    try:
        open_compare([runs["kd0"], runs["hy0"]])
        table = pd.read_csv(io.StringIO(downloads["compare_table_csv"]())).set_index("id")
        assert len(table) == len(runs)
        assert {"epochs", "lr", "batch_size", "weighting", "feature_kind", "layer_pairs"} <= set(
            table.columns
        )
        assert table.loc[runs["hy0"], "weighting"] == "uncertainty"
        epochs = pd.read_csv(io.StringIO(downloads["compare_epochs_csv"]()))
        assert set(epochs["id"]) == set(runs.values())  # many runs in one long table
        assert len(epochs) == sum(len(store.epochs(r)) for r in runs.values())
        assert {"epoch", "val_acc", "epochs", "lr"} <= set(epochs.columns)
        parser = Tables()
        parser.feed(downloads["compare_report"]())
        assert parser.tables[0] == list(report.REPORT_RUN_COLUMNS)  # the Runs table
    finally:
        st.cache_resource.clear()
        store.close()
