"""How a model's penultimate embeddings are reduced, mapped and scored on the fixed test subset.

- **PCA** (``pca_scores``; Pearson 1901, Hotelling 1933): with the centred data
  ``X_c = X - mean(X) = U S V^T`` (thin SVD), the scores are ``U[:, :c] S[:c] = X_c V[:, :c]``
  and the share of the total variance they keep is ``sum_{j<c} s_j^2 / sum_j s_j^2``. The sign
  of each component is fixed (the loading entry of largest ``|v|`` made positive, as
  scikit-learn's ``svd_flip``), so the same features always give the same map.
- **t-SNE** (``tsne_map``; van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 9,
  2008): scikit-learn's Barnes-Hut implementation, PCA-initialised, on the stored PCA scores
  (the usual recipe: t-SNE of a PCA reduction).
- **Procrustes** (``align``; Schoenemann 1966): maps of different models come in arbitrary
  rotations and scales; each is centred, scaled to the reference's RMS radius and turned onto
  it by the orthogonal ``R = argmin ||P R - Q||_F = U V^T`` from ``P^T Q = U S V^T``.
- **k-NN accuracy** (``knn_accuracy``): leave-one-out, Euclidean, majority of the ``k`` nearest
  other samples (Cover & Hart 1967), how well the classes separate locally.
- **Silhouette** (``silhouette``; Rousseeuw, "Silhouettes: a graphical aid to the
  interpretation and validation of cluster analysis", J. Comput. Appl. Math. 20, 1987):
  ``s(i) = (b(i) - a(i)) / max(a(i), b(i))`` with ``a(i)`` the mean distance of ``i`` to the
  other members of its class and ``b(i)`` the smallest mean distance to another class; the
  score is the mean of ``s(i)`` over all samples, how well the classes separate globally.

Pure numpy (and scikit-learn for t-SNE); inputs ``[N, d]`` with ``N`` at most about 1000.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.manifold import TSNE

from workbench.errors import ConfigError

__all__ = [
    "CHUNK",
    "MIN_TSNE_POINTS",
    "align",
    "knn_accuracy",
    "knn_predictions",
    "map_scores",
    "pca_scores",
    "silhouette",
    "tsne_map",
]

CHUNK = 256  # rows of the distance matrix held at once: [CHUNK, N] float64, 2 MB at N = 1000
MIN_TSNE_POINTS = 5


def _matrix(x: np.ndarray, what: str = "x") -> np.ndarray:
    """``x`` as a float64 ``[N, d]`` array (float16 stored scores included)."""
    out = np.asarray(x, dtype=np.float64)
    if out.ndim != 2:
        raise ConfigError(f"{what} must be a 2-D array [samples, features], got shape {out.shape}")
    return out


def _labels(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(classes [K] sorted, codes [N])``: ``labels`` as positions ``0..K-1`` in ``classes``."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n:
        raise ConfigError(f"{len(labels)} labels for {n} samples: give one label per sample")
    classes, codes = np.unique(labels, return_inverse=True)
    return classes, codes.reshape(-1)


# ---------------------------------------------------------------------- reductions and maps
def pca_scores(x: np.ndarray, components: int = 64) -> tuple[np.ndarray, float]:
    """``(scores [N, c] float32, variance share kept)`` of ``x`` [N, D] with
    ``c = min(components, N, D)``: ``X_c V[:, :c]`` from the SVD of the centred data (float64),
    each component's sign fixed so that its loading's entry of largest ``|v|`` (the first such
    entry on a tie) is positive. Data without variance keep all of it (share 1.0)."""
    data = _matrix(x)  # [N, D]
    if components < 1:
        raise ConfigError(f"components must be >= 1, got {components}")
    n, d = data.shape
    c = min(components, n, d)
    centred = data - data.mean(axis=0)  # [N, D]
    u, s, vt = np.linalg.svd(centred, full_matrices=False)  # [N, r], [r], [r, D]
    peak = np.argmax(np.abs(vt[:c]), axis=1)  # [c]
    signs = np.sign(vt[np.arange(c), peak])  # [c]
    signs[signs == 0] = 1.0
    scores = u[:, :c] * (s[:c] * signs)  # [N, c]
    total = float(np.sum(s**2))
    kept = float(np.sum(s[:c] ** 2)) / total if total > 0 else 1.0
    return scores.astype(np.float32), kept


def tsne_map(x: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE map [N, 2] (float32) of ``x`` [N, d]: scikit-learn's ``TSNE`` with
    ``init="pca"``, ``random_state=seed`` (same input and seed, same map) and perplexity
    ``min(30, (N - 1) / 3)`` so that small subsets work. ConfigError below 5 samples."""
    data = _matrix(x).astype(np.float32)  # [N, d]
    n = len(data)
    if n < MIN_TSNE_POINTS:
        raise ConfigError(
            f"t-SNE needs at least {MIN_TSNE_POINTS} images, got {n}: use the PCA map"
        )
    tsne = TSNE(
        n_components=2,
        perplexity=min(30.0, (n - 1) / 3),
        init="pca",
        random_state=seed,
    )
    return tsne.fit_transform(data).astype(np.float32)  # [N, 2]


def align(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``points`` [N, d] moved onto ``reference`` [N, d] (float64): centred, scaled to the
    reference's RMS radius ``sqrt(mean_i ||q_i - mean(q)||^2)``, rotated or reflected by the
    orthogonal Procrustes solution ``R = U V^T`` (``P^T Q = U S V^T``) and placed at the
    reference's centre. ``align(reference @ Q * s + shift, reference) == reference`` for an
    orthogonal ``Q`` and ``s > 0``. Points without spread land on the reference's centre."""
    p, q = _matrix(points, "points"), _matrix(reference, "reference")
    if p.shape != q.shape:
        raise ConfigError(f"points {p.shape} and reference {q.shape} must have the same shape")
    centre = q.mean(axis=0)  # [d]
    p, q = p - p.mean(axis=0), q - centre  # [N, d] each
    radius_p = math.sqrt(float(np.mean(np.sum(p**2, axis=1)))) if len(p) else 0.0
    radius_q = math.sqrt(float(np.mean(np.sum(q**2, axis=1)))) if len(q) else 0.0
    if radius_p == 0.0:
        return np.broadcast_to(centre, q.shape).copy()
    p = p * (radius_q / radius_p)
    u, _, vt = np.linalg.svd(p.T @ q)  # [d, d] each
    return p @ (u @ vt) + centre  # [N, d]


# ---------------------------------------------------------------------- scores of a map
def _distance_chunks(data: np.ndarray):
    """Yield ``(rows, D)``: consecutive row slices and their Euclidean distances to all samples
    ``D [len(rows), N]``, from ``|a|^2 + |b|^2 - 2 a.b`` (clipped at 0, the diagonal exactly 0),
    as scikit-learn's ``euclidean_distances``."""
    sq = np.einsum("nd,nd->n", data, data)  # [N]
    for start in range(0, len(data), CHUNK):
        rows = slice(start, min(start + CHUNK, len(data)))
        d2 = sq[rows, None] + sq[None, :] - 2.0 * (data[rows] @ data.T)  # [b, N]
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = 0.0
        yield rows, np.sqrt(d2, out=d2)


def knn_predictions(x: np.ndarray, labels: np.ndarray, k: int = 5) -> np.ndarray:
    """Leave-one-out k-NN predictions [N] (values of ``labels``) of ``x`` [N, d]: each sample's
    ``k`` nearest other samples (Euclidean; equal distances in index order, a stable sort)
    vote, the most frequent class wins, and a tie between classes goes to the tied class of
    the nearest of those neighbours. ``k`` is cut to ``N - 1``.

    scikit-learn's ``KNeighborsClassifier`` breaks a vote tie towards the smallest class label
    instead (its ``argmax`` over class counts, or ``scipy.stats.mode``); without vote ties the
    two agree."""
    data = _matrix(x)  # [N, d]
    classes, codes = _labels(labels, len(data))  # [K], [N]
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    n = len(data)
    if n < 2:
        raise ConfigError(f"k-NN needs at least 2 samples, got {n}")
    k = min(k, n - 1)
    out = np.empty(n, dtype=np.int64)
    for rows, dist in _distance_chunks(data):
        b = rows.stop - rows.start
        dist[np.arange(b), np.arange(rows.start, rows.stop)] = np.inf  # leave the sample out
        near = np.argsort(dist, axis=1, kind="stable")[:, :k]  # [b, k], nearest first
        votes = codes[near]  # [b, k]
        counts = np.zeros((b, len(classes)), dtype=np.int64)  # [b, K]
        np.add.at(counts, (np.repeat(np.arange(b), k), votes.reshape(-1)), 1)
        top = counts[np.arange(b)[:, None], votes] == counts.max(axis=1, keepdims=True)  # [b, k]
        out[rows] = votes[np.arange(b), np.argmax(top, axis=1)]  # the nearest tied class
    return classes[out]


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy of ``x`` [N, d]: the share of samples whose ``k`` nearest
    other samples vote for their own class (``knn_predictions`` gives the rule). NaN below two
    samples."""
    labels = np.asarray(labels).reshape(-1)
    if len(_matrix(x)) < 2:
        return float("nan")
    return float(np.mean(knn_predictions(x, labels, k) == labels))


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette ``(1/N) sum_i s(i)``, ``s(i) = (b(i) - a(i)) / max(a(i), b(i))``
    (Euclidean), of ``x`` [N, d] with classes ``labels`` [N], as
    ``sklearn.metrics.silhouette_score``: a sample alone in its class has ``s(i) = 0``, and so
    has one with ``a(i) = b(i) = 0``. NaN where scikit-learn refuses: fewer than 2 classes, or
    as many classes as samples."""
    data = _matrix(x)  # [N, d]
    codes = _labels(labels, len(data))[1]  # [N]
    n = len(data)
    sizes = np.bincount(codes)  # [K]
    if not 2 <= len(sizes) <= n - 1:
        return float("nan")
    member = np.zeros((n, len(sizes)))  # [N, K] one-hot
    member[np.arange(n), codes] = 1.0
    s = np.empty(n)
    for rows, dist in _distance_chunks(data):
        sums = dist @ member  # [b, K] distances to each class
        own = codes[rows]  # [b]
        b_idx = np.arange(len(own))
        means = sums / sizes  # [b, K] mean distance to each class
        means[b_idx, own] = np.inf
        nearest = means.min(axis=1)  # [b] b(i)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0: a singleton's a(i)
            a = sums[b_idx, own] / (sizes[own] - 1)  # [b] a(i)
            s[rows] = (nearest - a) / np.maximum(a, nearest)  # NaN -> 0 below
    return float(np.mean(np.nan_to_num(s, nan=0.0)))


def map_scores(x: np.ndarray, labels: np.ndarray, k: int = 5) -> dict[str, float]:
    """``{"knn_acc": knn_accuracy(x, labels, k), "silhouette": silhouette(x, labels)}``."""
    return {"knn_acc": knn_accuracy(x, labels, k), "silhouette": silhouette(x, labels)}
