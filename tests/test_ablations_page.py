"""AppTests of the Ablations page (issue 19): a link to an unknown or hidden suite shows no other
suite, private suites, picker labels, the factorial readout, distillation vs scratch and the demo
preset one click away.

Local mode as ``KDWB_USER`` (not the OS user, so not an admin), no workers: nothing trains; the
suites' runs are completed by hand with fabricated accuracies.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from workbench.ablation.suites import demo_preset, launch_suite
from workbench.config.run_config import LossWeights, RunConfig
from workbench.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60
BASE = RunConfig(weights=LossWeights(0.5, 0.5, 0.0, 0.2), epochs=4)
NOISE = {0: 0.0, 1: 0.012, 2: -0.004}


def submit_as(store, owner):
    def submit(submissions):
        return [
            store.create_run(
                s.config,
                name=s.name,
                suite=s.suite,
                variant=s.variant,
                owner=owner,
                private=s.private,
            )
            for s in submissions
        ]

    return submit


def accuracy(variant: str, seed: int) -> float:
    """label + response + relation against label only: response adds 4 points, relation 20,
    and together they lose 6 (as in tests/test_suites.py)."""
    acc = {
        "label only": 0.50,
        "without relation": 0.54,
        "without response": 0.70,
        "full": 0.68,
        "without label": 0.66,
        "response only": 0.60,
        "relation only": 0.55,
    }[variant]
    return acc + NOISE[seed] * (1 + len(variant) % 5)


def finish(store, suite):
    for entry in suite["runs"]:
        value = accuracy(entry["variant"], entry["seed"])
        store.update_run(entry["run_id"], status="completed", metrics={"test_acc": value})


@pytest.fixture
def lab(home, monkeypatch):
    """alice's suites: a leave-one-out one, a private one and a factorial one, all finished."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("KDWB_USER", "bob")
    config = home.parent / "workbench.toml"
    config.write_text('[workers]\napp_executes = "none"\n')  # queued runs stay queued
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    store = Store(home)
    alice = submit_as(store, "alice")
    suites = {
        "loo": launch_suite(BASE, store, alice, seeds=2, name="two seeds", owner="alice"),
        "private": launch_suite(
            BASE, store, alice, seeds=3, name="secret", owner="alice", private=True
        ),
        "factorial": launch_suite(
            BASE, store, alice, seeds=3, factorial=True, name="all combos", owner="alice"
        ),
    }
    for suite in suites.values():
        finish(store, suite)
    yield store, suites
    st.cache_resource.clear()
    store.close()


def open_ablations(params: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(params or {})
    at.run()
    at.switch_page("pages/ablations.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in at.get(kind))


@pytest.mark.parametrize("linked", ["nope", "private"])
def test_a_link_to_an_unknown_or_hidden_suite_shows_no_other_suite(lab, linked):
    store, suites = lab
    suite_id = suites["private"]["id"] if linked == "private" else linked
    at = open_ablations({"suite": suite_id})
    picker = at.selectbox(key="suite_pick")
    assert picker.value is None  # not the latest suite
    assert any(f"Suite {suite_id} not found" in i.value for i in at.info)
    assert not at.dataframe and not at.get("plotly_chart")
    assert not any(suites["private"]["id"] in o for o in picker.options)
    assert len(picker.options) == 2  # bob still picks among the suites he may see
    picker.set_value(suites["loo"]["id"]).run()
    assert not at.exception and at.dataframe
    assert not any("not found" in i.value for i in at.info)


def test_bob_does_not_list_alices_private_suite_and_has_no_owner_actions(lab):
    store, suites = lab
    at = open_ablations({"suite": suites["loo"]["id"]})
    assert at.selectbox(key="suite_pick").value == suites["loo"]["id"]
    assert not [t for t in at.toggle if t.key and t.key.startswith("suite_private_")]
    assert "suite_delete" not in {b.key for b in at.button}


def test_the_owner_makes_a_suite_private_and_its_runs_follow(lab, monkeypatch):
    store, suites = lab
    monkeypatch.setenv("KDWB_USER", "alice")
    suite = suites["loo"]
    at = open_ablations({"suite": suite["id"]})
    at.toggle(key=f"suite_private_{suite['id']}").set_value(True).run()
    assert not at.exception
    assert store.get_suite(suite["id"])["private"] is True
    assert all(store.get_run(e["run_id"])["private"] for e in suite["runs"])
    monkeypatch.setenv("KDWB_USER", "bob")
    at = open_ablations({"suite": suite["id"]})
    assert any("not found" in i.value for i in at.info)
    assert at.selectbox(key="suite_pick").value is None


def test_the_picker_tells_suites_apart(lab):
    store, suites = lab
    at = open_ablations()
    picker = at.selectbox(key="suite_pick")
    day = time.strftime("%Y-%m-%d", time.localtime(suites["loo"]["created_at"]))
    assert any(o.startswith("two seeds · leave-one-out · 4 epochs × 2 seeds · " + day) for o in
               picker.options)  # fmt: skip
    assert any(
        o.startswith("all combos · factorial · 4 epochs × 3 seeds · ") for o in picker.options
    )


def test_a_leave_one_out_suite_shows_distillation_vs_scratch(lab):
    store, suites = lab
    at = open_ablations({"suite": suites["loo"]["id"]})
    line = next(m.value for m in at.markdown if "Distillation vs scratch" in m.value)
    # full - label only per seed: 0.68 + 5 n - (0.50 + 1 n) = 0.18 + 4 n, n = 0 and 0.012
    assert "+20.40 points" in line and "95% interval" in line and "2 paired seed" in line
    intro = texts(at, "caption")
    assert "without it" in intro and "Shapley" not in intro


def test_a_factorial_suite_shows_shapley_with_intervals_and_the_interaction(lab):
    store, suites = lab
    at = open_ablations({"suite": suites["factorial"]["id"]})
    captions = texts(at, "caption")
    assert "every on/off combination" in captions and "Shapley" in captions
    assert "measured against the label only student" in captions
    shapley = next(d.value for d in at.dataframe if "shapley" in d.value.columns)
    assert list(shapley["component"]) == ["response", "relation"]
    assert {"ci_low", "ci_high", "n"} <= set(shapley.columns)
    row = shapley.set_index("component").loc["response"]
    assert row["ci_low"] < row["shapley"] < row["ci_high"] and row["n"] == 3
    notes = [i.value for i in at.info if "interacts" in i.value]
    assert len(notes) == 1 and notes[0].startswith("response")
    assert any("Distillation vs scratch" in m.value for m in at.markdown)


def test_the_demo_preset_is_one_click_away(lab):
    store, suites = lab
    at = open_ablations()
    preset = demo_preset()
    assert any(preset.shows[:40] in c.value for c in at.caption)
    at.button(key="suite_demo").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (demo,) = [s for s in store.list_suites() if s["id"] not in {x["id"] for x in suites.values()}]
    assert RunConfig.from_dict(demo["base"]) == preset.config
    assert demo["seeds"] == preset.seeds and demo["owner"] == "bob" and not demo["factorial"]
    assert len(demo["runs"]) == preset.runs
    assert at.selectbox(key="suite_pick").value == demo["id"]


def test_the_demo_preset_is_offered_before_any_suite(home, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    config = home.parent / "workbench.toml"
    config.write_text('[workers]\napp_executes = "none"\n')
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    at = open_ablations()
    assert any("No ablation suite yet" in i.value for i in at.info)
    assert "suite_demo" in {b.key for b in at.button}
    st.cache_resource.clear()


def _dataframes_in_columns(at: AppTest) -> int:
    """How many tables sit inside an ``st.columns`` cell (a narrow one cuts them off)."""
    return sum(len(column.dataframe) for column in at.columns)


def test_the_result_tables_span_the_page(lab):
    """issue 19 item 6: at 1440 px the contribution table (beside the chart) lost its std and
    verdict columns, and the variant table its std: each table now spans the page."""
    store, suites = lab
    at = open_ablations({"suite": suites["loo"]["id"]})
    assert len(at.dataframe) >= 3  # contributions, variants, the suite's runs
    assert _dataframes_in_columns(at) == 0
