"""Similarity metrics against numpy references and CKA's invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench.distill.similarity as analysis
from workbench.distill.similarity import cka_matrix, gram, linear_cka, pair_cosine


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


@pytest.mark.parametrize("form", analysis.FORMS)
@pytest.mark.parametrize(("n", "d", "rows"), [(40, 6, 160), (8, 30, 160), (23, 9, 5), (50, 70, 7)])
def test_both_forms_match_numpy(monkeypatch, form, n, d, rows):
    """Each form, with one strip of Gram rows and with several (the last one ragged)."""
    monkeypatch.setattr(analysis, "GRAM_ROWS", rows)
    x, y = _randn(n, d, seed=2) + 3.0, _randn(n, 2 * d, seed=3).abs()  # non-centred, like ReLU
    z = _randn(n, 3, seed=4) + x[:, :3]
    values = cka_matrix([x, y], [y, z, x], form=form, chunk_size=4)
    for i, s in enumerate([x, y]):
        for j, t in enumerate([y, z, x]):
            assert values[i, j].item() == pytest.approx(_np_cka(s, t), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("form", analysis.FORMS)
def test_cka_invariances_symmetry_and_range(monkeypatch, form):
    def linear_cka(a, b):  # in the form under test, over several strips of Gram rows
        return cka_matrix([a], [b], form=form).item()

    monkeypatch.setattr(analysis, "GRAM_ROWS", 8)
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


@pytest.mark.parametrize("form", analysis.FORMS)
def test_cka_is_accurate_far_from_the_origin(monkeypatch, form):
    monkeypatch.setattr(analysis, "GRAM_ROWS", 16)
    x = _randn(50, 20, seed=7)
    y = x @ _randn(20, 30, seed=8)
    far = cka_matrix([x + 1e4], [y + 1e4], form=form).item()  # float32 in, float64 centring
    assert far == pytest.approx(_np_cka(x, y), rel=1e-6)


@pytest.mark.parametrize("form", analysis.FORMS)
def test_constant_features_have_undefined_cka(form):
    values = cka_matrix([torch.ones(10, 3)], [_randn(10, 3, seed=9), torch.ones(10, 2)], form=form)
    assert torch.isnan(values).all()
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


@pytest.mark.parametrize("form", [None, *analysis.FORMS])
def test_cka_matrix_equals_linear_cka_per_pair(form):
    students, teachers = _layers()
    matrix = cka_matrix(students, teachers, chunk_size=7, form=form)
    assert matrix.shape == (2, 3) and matrix.dtype == torch.float64
    for i, s in enumerate(students):
        for j, t in enumerate(teachers):
            assert matrix[i, j].item() == pytest.approx(linear_cka(s, t), rel=1e-10, abs=1e-14)
            assert matrix[i, j].item() == pytest.approx(_np_cka(s, t), rel=1e-10, abs=1e-14)


def test_cka_matrix_computes_each_layer_once(monkeypatch):
    students, teachers = _layers()
    monkeypatch.setattr(analysis, "GRAM_ROWS", 5)  # 16 samples: strips at rows 0, 5, 10, 15
    calls = {"centred": 0, "strip": 0}
    centred, strip = analysis._centred, analysis._gram_strip

    def counted_centred(x):
        calls["centred"] += 1
        return centred(x)

    def counted_strip(*args):
        calls["strip"] += 1
        return strip(*args)

    monkeypatch.setattr(analysis, "_centred", counted_centred)
    monkeypatch.setattr(analysis, "_gram_strip", counted_strip)
    feats = students + teachers
    for form, key, per_layer in (("features", "centred", 1), ("gram", "strip", 4)):
        calls.update(centred=0, strip=0)
        cka_matrix(students, teachers, form=form)
        assert calls[key] == per_layer * len(feats)
        calls.update(centred=0, strip=0)
        self_matrix = cka_matrix(feats, feats, form=form)
        assert calls[key] == per_layer * len(feats)
        assert torch.equal(self_matrix, self_matrix.T)
        assert torch.diagonal(self_matrix).tolist() == pytest.approx([1.0] * len(feats), abs=1e-12)


def _hand_work(n, s_widths, t_widths, rows):
    """The two forms' multiply-adds counted one product at a time (Gram strips of ``rows``)."""
    features = 0
    for d in [*s_widths, *t_widths]:
        features += n * d * d if d <= n else n * n * d  # Xc^T Xc or Xc Xc^T, for the norm
    for a in s_widths:
        for b in t_widths:
            features += n * a * b  # Xt^T Xs
    entries = 0
    for start in range(0, n, rows):
        entries += min(rows, n - start) * (n - start)
    pairs = len(s_widths) * len(t_widths) + len(s_widths) + len(t_widths)
    gram_form = entries * sum(s_widths) + entries * sum(t_widths)
    gram_form += analysis.PAIR_COST * entries * pairs
    return {"features": features, "gram": gram_form}


@pytest.mark.parametrize(
    ("n", "s_widths", "t_widths"),
    [(1000, [256] * 8, [512] * 8), (5000, [256] * 8, [512] * 8), (300, [16, 900], [5000, 40])],
)
def test_cka_work_counts_each_product(n, s_widths, t_widths):
    work = analysis.cka_work(n, s_widths, t_widths)
    assert work == pytest.approx(_hand_work(n, s_widths, t_widths, analysis.GRAM_ROWS))


@pytest.mark.parametrize(
    ("n", "s_widths", "t_widths", "expected"),
    [
        (1000, [256] * 8, [512] * 8, "gram"),  # the Tanh towers: N^2 D < N Ds Dt
        (5000, [256] * 8, [512] * 8, "features"),  # same widths, 5x the samples
        (500, [16, 32, 64], [32, 64, 128], "features"),  # narrow layers, many samples
        (64, [2048, 4096], [8192], "gram"),  # wide layers, few samples
        (2000, [8] * 16, [8] * 16, "features"),  # many narrow pairs
    ],
)
def test_cka_form_picks_the_form_with_less_work(n, s_widths, t_widths, expected):
    work = _hand_work(n, s_widths, t_widths, analysis.GRAM_ROWS)
    assert min(work, key=work.get) == expected  # the regime, from the hand count
    assert analysis.cka_form(n, s_widths, t_widths) == expected


def test_cka_matrix_uses_the_chosen_form(monkeypatch):
    used = []
    for name in ("_features_form", "_gram_form"):
        original = getattr(analysis, name)

        def spy(*args, _original=original, _name=name):
            used.append(_name)
            return _original(*args)

        monkeypatch.setattr(analysis, name, spy)
    narrow = [_randn(200, 4, seed=30), _randn(200, 6, seed=31)]
    wide = [_randn(20, 300, seed=32), _randn(20, 500, seed=33)]
    cka_matrix(narrow[:1], narrow[1:])
    cka_matrix(wide[:1], wide[1:])
    assert used == ["_features_form", "_gram_form"]
    assert analysis.cka_form(200, [4], [6]) == "features"
    assert analysis.cka_form(20, [300], [500]) == "gram"
    with pytest.raises(ValueError, match="form"):
        cka_matrix(narrow, narrow, form="sample")


def test_cka_matrix_chunking_does_not_change_the_result():
    students, teachers = _layers()
    a = cka_matrix(students, teachers, chunk_size=1, form="gram")
    b = cka_matrix(students, teachers, chunk_size=10_000, form="gram")
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_cka_matrix_accepts_inference_tensors_and_empty_lists():
    for form in analysis.FORMS:
        with torch.inference_mode():
            students, teachers = _layers()
            inside = cka_matrix(students, teachers, form=form)
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
def test_pair_cosine_is_the_mean_cosine_of_the_feature_vectors(shape):
    s, t = _randn(*shape, seed=19), _randn(*shape, seed=20)
    # numpy, one vector at a time: channels at each position of [B, C, H, W], the last dim of
    # [B, T, D], the features of [B, D]
    a, b = s.double().numpy(), t.double().numpy()
    if a.ndim == 4:
        a, b = a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    cosines = [u @ v / np.linalg.norm(u) / np.linalg.norm(v) for u, v in zip(a, b, strict=True)]
    assert pair_cosine(s, t) == pytest.approx(float(np.mean(cosines)), abs=1e-9)
    assert pair_cosine(s, 2.0 * s) == pytest.approx(1.0, abs=1e-12)
    assert pair_cosine(s, -s) == pytest.approx(-1.0, abs=1e-12)


def test_inputs_are_not_modified():
    x, y = _randn(12, 30, seed=21).double(), _randn(12, 4, seed=22)
    before = x.clone(), y.clone()
    linear_cka(x, y)
    for form in analysis.FORMS:
        cka_matrix([x], [y, x], chunk_size=7, form=form)
    gram(x)
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])
