"""The per-run probe against values computed directly in the test."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.analysis import cka_matrix, gram
from workbench.features import FeatureTaps, build_adapters, pair_layers
from workbench.models import build_model, feature_layers
from workbench.probe import gram_subset, per_class_accuracy, run_probe


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
