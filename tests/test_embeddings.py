"""The embedding maps' math against scikit-learn, and the figure that draws them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.model_selection import LeaveOneOut
from sklearn.neighbors import KNeighborsClassifier

from workbench.errors import ConfigError
from workbench.insight.embeddings import (
    align,
    knn_accuracy,
    knn_predictions,
    map_scores,
    pca_scores,
    silhouette,
    tsne_map,
)
from workbench.ui.plots.embeddings import class_colours, embedding_maps, score_line
from workbench.ui.plots.style import PlotDataError


def clusters(seed: int, n: int = 120, d: int = 8, classes: int = 3, spread: float = 2.0):
    """``(x [n, d], labels [n])``: Gaussian blobs around random class centres."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(scale=spread, size=(classes, d))
    return centres[labels] + rng.normal(size=(n, d)), labels


# ---------------------------------------------------------------------- PCA
@pytest.mark.parametrize(("n", "d", "components"), [(80, 20, 5), (80, 20, 64), (30, 100, 64)])
def test_pca_scores_match_sklearn_up_to_sign(n, d, components):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) * np.linspace(5.0, 0.1, d) + 3.0  # [n, d], decreasing variance
    scores, kept = pca_scores(x, components)
    c = min(components, n, d)
    reference = PCA(n_components=c, svd_solver="full").fit(x)
    assert scores.shape == (n, c) and scores.dtype == np.float32
    assert kept == pytest.approx(reference.explained_variance_ratio_.sum(), abs=1e-9)
    expected = reference.transform(x)  # [n, c]
    live = reference.explained_variance_ > 1e-9 * reference.explained_variance_[0]
    signs = np.sign(np.sum(scores * expected, axis=0))  # [c]
    np.testing.assert_allclose(scores[:, live], (expected * signs)[:, live], atol=2e-4, rtol=1e-4)


def test_pca_sign_is_fixed_by_the_loadings_largest_entry():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 12)) * np.linspace(4.0, 0.5, 12)  # [60, 12]
    scores, _ = pca_scores(x, 6)
    centred = x - x.mean(axis=0)
    loadings = np.linalg.lstsq(scores.astype(np.float64), centred, rcond=None)[0]  # [6, 12]
    peaks = loadings[np.arange(6), np.argmax(np.abs(loadings), axis=1)]
    assert (peaks > 0).all()
    # the same features in another order, or negated, give the same map (negated)
    order = rng.permutation(60)
    np.testing.assert_allclose(pca_scores(x[order], 6)[0], scores[order], atol=1e-5)
    np.testing.assert_allclose(pca_scores(-x, 6)[0], -scores, atol=1e-5)
    np.testing.assert_array_equal(pca_scores(x, 6)[0], scores)


def test_pca_of_float16_and_of_constant_data():
    x = np.random.default_rng(2).normal(size=(40, 10)).astype(np.float16)
    scores, kept = pca_scores(x, 3)
    assert scores.shape == (40, 3) and 0 < kept < 1
    flat, kept = pca_scores(np.ones((5, 3)), 2)
    assert kept == 1.0 and not flat.any()
    with pytest.raises(ConfigError):
        pca_scores(np.ones(5))


# ---------------------------------------------------------------------- Procrustes
@pytest.mark.parametrize("reflect", [False, True])
def test_align_undoes_rotation_reflection_scale_and_shift(reflect):
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(50, 2)) * [3.0, 1.0] + [4.0, -2.0]  # [50, 2]
    q, _ = np.linalg.qr(rng.normal(size=(2, 2)))  # [2, 2] orthogonal
    if reflect:
        q = q @ np.diag([1.0, -1.0])
    moved = reference @ q * 3.7 + np.array([10.0, -5.0])
    np.testing.assert_allclose(align(moved, reference), reference, atol=1e-10)


def test_align_keeps_the_reference_centre_and_radius():
    rng = np.random.default_rng(4)
    points, reference = rng.normal(size=(30, 2)) * 9, rng.normal(size=(30, 2)) + 1
    out = align(points, reference)

    def radius(p):
        return math.sqrt(np.mean(np.sum((p - p.mean(axis=0)) ** 2, axis=1)))

    np.testing.assert_allclose(out.mean(axis=0), reference.mean(axis=0), atol=1e-12)
    assert radius(out) == pytest.approx(radius(reference))
    np.testing.assert_allclose(align(np.zeros((30, 2)), reference), 0 * out + reference.mean(0))
    with pytest.raises(ConfigError):
        align(points[:10], reference)


# ---------------------------------------------------------------------- k-NN accuracy
def sklearn_loo(x, labels, k):
    """Leave-one-out predictions of scikit-learn's ``KNeighborsClassifier``."""
    out = np.empty_like(labels)
    for train, test in LeaveOneOut().split(x):
        model = KNeighborsClassifier(n_neighbors=k).fit(x[train], labels[train])
        out[test] = model.predict(x[test])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knn_accuracy_matches_sklearn_leave_one_out(seed):
    x, labels = clusters(seed, n=90, classes=2, spread=1.0)  # two classes, odd k: no vote ties
    expected = sklearn_loo(x, labels, 5)
    np.testing.assert_array_equal(knn_predictions(x, labels, 5), expected)
    assert knn_accuracy(x, labels, 5) == pytest.approx(np.mean(expected == labels))
    x, labels = clusters(seed, n=90, classes=5, spread=1.0)  # k = 1 has no ties either
    assert knn_accuracy(x, labels, 1) == pytest.approx(np.mean(sklearn_loo(x, labels, 1) == labels))


def test_knn_matches_sklearn_wherever_the_vote_is_not_tied():
    x, labels = clusters(5, n=100, classes=6, spread=1.0)
    ours, theirs = knn_predictions(x, labels, 5), sklearn_loo(x, labels, 5)
    near = KNeighborsClassifier(n_neighbors=5).fit(x, labels).kneighbors(return_distance=False)
    counts = np.stack([np.bincount(labels[row], minlength=6) for row in near])  # [100, 6]
    tied = (counts == counts.max(axis=1, keepdims=True)).sum(axis=1) > 1  # [100]
    assert tied.any() and (~tied).sum() > 50
    np.testing.assert_array_equal(ours[~tied], theirs[~tied])
    # on a tie ours is the nearest tied neighbour's class, sklearn's the smallest tied label
    nearest_tied = [
        next(c for c in labels[row] if counts[i, c] == counts[i].max())
        for i, row in enumerate(near)
    ]
    np.testing.assert_array_equal(ours[tied], np.asarray(nearest_tied)[tied])


def test_knn_vote_tie_goes_to_the_nearest_tied_class():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [50.0]])  # [6, 1]
    labels = np.array([9, 7, 2, 7, 2, 2])  # sample 0's 4 nearest: 7, 2, 7, 2 -> a tie
    assert knn_predictions(x, labels, 4)[0] == 7  # sklearn would say 2 (the smallest label)
    assert knn_predictions(x[:3], labels[:3], 10).shape == (3,)  # k cut to N - 1
    with pytest.raises(ConfigError):
        knn_predictions(x, labels[:3])


# ---------------------------------------------------------------------- silhouette
@pytest.mark.parametrize(
    ("seed", "n", "d", "classes"), [(0, 50, 4, 2), (1, 120, 16, 5), (2, 200, 64, 10), (3, 30, 2, 7)]
)
def test_silhouette_matches_sklearn(seed, n, d, classes):
    x, labels = clusters(seed, n=n, d=d, classes=classes)
    assert silhouette(x, labels) == pytest.approx(silhouette_score(x, labels), abs=1e-6)


def test_silhouette_of_singletons_duplicates_and_label_values_matches_sklearn():
    x, labels = clusters(6, n=60, classes=3)
    labels = labels * 10 + 5  # any label values
    labels[7], labels[20] = 99, -1  # two classes of one sample: s(i) = 0 for them
    assert silhouette(x, labels) == pytest.approx(silhouette_score(x, labels), abs=1e-6)
    x[1] = x[0]  # duplicated points
    assert silhouette(x, labels) == pytest.approx(silhouette_score(x, labels), abs=1e-6)
    assert math.isnan(silhouette(x, np.zeros(60)))  # one class
    assert math.isnan(silhouette(x[:4], np.arange(4)))  # a class per sample
    scores = map_scores(x, labels)
    assert set(scores) == {"knn_acc", "silhouette"} and 0 <= scores["knn_acc"] <= 1


# ---------------------------------------------------------------------- t-SNE
def test_tsne_map_is_two_d_and_deterministic():
    x, _ = clusters(7, n=60, d=10)
    first = tsne_map(x, seed=3)
    assert first.shape == (60, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(tsne_map(x, seed=3), first)
    assert tsne_map(x[:6], seed=0).shape == (6, 2)  # perplexity (6 - 1) / 3
    with pytest.raises(ConfigError, match="at least 5"):
        tsne_map(x[:4])


# ---------------------------------------------------------------------- the figure
def fake_maps(count: int, n: int = 40, classes: int = 4, seed: int = 8):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    names = ["teacher", *(f"run {i} · kd · T=4 · a long variant name {i}" for i in range(1, count))]
    maps = {name: rng.normal(size=(n, 2)) * (1 + i) for i, name in enumerate(names)}
    scores = {name: {"knn_acc": 0.931, "silhouette": 0.412} for name in names}
    return maps, labels, [f"class {c}" for c in range(classes)], scores


def test_embedding_maps_one_trace_per_class_per_subplot_on_shared_axes():
    maps, labels, names, scores = fake_maps(3)
    fig = embedding_maps(maps, labels, names, scores)
    assert len(fig.data) == 3 * 4
    for axis in ("x", "x2", "x3"):
        traces = [t for t in fig.data if t.xaxis == axis]
        assert sorted(t.name for t in traces) == names
        assert sorted(t.legendgroup for t in traces) == [f"class {c}" for c in range(4)]
    assert sum(bool(t.showlegend) for t in fig.data) == 4  # one legend entry per class
    first = [t for t in fig.data if t.xaxis == "x"]
    for c, trace in enumerate(first):  # hover: the class and the image's index
        assert list(trace.customdata) == np.flatnonzero(labels == c).tolist()
        assert "%{fullData.name}" in trace.hovertemplate
        assert "%{customdata}" in trace.hovertemplate
    x_ranges = {tuple(fig.layout[f"xaxis{i or ''}"].range) for i in ("", 2, 3)}
    y_ranges = {tuple(fig.layout[f"yaxis{i or ''}"].range) for i in ("", 2, 3)}
    assert len(x_ranges) == len(y_ranges) == 1
    (x0, x1), (y0, y1) = x_ranges.pop(), y_ranges.pop()
    assert x1 - x0 == pytest.approx(y1 - y0)  # equal aspect
    every = np.concatenate(list(maps.values()))
    assert x0 <= every[:, 0].min() and every[:, 0].max() <= x1
    assert y0 <= every[:, 1].min() and every[:, 1].max() <= y1
    assert fig.layout.xaxis2.matches == "x" and fig.layout.yaxis3.matches == "y"
    assert fig.layout.yaxis.scaleanchor == "x"


def test_embedding_maps_titles_carry_scores_and_short_names():
    maps, labels, names, scores = fake_maps(3)
    titles = [a.text for a in embedding_maps(maps, labels, names, scores).layout.annotations]
    assert titles[0] == "teacher<br>kNN 93.1 % · sil 0.41"
    assert all(t.endswith("kNN 93.1 % · sil 0.41") for t in titles)
    assert all(len(line) <= 1100 // 3 // 7 for t in titles for line in t.split("<br>"))
    long = {"x" * 200 + str(i): points for i, points in enumerate(fake_maps(4)[0].values())}
    title = embedding_maps(long, labels, names).layout.annotations[0].text
    assert title.endswith("…") and len(title) == 1100 // 4 // 7  # four columns
    bare = embedding_maps(maps, labels, names).layout.annotations
    assert [a.text for a in bare][0] == "teacher"
    assert score_line({"knn_acc": 0.5, "silhouette": float("nan")}) == "kNN 50.0 % · sil –"


def test_twenty_runs_and_a_teacher_lay_out_in_rows_of_four():
    maps, labels, names, scores = fake_maps(21, n=1000, classes=100)
    fig = embedding_maps(maps, labels, [f"c{i}" for i in range(100)], scores, method="t-SNE")
    assert len(fig.data) == 21 * 100
    rows = {tuple(fig.layout[f"yaxis{i if i > 1 else ''}"].domain) for i in range(1, 22)}
    cols = {tuple(fig.layout[f"xaxis{i if i > 1 else ''}"].domain) for i in range(1, 22)}
    assert len(rows) == math.ceil(21 / 4) and len(cols) == 4
    assert fig.layout.height > embedding_maps(*fake_maps(4)).layout.height
    assert fig.data[0].marker.size <= 4 and fig.data[0].type == "scattergl"
    assert "t-SNE" in fig.layout.title.text
    colours = [t.marker.color for t in fig.data if t.xaxis == "x"]
    assert len(set(colours)) == 100 == len(set(class_colours(100)))


def test_embedding_maps_refuses_what_it_cannot_draw():
    maps, labels, names, _ = fake_maps(2)
    with pytest.raises(PlotDataError, match="no embedding map"):
        embedding_maps({}, labels, names)
    with pytest.raises(PlotDataError, match="expected"):
        embedding_maps(maps, labels[:-1], names)
    with pytest.raises(PlotDataError, match="expected"):
        embedding_maps({"teacher": np.zeros((len(labels), 3))}, labels, names)
    with pytest.raises(PlotDataError, match="non-finite"):
        embedding_maps({"teacher": np.full((len(labels), 2), np.nan)}, labels, names)
    with pytest.raises(PlotDataError, match="per_row"):
        embedding_maps(maps, labels, names, per_row=0)
