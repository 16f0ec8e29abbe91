"""Every page loads from any URL (issue 18 item 14): 80 random and hostile query strings per
page, through AppTest, on one store of fabricated runs and a suite.

A query string mixes the page's own keys, the Distill draft's (every page carries it) and junk
keys, with values that a stale, hand-edited or hostile link may hold: empty, ``nan``, ``inf``,
out of range, 10,000 characters, control characters, look-alike letters, markdown and HTML
payloads, comma lists, repeated keys. A page passes a query when it raises nothing, shows no
"Something went wrong" (the app's net for a bug) and renders no markup from the link.
Seeded: a failure names its query, and reruns the same.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.test_compare_page import fabricate_store, recorded
from tests.test_markup import PAYLOADS, live_markup, rendered_texts
from workbench.ablation.suites import launch_suite
from workbench.config.run_config import LossWeights, RunConfig
from workbench.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60
QUERIES = int(os.environ.get("KDWB_FUZZ_QUERIES", "80"))  # per page; `make fuzz`: 400
DRAFT_KEYS = (
    "dataset", "data_path", "teacher", "student", "teacher_mode", "teacher_epochs",
    "teacher_run", "layer_pairs", "temperature", "feature_kind", "relation_kind", "weighting",
    "epochs", "batch_size", "lr", "seeds", "device", "run_name", "run_tags",
    "w_label", "w_response", "w_feature", "w_relation",
    "response_kind", "dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma",
    "optimizer", "momentum", "weight_decay", "schedule", "milestones", "lr_decay",
    "warmup_epochs",
)  # fmt: skip
PAGES = {  # page -> its own URL keys
    "app.py": (),
    "pages/distill.py": (),
    "pages/runs.py": ("run", "x", "smooth", "log", "mine", "suite"),
    "pages/compare.py": (
        "runs",
        "group",
        "colour",
        "loss",
        "x",
        "smooth",
        "log",
        "mine",
        "cka_base",
        "cka_run",
    ),
    "pages/ablations.py": ("suite",),
    "pages/search.py": ("search",),
}
JUNK_KEYS = ("", "zzz", "runs[]", "<img src=x>", "k" * 300, "smooth ", "RUN", "\u0430dmin")
HOSTILE = (
    "", " ", "nan", "NaN", "inf", "-inf", "-1", "0", "1", "2", "1e308", "-1e308", "1e-320",
    "0.97", "5", "0.33", "0.05", "0.95", "9" * 5000, "x" * 10_000, "\u0430dmin", "\u00fc",
    "\U0001f600" * 50, "\x00", "%00", "\u202e", "\n", "\t", "true", "None", "[]", "{}",
    "auto", ">", "a>b", "a>b;c>", ";;", ",", ",,,", ":red[x]", "$x$", "javascript:alert(1)",
    "step", "time", "epoch", "none", "seeds of one config", "weighting", "total", "feature",
    "digits", "image_folder", "mlp", "pick a trained teacher", "upload a checkpoint", "cuda",
    *PAYLOADS,
)  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    """Fabricated runs (two seed groups, a teacher, a failed run) and a suite, opened by bob."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))
        mp.setenv("KDWB_HOME", str(home))
        mp.setenv("KDWB_USER", "bob")
        config = home.parent / "workbench.toml"
        config.write_text('[workers]\napp_executes = "none"\n')
        mp.setenv("KDWB_CONFIG", str(config))
        store = Store(home)
        runs = fabricate_store(store)
        base = RunConfig(weights=LossWeights(0.5, 0.5, 0.0, 0.0))
        suite = launch_suite(base, store, recorded(store), seeds=1, name="s")
        yield store, [*runs.values(), suite["id"]]
        st.cache_resource.clear()
        store.close()


def random_value(rng: random.Random, ids: list[str]) -> str:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(HOSTILE)
    if roll < 0.75:
        return rng.choice(ids)
    if roll < 0.9:  # a comma list of ids, junk and payloads
        parts = rng.choices([*ids, *HOSTILE[:20], *PAYLOADS], k=rng.randint(2, 6))
        return ",".join(parts)
    return "".join(
        rng.choice("[]()!<>&:*_`~$#|\\;,>%\u0430x01.") for _ in range(rng.randint(1, 40))
    )


def random_query(rng: random.Random, keys: tuple[str, ...], ids: list[str]) -> dict:
    query: dict[str, str | list[str]] = {}
    for _ in range(rng.randint(1, 5)):
        pool = keys if keys and rng.random() < 0.5 else DRAFT_KEYS
        key = rng.choice(JUNK_KEYS) if rng.random() < 0.1 else rng.choice(pool)
        if rng.random() < 0.1:  # a repeated key: ?smooth=0.5&smooth=nan
            query[key] = [random_value(rng, ids) for _ in range(rng.randint(2, 3))]
        else:
            query[key] = random_value(rng, ids)
    return query


def problems(page: str, query: dict) -> list[str]:
    """What went wrong on ``page`` opened with ``query`` (nothing: answered cleanly)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(query)
    if page != "app.py":
        at.switch_page(page)
    at.run()
    found = [f"exception: {e.value[:200]}" for e in at.exception]
    found += [f"bug: {e.value[:200]}" for e in at.error if "Something went wrong" in e.value]
    found += [f"markup: {t[:200]}" for t in rendered_texts(at) if live_markup(t)]
    return found


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_loads_from_any_url(fuzz_store, page):
    _, ids = fuzz_store
    rng = random.Random(f"url fuzz {page}")
    failures = {}
    for i in range(QUERIES):
        query = random_query(rng, PAGES[page], ids)
        if found := problems(page, query):
            failures[i] = (query, found)
    shown = {i: ({k: str(v)[:60] for k, v in q.items()}, f) for i, (q, f) in failures.items()}
    assert not failures, f"{len(failures)} of {QUERIES} queries failed: {shown}"


# ---------------------------------------------------------------------------------- the links seen
def open_page(page: str, query: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(query)
    if page != "app.py":
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "Something went wrong" in e.value]
    return at


@pytest.mark.parametrize("page", list(PAGES))
def test_layer_pairs_auto_opens_every_page(fuzz_store, page):
    """The app writes ``layer_pairs=auto`` itself; it crashed with a KeyError on "teacher"."""
    at = open_page(page, {"layer_pairs": "auto"})
    assert at.session_state["layer_pairs"] == ()


@pytest.mark.parametrize("page", ["pages/runs.py", "pages/compare.py"])
@pytest.mark.parametrize("smooth", ["0.97", "5", "nan"])
def test_smoothing_out_of_range_is_dropped_with_a_note(fuzz_store, page, smooth):
    at = open_page(page, {"smooth": smooth})
    key = "runs_smooth" if "runs" in page else "compare_smooth"
    assert at.session_state[key] == 0.0
    notes = [i.value for i in at.info if "from the link" in i.value]
    why = (
        "not a finite number" if smooth == "nan" else "not a number from 0 to 0.95 in steps of 0.05"
    )
    assert notes == [f"ignored smooth={smooth} from the link: {why}"]


def test_draft_values_no_widget_can_hold_are_dropped_with_a_note(fuzz_store):
    at = open_page("pages/distill.py", {"dataset": "<img src=x>", "epochs": "0", "lr": "nan"})
    assert at.session_state["dataset"] == "digits" and at.session_state["epochs"] == 3
    (note,) = [i.value for i in at.info if "from the link" in i.value]
    assert r"ignored dataset=\<img src=x\> from the link: not one of the choices" in note
    assert "ignored epochs=0 from the link: not a whole number from 1 to 500" in note
    assert "ignored lr=nan from the link: not a finite number" in note
