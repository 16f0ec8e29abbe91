"""Compare's views of what the student learned (issue 21): embeddings, same-layer CKA over
seeds, the disagreement gallery and Grad-CAM, on real runs (3 configs x 2 seeds on digits,
trained once for the module), and the "run it again" note for a run probed before them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.test_compare_page import APP, ROOT, TIMEOUT, assert_clean, charts, fabricate_run
from workbench.cli import main
from workbench.errors import ConfigError
from workbench.insight.cam_runs import cam_results
from workbench.lab.identity import User
from workbench.storage.store import Store
from workbench.ui import compare

CONFIGS = {  # shown name -> flags; the teacher is trained by the first run and reused
    "kd": ["--weights", "label=0.5,response=0.5"],
    "scratch": ["--weights", "label=1"],
    "mlp": ["--student", "mlp", "--weights", "label=0.5,response=0.5"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with a small_cnn teacher and 6 students: each config with seeds 0 and 1."""
    home = tmp_path_factory.mktemp("insight") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDWB_HOME", str(home))
        ids: dict[str, list[str]] = {}
        for name, flags in CONFIGS.items():
            for seed in (0, 1):
                args = ["run", "--teacher", "small_cnn", "--student", "small_cnn"]
                args += ["--epochs", "2", "--teacher-epochs", "2", "--device", "cpu"]
                args += ["--seed", str(seed), "--name", name, "--json", *flags]
                assert main(args) == 0
                ids.setdefault(name, []).append(_last_run(home))
    return home, ids


def _last_run(home) -> str:
    store = Store(home)
    try:
        return store.list_runs(role="student")[0]["id"]  # newest first
    finally:
        store.close()


@pytest.fixture
def store(trained, tmp_path, monkeypatch):
    """A copy of the trained store per test (a test may add runs to it)."""
    home = tmp_path / "home"
    shutil.copytree(trained[0], home)
    monkeypatch.setenv("KDWB_HOME", str(home))
    monkeypatch.syspath_prepend(str(ROOT))
    s = Store(home)
    yield s
    st.cache_resource.clear()
    st.cache_data.clear()
    s.close()


def _open(selection: list[str], **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.session_state["compare_runs"] = selection
    for k, v in state.items():
        at.session_state[k] = v
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    return at


def _all(trained) -> list[str]:
    return [r for ids in trained[1].values() for r in ids]


def test_compare_shows_every_new_view_for_three_configs_of_two_seeds(trained, store):
    at = _open(_all(trained))
    drawn = charts(at)
    maps = drawn["compare_embeddings"]
    titles = [a["text"] for a in maps["layout"]["annotations"]]
    assert len(titles) == 1 + 6  # the teacher, then each run: a map is one model's
    assert titles[0].startswith("teacher") and all("kNN" in t for t in titles)
    assert len(set(titles)) == len(titles)
    bars = drawn["compare_same_layer_cka"]
    grouped = [t for t in bars["data"] if t["error_y"]["visible"]]
    assert len(grouped) == 3  # each seed group has a spread
    assert "mean ± sd" in bars["layout"]["title"]["text"]
    assert "compare_gallery_classes" in drawn and "compare_reliability" in drawn
    scores = [d.value for d in at.dataframe if "kNN acc (map)" in d.value.columns][0]
    assert len(scores) == 7 and scores["kNN acc (embedding)"].between(0, 1).all()


def test_the_seed_means_of_cka_are_the_mean_and_sd_of_the_seeds(trained, store):
    ids = trained[1]["kd"]
    probes = {i: store.probe(i) for i in ids}
    records = [store.get_run(i) for i in ids]
    (probe,) = compare.probe_units(compare.units(records), probes)[0].values()
    stacked = np.stack([np.asarray(probes[i]["cka"], dtype=float) for i in ids])
    assert np.allclose(probe["cka"], stacked.mean(axis=0))
    assert np.allclose(probe["cka_sd"], stacked.std(axis=0, ddof=1))
    table = compare.same_layer_table({"kd": probe})
    i, j = compare.same_layer_indices(probe)[0]
    assert table["cka"].iloc[0] == pytest.approx(stacked[:, i, j].mean())
    assert table["sd"].iloc[0] == pytest.approx(stacked[:, i, j].std(ddof=1))


def test_the_per_run_toggle_draws_every_seed(trained, store):
    at = _open(_all(trained))
    at.toggle(key="compare_cka_per_run").set_value(True).run()
    assert_clean(at)
    heatmaps = [t for t in charts(at)["compare_cka"]["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 6


def test_a_gallery_click_filters_by_class_and_grad_cam_draws_the_picked_images(trained, store):
    kd = trained[1]["kd"][0]
    scratch = trained[1]["scratch"][0]
    at = _open([kd, scratch], compare_gallery_class="3", compare_gallery_group="both_wrong")
    assert at.selectbox(key="compare_gallery_class").value == "3"
    caption = "\n".join(c.value for c in at.caption)
    assert "image(s) of the" in caption
    group = at.session_state["compare_gallery_group"]
    assert group == "both_wrong"
    at.session_state["compare_gallery_group"] = "teacher_only"
    at.session_state["compare_gallery_class"] = "all classes"
    at.run()
    picker = at.multiselect(key="compare_cam_images")
    if not picker.options:  # no disagreement of this kind: show the reverse
        at.session_state["compare_gallery_group"] = "student_only"
        at.run()
        picker = at.multiselect(key="compare_cam_images")
    picked = [int(o.split()[2]) for o in picker.options[:2]]
    at.session_state["compare_cam_images"] = picked
    at.run()
    at.button(key="compare_cam_go").click().run()
    assert_clean(at)
    grid = charts(at)["compare_cam"]
    images = [t for t in grid["data"] if t["type"] == "image"]
    assert len(images) == len(picked) * (1 + 1 + 2)  # the image, the teacher, both runs


def test_grad_cam_refuses_an_mlp_with_a_note(trained, store):
    mlp = trained[1]["mlp"][0]
    result = cam_results(store, User("alice"), [mlp], [0, 1])
    assert [p.name for p in result.panels] == ["teacher"]
    assert any("MLP" in note for note in result.notes)


def test_grad_cam_reads_no_weights_of_a_private_run_of_someone_else(trained, store):
    kd = trained[1]["kd"][0]
    store.update_run(kd, owner="alice", private=True)
    with pytest.raises(ConfigError, match="no run"):
        cam_results(store, User("bob"), [kd], [0])
    assert cam_results(store, User("alice"), [kd], [0]).panels


def test_a_run_probed_before_the_views_says_to_run_it_again(trained, store):
    old = fabricate_run(store, "older", seed=5)
    at = _open([*trained[1]["kd"], old])
    notes = "\n".join(c.value for c in at.caption)
    assert "No embeddings for older" in notes and "run them again" in notes
    assert "No per-image data for older" in notes


def test_show_json_prints_the_embedding_scores(trained, store, capsys):
    assert main(["show", trained[1]["kd"][0], "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert {"knn_acc", "silhouette", "teacher_knn_acc", "ece", "logit_gap"} <= set(metrics)


def test_the_csv_export_and_the_html_report_carry_the_new_views(trained, store, downloads):
    _open(_all(trained))
    html = downloads["compare_report"]()
    for heading in ("Embeddings (PCA)", "Same-layer CKA", "Embedding scores (PCA map)"):
        assert f"<h2>{heading}</h2>" in html
    assert "<h2>Disagreements of " in html and "<h2>Accuracy per class on the test subset" in html
    header = downloads["compare_table_csv"]().splitlines()[0].split(",")
    assert {"knn_acc", "silhouette", "ece", "logit_gap"} <= set(header)
