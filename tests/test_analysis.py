"""Similarity metrics against numpy references and CKA's invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench.analysis as analysis
from workbench.analysis import cka_matrix, gram, linear_cka, pair_cosine
from workbench.losses import feature_loss


@pytest.fixture(autouse=True)
def _seeded():
    """Unseeded draws in these tests are reproducible too."""
    torch.manual_seed(0)


def _np_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """HSIC form with the centring matrix H: tr(Kx H Ky H) / sqrt(tr(Kx H Kx H) tr(Ky H Ky H)),
    Kx = X X^T on the uncentred features."""
    x = x.reshape(len(x), -1).double().numpy()
    y = y.reshape(len(y), -1).double().numpy()
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return float(hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky)))


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("n", "dx", "dy"),
    [(60, 5, 8), (10, 50, 80), (20, 3, 400)],  # feature space, sample space, cheaper: sample
)
def test_linear_cka_matches_numpy(n, dx, dy):
    x = _randn(n, dx, seed=0)
    y = x[:, :1].repeat(1, dy) + _randn(n, dy, seed=1)  # correlated, so CKA is not tiny
    assert linear_cka(x, y) == pytest.approx(_np_cka(x, y), rel=1e-10)


@pytest.mark.parametrize(("n", "d"), [(40, 6), (8, 30)])
def test_sample_and_feature_space_forms_agree(n, d):
    x, y = _randn(n, d, seed=2) + 3.0, _randn(n, 2 * d, seed=3).abs()  # non-centred, like ReLU
    values = []
    for sample_space in (True, False):
        a = analysis._layer(x, sample_space=sample_space, chunk_size=4)
        b = analysis._layer(y, sample_space=sample_space, chunk_size=4)
        values.append(float(analysis._cka(a, b)))
    assert values[0] == pytest.approx(values[1], rel=1e-10)
    assert values[0] == pytest.approx(_np_cka(x, y), rel=1e-10)


def test_cka_invariances_symmetry_and_range():
    x = _randn(30, 12, seed=4).double()  # so that x + 100 is exact enough
    q, _ = torch.linalg.qr(_randn(12, 12, seed=5).double())  # orthogonal
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 100.0) == pytest.approx(1.0, abs=1e-12)
    wide = _randn(30, 100, seed=6).double()  # sample-space form too
    assert linear_cka(wide, -0.5 * wide + 3.0) == pytest.approx(1.0, abs=1e-12)
    for seed in range(5):
        a, b = _randn(15, 4, seed=10 + seed), _randn(15, 40, seed=20 + seed)
        value = linear_cka(a, b)
        assert value == pytest.approx(linear_cka(b, a), abs=1e-12)
        assert 0.0 <= value <= 1.0


def test_linear_cka_is_accurate_far_from_the_origin():
    x = _randn(50, 20, seed=7)
    y = x @ _randn(20, 30, seed=8)
    far = linear_cka(x + 1e4, y + 1e4)  # float32 inputs, float64 centring
    assert far == pytest.approx(_np_cka(x, y), rel=1e-6)


def test_constant_features_have_undefined_cka():
    assert np.isnan(linear_cka(torch.ones(10, 3), _randn(10, 3, seed=9)))


def test_cka_flattens_per_sample_and_rejects_different_samples():
    x = _randn(12, 2, 3, 3, seed=10)
    y = _randn(12, 4, seed=11)
    assert linear_cka(x, y) == pytest.approx(_np_cka(x, y), rel=1e-10)
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(x, y[:5])


def _layers():
    n = 16
    base = _randn(n, 5, seed=12)
    # D <= N (feature space) and D > N (sample space) on each side, correlated with one another.
    students = [
        base,
        (base @ _randn(5, 40, seed=13)).reshape(n, 10, 2, 2) + _randn(n, 10, 2, 2, seed=14),
    ]
    teachers = [
        _randn(n, 3, seed=15) + base[:, :3],
        base @ _randn(5, 64, seed=16),
        _randn(n, 12, seed=17).relu(),
    ]
    return students, teachers


def test_cka_matrix_equals_linear_cka_per_pair_with_mixed_representations():
    students, teachers = _layers()
    matrix = cka_matrix(students, teachers, chunk_size=7)
    assert matrix.shape == (2, 3) and matrix.dtype == torch.float64
    for i, s in enumerate(students):
        for j, t in enumerate(teachers):
            assert matrix[i, j].item() == pytest.approx(linear_cka(s, t), rel=1e-10, abs=1e-14)
            assert matrix[i, j].item() == pytest.approx(_np_cka(s, t), rel=1e-10, abs=1e-14)


def test_cka_matrix_computes_each_layer_once(monkeypatch):
    students, teachers = _layers()
    calls = []
    original = analysis._layer

    def counted(x, **kwargs):
        calls.append(x.shape)
        return original(x, **kwargs)

    monkeypatch.setattr(analysis, "_layer", counted)
    cka_matrix(students, teachers)
    assert len(calls) == len(students) + len(teachers)
    calls.clear()
    feats = students + teachers
    self_matrix = cka_matrix(feats, feats)
    assert len(calls) == len(feats)
    assert torch.equal(self_matrix, self_matrix.T)
    assert torch.diagonal(self_matrix).tolist() == pytest.approx([1.0] * len(feats), abs=1e-12)


def test_cka_matrix_chunking_does_not_change_the_result():
    students, teachers = _layers()
    a = cka_matrix(students, teachers, chunk_size=1)
    b = cka_matrix(students, teachers, chunk_size=10_000)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_cka_matrix_accepts_inference_tensors_and_empty_lists():
    with torch.inference_mode():
        students, teachers = _layers()
        inside = cka_matrix(students, teachers)
    assert torch.allclose(inside, cka_matrix(*_layers()))
    assert cka_matrix([], teachers).shape == (0, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        cka_matrix(students, teachers, chunk_size=0)


def test_gram_rows_have_unit_norm_and_match_numpy():
    x = _randn(6, 2, 2, 2, seed=18)
    g = gram(x)
    f = x.reshape(6, -1).double().numpy()
    dots = f @ f.T
    expected = dots / np.sqrt((dots**2).sum(axis=1, keepdims=True))
    assert g.shape == (6, 6) and g.dtype == torch.float32
    assert np.allclose(g.numpy(), expected, atol=1e-6)
    assert torch.allclose(g.norm(dim=1), torch.ones(6), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (3, 6, 8), (5, 9)])
def test_pair_cosine_is_one_minus_the_cosine_loss(shape):
    s, t = _randn(*shape, seed=19), _randn(*shape, seed=20)
    expected = 1.0 - feature_loss(s, t, "cosine").item()
    assert pair_cosine(s, t) == pytest.approx(expected, abs=1e-6)
    assert pair_cosine(s, 2.0 * s) == pytest.approx(1.0, abs=1e-12)
    assert pair_cosine(s, -s) == pytest.approx(-1.0, abs=1e-12)


def test_inputs_are_not_modified():
    x, y = _randn(12, 30, seed=21).double(), _randn(12, 4, seed=22)
    before = x.clone(), y.clone()
    linear_cka(x, y)
    cka_matrix([x], [y, x], chunk_size=7)
    gram(x)
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])
