"""A frozen copy of ``workbench/distill/similarity.py`` as of commit ba9119c (before the work-counted CKA
form), kept only so that ``bench/analysis.py`` can time the old ``cka_matrix`` against the new one
in the same run. Not part of the library; do not import it from ``workbench``.

Its own docstring follows.

How alike two representations are: linear CKA, SP Gram matrices and mean cosine.

Pure functions: tensors in, tensors or floats out, no gradients. Features are [N, ...] and are
flattened per sample to [N, D]; student and teacher widths may differ.

Linear CKA (Kornblith, Norouzi, Lee and Hinton, "Similarity of Neural Network Representations
Revisited", ICML 2019), with Xc, Yc the column-centred features:

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)
              = <Kx, Ky>_F / (||Kx||_F ||Ky||_F),   Kx = Xc Xc^T, Ky = Yc Yc^T

The first (feature-space) form costs O(N D^2) and the second (sample-space) O(N^2 D); each layer
is held in the cheaper one, in float64 (the centring of post-ReLU features cancels badly in
float32). CKA is invariant to orthogonal maps, isotropic scaling and translation of either
side, lies in [0, 1], and is NaN when a side is constant over the samples (it is undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.distill.feature import feature_loss

__all__ = ["DEFAULT_CHUNK", "cka_matrix", "gram", "linear_cka", "pair_cosine"]

# Feature columns per float64 block when building a Gram matrix: N x 1024 x 8 bytes, 40 MB for
# a probe of 5,000 samples.
DEFAULT_CHUNK = 1024


def _flat(x: Tensor) -> Tensor:
    if x.ndim < 1:
        raise ValueError("features need a sample dimension, got a scalar")
    return x.reshape(x.shape[0], -1)  # [N, D]


def _same_samples(feats: Sequence[Tensor]) -> int:
    sizes = {int(f.shape[0]) for f in feats}
    if len(sizes) > 1:
        raise ValueError(f"all features must have the same samples, got sizes {sorted(sizes)}")
    return sizes.pop() if sizes else 0


def _centred_columns(x: Tensor, start: int, stop: int) -> Tensor:
    block = x[:, start:stop].to(torch.float64, copy=True)  # [N, c], ours to centre in place
    return block.sub_(block.mean(dim=0, keepdim=True))  # [N, c]


@dataclass(frozen=True)
class _Layer:
    """One layer's CKA statistics: the centred Gram ``Kc = Xc Xc^T`` [N, N] or the centred
    features ``Xc`` [N, D] (exactly one is set), and ``norm = ||Xc^T Xc||_F = ||Kc||_F``."""

    gram: Tensor | None
    feats: Tensor | None
    norm: Tensor


def _layer(x: Tensor, *, sample_space: bool, chunk_size: int) -> _Layer:
    x = _flat(x)  # [N, D]
    n, d = x.shape
    if sample_space:
        k = torch.zeros(n, n, dtype=torch.float64, device=x.device)  # [N, N]
        for start in range(0, d, chunk_size):  # centring is per column, so per block
            xc = _centred_columns(x, start, start + chunk_size)  # [N, c]
            k.addmm_(xc, xc.T)
        return _Layer(gram=k, feats=None, norm=torch.linalg.vector_norm(k))
    xc = _centred_columns(x, 0, d)  # [N, D]
    return _Layer(gram=None, feats=xc, norm=torch.linalg.matrix_norm(xc.T @ xc))


def _hsic(a: _Layer, b: _Layer) -> Tensor:
    """<Ka, Kb>_F = ||Xb^T Xa||_F^2 from whichever representations the layers hold."""
    if a.gram is not None and b.gram is not None:
        return torch.dot(a.gram.reshape(-1), b.gram.reshape(-1))  # sum(Ka * Kb)
    if a.gram is not None or b.gram is not None:
        k, xc = (a.gram, b.feats) if a.gram is not None else (b.gram, a.feats)
        return torch.dot((k @ xc).reshape(-1), xc.reshape(-1))  # tr(K Xc Xc^T), [N, D] temp
    return torch.linalg.matrix_norm(b.feats.T @ a.feats).square()  # [Db, Da] temp


def _cka(a: _Layer, b: _Layer) -> Tensor:
    return (_hsic(a, b) / (a.norm * b.norm)).clamp(0.0, 1.0)  # NaN stays NaN


@torch.no_grad()
def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between x [N, ...] and y [N, ...] (see the module docstring), in the cheaper
    of the sample-space form, O(N^2 (Dx + Dy)), and the feature-space form,
    O(N (Dx Dy + Dx^2 + Dy^2))."""
    x, y = _flat(x), _flat(y)
    n = _same_samples([x, y])
    dx, dy = x.shape[1], y.shape[1]
    sample_space = n * (dx + dy) < dx * dy + dx * dx + dy * dy
    a = _layer(x, sample_space=sample_space, chunk_size=DEFAULT_CHUNK)
    b = _layer(y, sample_space=sample_space, chunk_size=DEFAULT_CHUNK)
    return float(_cka(a, b))


@torch.no_grad()
def cka_matrix(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Linear CKA of every student layer against every teacher layer: [S, T] float64 (CPU).

    Each layer's statistics are computed once: a layer with D > N is held as its centred Gram
    matrix (built from float64 blocks of ``chunk_size`` feature columns), one with D <= N as its
    centred features, so no layer takes more than N * min(N, D) floats. Peak memory is the
    teacher layers plus one student layer. ``cka_matrix(feats, feats)`` (the same tensors on
    both sides) computes each layer once and each unordered pair once.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a whole number >= 1, got {chunk_size!r}")
    students, teachers = list(student_feats), list(teacher_feats)
    n = _same_samples(students + teachers)
    if not students or not teachers:
        return torch.zeros(len(students), len(teachers), dtype=torch.float64)
    same = len(students) == len(teachers) and all(
        s is t for s, t in zip(students, teachers, strict=True)
    )

    def stats(x: Tensor) -> _Layer:
        return _layer(x, sample_space=_flat(x).shape[1] > n, chunk_size=chunk_size)

    t_stats = [stats(t) for t in teachers]
    rows: list[Tensor] = []
    for i, s in enumerate(students):
        s_stat = t_stats[i] if same else stats(s)
        row = [
            rows[j][i] if same and j < i else _cka(s_stat, t_stat)
            for j, t_stat in enumerate(t_stats)
        ]
        rows.append(torch.stack(row))  # [T]
    return torch.stack(rows).cpu()  # [S, T]


@torch.no_grad()
def gram(x: Tensor) -> Tensor:
    """Sample-by-sample similarity of similarity-preserving KD (Tung and Mori, ICCV 2019):
    ``row_l2_normalize(F F^T)`` with F [N, D] the flattened features -> [N, N] float32 (computed
    in float64)."""
    f = _flat(x).to(torch.float64)  # [N, D]
    return F.normalize(f @ f.T, p=2, dim=1).float()  # [N, N]


@torch.no_grad()
def pair_cosine(student_feat: Tensor, teacher_feat: Tensor) -> float:
    """Mean cosine between an adapted student feature and the teacher feature (same shape),
    with the vector convention of the ``cosine`` feature loss (channels of [B, C, H, W] at each
    position, the last dim of [B, T, D], the features of [B, D]): ``1 - feature_loss(s, t,
    "cosine")``, in float64."""
    return 1.0 - float(feature_loss(student_feat.double(), teacher_feat.double(), "cosine"))
