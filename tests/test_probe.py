"""The per-run probe against values computed directly in the test."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.distill.similarity import cka_matrix, gram
from workbench.distill.taps import FeatureTaps, build_adapters, pair_layers
from workbench.models.registry import build_model, feature_layers
from workbench.training.probe import (
    PROBE_SIZE,
    gram_subset,
    per_class_accuracy,
    run_probe,
    teacher_probe_features,
)
from workbench.training.teacher_cache import LIMIT_ENV, cache_root, complete_entries


def test_gram_subset_is_class_sorted_and_capped():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2])
    picked = gram_subset(labels, per_class=2)
    assert labels[picked].tolist() == [0, 0, 1, 1, 2, 2]
    assert picked.tolist() == [1, 3, 2, 5, 0, 4]


def test_per_class_accuracy_by_hand():
    pred = torch.tensor([0, 1, 1, 2])
    labels = torch.tensor([0, 1, 0, 1])
    acc = per_class_accuracy(pred, labels, 3)
    assert acc[:2] == [0.5, 0.5] and acc[2] != acc[2]  # class 2 absent: NaN


def test_probe_matches_direct_computation():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    student, teacher = (
        build_model("small_cnn", shape, 10).eval(),
        build_model("resnet8x4", shape, 10).eval(),
    )
    s_layers, t_layers = feature_layers(student, shape), feature_layers(teacher, shape)
    pairs = pair_layers(s_layers, t_layers)
    adapters = build_adapters(pairs, s_layers, t_layers)
    x, y = torch.randn(40, *shape), torch.arange(40) % 10
    probe = run_probe(
        student=student,
        student_layers=[i.path for i in s_layers],
        teacher=teacher,
        teacher_layers=[i.path for i in t_layers],
        pairs=pairs,
        adapters=adapters,
        val_x=x,
        val_y=y,
        class_names=[str(i) for i in range(10)],
        device=torch.device("cpu"),
    )
    with torch.no_grad():
        with FeatureTaps(student, [i.path for i in s_layers]) as s_taps:
            student(x)
            s_feats = s_taps.features
        with FeatureTaps(teacher, [i.path for i in t_layers]) as t_taps:
            teacher(x)
            t_feats = t_taps.features
        expected_cka = cka_matrix(s_feats, t_feats).float().numpy()
        s_by, t_by = (
            dict(zip([i.path for i in s_layers], s_feats, strict=True)),
            dict(zip([i.path for i in t_layers], t_feats, strict=True)),
        )
        for k, (s_path, t_path) in enumerate(pairs):
            adapted = adapters[k](s_by[s_path])
            cos = (
                F.cosine_similarity(adapted, t_by[t_path], dim=1).mean().item()
            )  # channels per position
            assert abs(probe["pair_cosine"][k] - cos) < 1e-5
            subset = gram_subset(y)
            assert torch.allclose(
                torch.as_tensor(probe["grams"][k]["teacher"]), gram(t_by[t_path][subset]), atol=1e-6
            )
    assert abs(probe["cka"] - expected_cka).max() < 1e-5
    assert probe["gram_labels"].tolist() == sorted(probe["gram_labels"].tolist())


def _probe_case():
    torch.manual_seed(1)
    shape = (1, 8, 8)
    student = build_model("small_cnn", shape, 10).eval()
    teacher = build_model("resnet8x4", shape, 10).eval()
    s_layers, t_layers = feature_layers(student, shape), feature_layers(teacher, shape)
    pairs = pair_layers(s_layers, t_layers)
    kwargs = {
        "student": student,
        "student_layers": [i.path for i in s_layers],
        "teacher": teacher,
        "teacher_layers": [i.path for i in t_layers],
        "pairs": pairs,
        "adapters": build_adapters(pairs, s_layers, t_layers),
        "val_x": torch.randn(300, *shape),
        "val_y": torch.arange(300) % 10,
        "class_names": [str(i) for i in range(10)],
        "device": torch.device("cpu"),
    }
    return teacher, kwargs


def _assert_same_probe(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "teacher_features":
            continue
        if key == "grams":
            for ga, gb in zip(a[key], b[key], strict=True):
                assert ga["pair"] == gb["pair"]
                assert np.array_equal(ga["student"], gb["student"])
                assert np.allclose(ga["teacher"], gb["teacher"], rtol=0, atol=1e-6)
        elif isinstance(a[key], np.ndarray):
            assert np.allclose(a[key], b[key], rtol=0, atol=1e-6), key
        elif key == "pair_cosine":
            assert a[key] == pytest.approx(b[key], abs=1e-6)
        else:
            assert a[key] == b[key], key


def _count_forwards(model: torch.nn.Module) -> list[int]:
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, inputs: seen.append(len(inputs[0])))
    return seen


def test_cached_teacher_features_give_the_uncached_probe(store):
    teacher, kwargs = _probe_case()
    uncached = run_probe(**kwargs)
    assert uncached["teacher_features"] == "live: no store given"
    forwards = _count_forwards(teacher)
    cold = run_probe(**kwargs, store=store, teacher_id=None)
    assert cold["teacher_features"] == "cache: built now"
    assert sum(forwards) >= min(PROBE_SIZE, len(kwargs["val_x"]))  # the build's passes
    forwards.clear()
    warm = run_probe(**kwargs, store=store, teacher_id=None)
    assert warm["teacher_features"] == "cache: built by an earlier run"
    assert forwards == []  # the teacher did not run
    _assert_same_probe(uncached, cold)
    _assert_same_probe(uncached, warm)
    (entry,) = complete_entries(cache_root(store))
    meta = json.loads((entry.path / "meta.json").read_text())
    assert meta["kind"] == "probe" and meta["paths"] == kwargs["teacher_layers"]
    # Other probe samples or other layers are other entries; each equals its uncached probe.
    other = {**kwargs, "val_x": kwargs["val_x"].flip(0)}
    assert run_probe(**other, store=store)["teacher_features"] == "cache: built now"
    fewer = {
        **kwargs,
        "teacher_layers": kwargs["teacher_layers"][1:],
        "pairs": (),
        "adapters": None,
    }
    cached_fewer = run_probe(**fewer, store=store)
    assert cached_fewer["teacher_features"] == "cache: built now"
    _assert_same_probe(run_probe(**fewer), cached_fewer)
    assert len(complete_entries(cache_root(store))) == 3


def test_probe_features_key_on_the_teacher_weights(store):
    teacher, kwargs = _probe_case()
    run_probe(**kwargs, store=store)
    with torch.no_grad():
        next(teacher.parameters()).add_(0.5)  # another teacher (no run id: keyed on the weights)
    changed = run_probe(**kwargs, store=store)
    assert changed["teacher_features"] == "cache: built now"
    _assert_same_probe(run_probe(**kwargs), changed)


def test_probe_runs_the_teacher_live_when_the_cache_is_too_small(store, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "1000")
    _teacher, kwargs = _probe_case()
    live = run_probe(**kwargs, store=store)
    assert live["teacher_features"] == "live: over the teacher cache limit"
    assert complete_entries(cache_root(store)) == []
    _assert_same_probe(run_probe(**kwargs), live)


def test_concurrent_probes_build_one_entry(store):
    teacher, kwargs = _probe_case()
    x = kwargs["val_x"][:PROBE_SIZE]
    paths = kwargs["teacher_layers"]
    copies = [teacher, copy.deepcopy(teacher)]  # each run loads its own teacher module
    forwards = [_count_forwards(m) for m in copies]
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def probe(i: int) -> None:
        barrier.wait()
        results[i] = teacher_probe_features(copies[i], paths, x, store=store)

    threads = [threading.Thread(target=probe, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(note for _, note in results) == [
        "cache: built by an earlier run",
        "cache: built now",
    ]
    assert sum(b for f in forwards for b in f if b > 2) == len(x)  # one build, one pass
    assert len(complete_entries(cache_root(store))) == 1
    live, _ = teacher_probe_features(teacher, paths, x)
    for feats, _ in results:
        for got, want in zip(feats, live, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
