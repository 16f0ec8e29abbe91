"""The test view a finished run records (issue 21 item 1): the stratified subset, the
penultimate embeddings of every registered architecture, the packed arrays, the teacher's side
cached per teacher, the bounded cost, and older or damaged probes read as "none"."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.insight.probe_view import (
    EMBED_COMPONENTS,
    VIEW_SIZE,
    classifier_path,
    embeddings_and_logits,
    pack,
    unpack,
    unpack_view,
    view_subset,
)
from workbench.models.registry import build_model, list_models
from workbench.storage.repair import probe_arrays
from workbench.storage.store import Store
from workbench.ui import insight


def test_the_subset_is_stratified_bounded_and_fixed():
    labels = torch.tensor([0] * 700 + [1] * 300 + [2] * 50 + [3] * 1500)[torch.randperm(2550)]
    index = view_subset(labels)
    assert len(index) == VIEW_SIZE and torch.equal(index, index.sort().values)
    assert torch.equal(index, view_subset(labels))
    counts = torch.bincount(labels[index], minlength=4).tolist()
    # classes in turn: all 50 of class 2 and 300 of class 1, the other two share the rest
    assert counts == [325, 300, 50, 325]
    small = torch.tensor([1, 0, 1, 2])
    assert view_subset(small).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("arch", list_models())
def test_the_embedding_is_the_classifiers_input_for_every_architecture(arch):
    shape = (3, 32, 32)
    torch.manual_seed(0)
    model = build_model(arch, shape, 10).eval()
    x = torch.randn(3, *shape)
    emb, logits = embeddings_and_logits(model, x)
    classifier = model.get_submodule(classifier_path(model))
    assert emb.shape == (3, classifier.in_features) and logits.shape == (3, 10)
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-5)
        assert torch.allclose(classifier(emb), logits, atol=1e-4)


def test_a_model_whose_last_linear_is_not_its_output_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="not its output"):
        embeddings_and_logits(model, torch.randn(2, 4))


def test_pack_round_trips_and_refuses_what_is_not_numbers():
    values = np.random.default_rng(0).normal(size=(5, 3))
    back = unpack(json.loads(json.dumps(pack(values))))
    assert back.dtype == np.float32 and np.allclose(back, values, atol=2e-3)  # float16
    with pytest.raises(ValueError):
        unpack({"dtype": "object", "shape": [1], "b64": ""})


def _train(home, capsys, *extra: str) -> str:
    args = ["run", "--teacher", "small_cnn", "--student", "small_cnn", "--epochs", "1"]
    args += ["--teacher-epochs", "1", "--device", "cpu", "--json", *extra]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)["run_id"]


def test_a_run_records_its_view_and_the_teachers_once(home, capsys):
    first = _train(home, capsys)
    second = _train(home, capsys, "--seed", "1")
    store = Store(home)
    assert len(store.keys("teacher_view:")) == 1  # one teacher, one pass over its images
    views = [unpack_view(store.probe(r)) for r in (first, second)]
    for view in views:
        m = len(view["labels"])
        assert m == min(VIEW_SIZE, len(store.probe(first)["test_correct"]))
        assert view["student"]["embedding"].shape[0] == m
        assert view["student"]["embedding"].shape[1] <= EMBED_COMPONENTS
        assert view["teacher"]["logits"].shape == (m, 10)
    assert np.array_equal(views[0]["teacher"]["logits"], views[1]["teacher"]["logits"])
    assert not np.array_equal(views[0]["student"]["logits"], views[1]["student"]["logits"])
    assert main(["show", first, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert 0 <= metrics["knn_acc"] <= 1 and -1 <= metrics["silhouette"] <= 1
    assert metrics["teacher_knn_acc"] == pytest.approx(views[0]["teacher"]["knn_acc"])
    # the cost: float16 components and logits of both models, base64, beside the rest
    probe = store.probe(first)
    view_bytes = len(pickle.dumps(probe["test_view"]))
    m = len(views[0]["labels"])
    assert view_bytes <= 2 * m * (EMBED_COMPONENTS + 10) * 2 * 4 / 3 + 4096
    # the manifest holds the same view: a rebuilt index gives it back intact
    manifest = store.read_manifest(first)
    again = unpack_view(probe_arrays(manifest["probe"]))
    assert np.array_equal(again["student"]["embedding"], views[0]["student"]["embedding"])


def test_older_and_damaged_probes_have_no_view_and_say_so():
    assert unpack_view(None) is None and unpack_view({"cka": None}) is None
    damaged = {"test_view": {"index": [0, 1], "labels": [0, 1], "teacher": None}}
    damaged["test_view"]["student"] = {
        "embedding": {"dtype": "float16", "shape": [2, 2], "b64": "AA"}
    }
    assert unpack_view(damaged) is None
    records = [{"id": "a", "role": "student"}]
    inputs = insight.embedding_inputs(records, {"a": {"cka": None}}, {"a": "run a"})
    assert inputs.older == ["run a"] and not inputs.features
    assert insight.gallery_inputs({"cka": None}) is None
