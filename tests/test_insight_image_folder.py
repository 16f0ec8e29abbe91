"""Issue 21 item 8: the new views work for runs on an ``image_folder`` dataset (RGB, resized to
32x32, class names from the folders): the probe's test view, the calibration metrics,
Grad-CAM of the teacher and a CNN student (an MLP gets its note) and the Compare page with
every view, on a small folder of images the test writes itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.test_compare_page import APP, ROOT, TIMEOUT, assert_clean, charts
from workbench.cli import main
from workbench.insight.cam_runs import cam_results
from workbench.insight.probe_view import unpack_view
from workbench.lab.identity import User
from workbench.storage.store import Store

CLASSES = ("circle", "square", "stripes")


def _draw(kind: str, rng: np.random.Generator) -> Image.Image:
    """A 24x24 RGB picture of ``kind``, with noise, so that the classes can be learned."""
    pixels = rng.integers(0, 60, size=(24, 24, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:24, :24]
    if kind == "circle":
        mask = (yy - 12) ** 2 + (xx - 12) ** 2 < 49
    elif kind == "square":
        mask = (abs(yy - 12) < 7) & (abs(xx - 12) < 7)
    else:
        mask = (xx // 3) % 2 == 0
    pixels[mask] = (220, 200, 40)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def folder_runs(tmp_path_factory):
    """A store with a small_cnn teacher, a small_cnn and an mlp student on a 3-class folder of
    15 images per class (9 test images)."""
    base = tmp_path_factory.mktemp("folder")
    root, home = base / "data", base / "home"
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        (root / "shapes" / kind).mkdir(parents=True)
        for i in range(15):
            _draw(kind, rng).save(root / "shapes" / kind / f"{i}.png")
    config = base / "workbench.toml"
    config.write_text(f"[data]\nroots = [{str(root)!r}]\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDWB_HOME", str(home))
        mp.setenv("KDWB_CONFIG", str(config))
        ids = {}
        for student in ("small_cnn", "mlp"):
            args = ["run", "--dataset", "image_folder", "--data-path", str(root / "shapes")]
            args += ["--teacher", "small_cnn", "--student", student, "--epochs", "2"]
            args += ["--teacher-epochs", "2", "--device", "cpu", "--name", student, "--json"]
            args += ["--weights", "label=0.5,response=0.5", "--batch-size", "8"]
            assert main(args) == 0
            store = Store(home)
            try:
                ids[student] = store.list_runs(role="student")[0]["id"]  # newest first
            finally:
                store.close()
    return home, config, ids


@pytest.fixture
def store(folder_runs, monkeypatch):
    home, config, _ = folder_runs
    monkeypatch.setenv("KDWB_HOME", str(home))
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    monkeypatch.syspath_prepend(str(ROOT))
    s = Store(home)
    yield s
    st.cache_resource.clear()
    st.cache_data.clear()
    s.close()


def test_the_probe_keeps_the_view_and_the_metrics_for_an_image_folder(folder_runs, store):
    for run_id in folder_runs[2].values():
        record = store.get_run(run_id)
        assert record["status"] == "completed", record.get("error")
        metrics = record["metrics"]
        for key in ("ece", "nll", "logit_gap", "knn_acc", "silhouette", "teacher_knn_acc"):
            assert metrics[key] is not None and np.isfinite(metrics[key]), key
        view = unpack_view(store.probe(run_id))
        assert view is not None
        assert sorted(set(view["labels"].tolist())) == [0, 1, 2]  # stratified: every class
        assert view["student"]["logits"].shape == (len(view["labels"]), len(CLASSES))
        assert view["teacher"]["embedding"].shape[0] == len(view["labels"])


def test_grad_cam_maps_the_teacher_and_the_cnn_and_notes_the_mlp(folder_runs, store):
    ids = folder_runs[2]
    result = cam_results(store, User("anyone"), [ids["small_cnn"], ids["mlp"]], [0, 1, 2])
    assert [p.name for p in result.panels] == ["teacher", "small_cnn"]
    assert result.images.shape == (3, 32, 32, 3)  # the folder's images, resized to 32x32
    for panel in result.panels:
        assert panel.maps.shape == (3, 32, 32)
    assert any(n.startswith("mlp") and "MLP" in n for n in result.notes)


def test_compare_draws_every_view_for_image_folder_runs(folder_runs, store):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.session_state["compare_runs"] = list(folder_runs[2].values())
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    drawn = charts(at)
    for key in ("compare_embeddings", "compare_reliability", "compare_gallery_classes"):
        assert key in drawn, sorted(drawn)
    titles = [a["text"] for a in drawn["compare_embeddings"]["layout"]["annotations"]]
    assert len(titles) == 3 and titles[0].startswith("teacher")
    assert "run it again" not in json.dumps([c.value for c in at.caption])
