"""How alike two representations are: linear CKA, SP Gram matrices and mean cosine.

Pure functions: tensors in, tensors or floats out, no gradients. Features are [N, ...] and are
flattened per sample to [N, D]; student and teacher widths may differ.

Linear CKA (Kornblith, Norouzi, Lee and Hinton, "Similarity of Neural Network Representations
Revisited", ICML 2019), with Xc, Yc the column-centred features:

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)          (feature space)
              = <Kx, Ky>_F / (||Kx||_F ||Ky||_F),   Kx = Xc Xc^T, Ky = Yc Yc^T   (sample space)

For an S x T matrix of layers the two forms cost (in multiply-adds, ``cka_work``):

- feature space: N Ds Dt per pair (the cross-covariance), plus N D min(N, D) per layer (its
  norm);
- sample space: N^2 D per layer (its centred Gram matrix, only the upper triangle: about half)
  plus N^2 per pair (the inner product of two Gram matrices, also from the upper triangle).

``cka_matrix`` counts both for the whole matrix and takes the cheaper (``cka_form``): the Gram
form when the layers are wide or the pairs many, the feature form when N is large against the
widths. Both accumulate in float64 (the centring of post-ReLU features cancels badly in
float32) and give the same values to rounding. CKA is invariant to orthogonal maps, isotropic
scaling and translation of either side, lies in [0, 1], and is NaN when a side is constant over
the samples (it is undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.distill.feature import feature_loss

__all__ = [
    "DEFAULT_CHUNK",
    "FORMS",
    "centred_grams",
    "cka_form",
    "cka_matrix",
    "cka_of_grams",
    "cka_work",
    "gram",
    "linear_cka",
    "pair_cosine",
]

# Feature columns per float64 block: a strip of GRAM_ROWS x N Gram entries is built from blocks
# of N x 1024 centred features (40 MB for a probe of 5,000 samples).
DEFAULT_CHUNK = 1024
# Rows of the Gram matrices built at a time. The Gram form builds only the strips on and right
# of the diagonal, N^2 (b + 1) / 2b entries for b strips; 160 rows keep the matrix products large
# enough to run at full speed (measured on 2 cores: 0.57 of a full N x N product at N = 1,000).
GRAM_ROWS = 160
# Cost of one Gram entry of one pair, in multiply-adds of a large matrix product: the pairs'
# inner products reuse each loaded entry only S or T times, so they are bound by memory, not
# arithmetic (measured on 2 cores: 4.7 for 8 x 8 layers, 3.0 for 16 x 16).
PAIR_COST = 5.0
# The Gram form keeps a float64 centred copy of layers up to this many bytes in all, so a strip
# is one matrix product per layer; wider layers are centred again, block by block, per strip.
CENTRED_BYTES = 256 * 2**20
FORMS = ("features", "gram")


def _flat(x: Tensor) -> Tensor:
    if x.ndim < 1:
        raise ValueError("features need a sample dimension, got a scalar")
    return x.reshape(x.shape[0], -1)  # [N, D]


def _same_samples(feats: Sequence[Tensor]) -> int:
    sizes = {int(f.shape[0]) for f in feats}
    if len(sizes) > 1:
        raise ValueError(f"all features must have the same samples, got sizes {sorted(sizes)}")
    return sizes.pop() if sizes else 0


def _strip_entries(n: int) -> int:
    """Gram entries on and right of the diagonal in strips of ``GRAM_ROWS`` rows: sum of
    rows_i * (N - start_i), about N^2 (b + 1) / 2b for b strips."""
    rows = GRAM_ROWS
    return sum(min(rows, n - start) * (n - start) for start in range(0, n, rows))


def cka_work(
    n: int,
    student_widths: Sequence[int],
    teacher_widths: Sequence[int],
    *,
    same: bool = False,
) -> dict[str, float]:
    """Multiply-adds of each form (``FORMS``) for the S x T CKA matrix of layers of these widths
    on ``n`` samples. ``same``: the two lists are the same layers (each layer and each unordered
    pair once)."""
    widths = list(student_widths) if same else [*student_widths, *teacher_widths]
    s, t = len(student_widths), len(teacher_widths)
    if same:
        cross = sum(n * a * b for i, a in enumerate(widths) for b in widths[i:])
    else:
        cross = sum(n * a * b for a in student_widths for b in teacher_widths)
    features = sum(n * d * min(n, d) for d in widths) + cross
    entries = _strip_entries(n)
    products = s * s if same else s * t + s + t  # the pairs and each layer's own norm
    gram_form = entries * sum(widths) + PAIR_COST * entries * products
    return {"features": float(features), "gram": float(gram_form)}


def cka_form(
    n: int,
    student_widths: Sequence[int],
    teacher_widths: Sequence[int],
    *,
    same: bool = False,
) -> str:
    """The form ``cka_matrix`` uses: the one of ``cka_work`` with less work (features on a tie)."""
    work = cka_work(n, student_widths, teacher_widths, same=same)
    return "gram" if work["gram"] < work["features"] else "features"


def _centred(x: Tensor) -> Tensor:
    """Column-centred float64 copy of x [N, D] (the input is never modified)."""
    xc = x.to(torch.float64, copy=True)  # [N, D]
    return xc.sub_(xc.mean(dim=0, keepdim=True))


def _self_norm(xc: Tensor) -> Tensor:
    """||Xc^T Xc||_F = ||Xc Xc^T||_F, from the smaller of the two products."""
    n, d = xc.shape
    return torch.linalg.matrix_norm(xc.T @ xc if d <= n else xc @ xc.T)


def _features_form(students: list[Tensor], teachers: list[Tensor], same: bool) -> Tensor:
    """HSIC ||Xt^T Xs||_F^2 per pair from centred features; peak: the teacher layers plus one
    student layer and one [Dt, Ds] product."""
    t_feats = [_centred(t) for t in teachers]  # [N, Dt] each
    t_norms = [_self_norm(t) for t in t_feats]
    out = torch.empty(len(students), len(teachers), dtype=torch.float64, device=t_feats[0].device)
    for i, s in enumerate(students):
        xs = t_feats[i] if same else _centred(s)  # [N, Ds]
        s_norm = t_norms[i] if same else _self_norm(xs)
        for j, (xt, t_norm) in enumerate(zip(t_feats, t_norms, strict=True)):
            if same and j < i:
                out[i, j] = out[j, i]
                continue
            hsic = torch.linalg.matrix_norm(xt.T @ xs).square()  # [Dt, Ds] temp
            out[i, j] = hsic / (s_norm * t_norm)
    return out


def _gram_strip(
    x: Tensor,
    mean: Tensor,
    start: int,
    stop: int,
    chunk: int,
    out: Tensor,
    scratch: Tensor,
    centred: Tensor | None = None,
) -> None:
    """out [stop - start, N - start] = rows start:stop of Kc = Xc Xc^T, columns start:. From the
    layer's ``centred`` float64 copy when it has one, else from float64 blocks of ``chunk``
    centred feature columns, centred in ``scratch`` (reused: a fresh buffer per block costs more
    in page faults than the copy itself)."""
    if centred is not None:
        torch.mm(centred[start:stop], centred[start:].T, out=out)
        return
    m = x.shape[0] - start
    for c in range(0, x.shape[1], chunk):
        width = min(chunk, x.shape[1] - c)
        rest = scratch[: m * width].view(m, width)  # [N - start, c]
        rest.copy_(x[start:, c : c + width]).sub_(mean[c : c + width])
        if c == 0:
            torch.mm(rest[: stop - start], rest.T, out=out)
        else:
            out.addmm_(rest[: stop - start], rest.T)


def _gram_form(students: list[Tensor], teachers: list[Tensor], same: bool, chunk: int) -> Tensor:
    """HSIC <Ks, Kt>_F per pair from the centred Gram matrices, a strip of ``GRAM_ROWS`` rows of
    every layer at a time: only the entries on and right of the diagonal are built, the ones
    right of the diagonal block weighted by sqrt(2) so that each counts twice (K is symmetric),
    and all pairs' inner products are batched matrix products per strip. Peak: one strip per
    layer, (S + T) x GRAM_ROWS x N float64 (102 MB for 16 layers at N = 5,000), the layers
    centred once (up to ``CENTRED_BYTES``) and one block of N x ``chunk`` centred features."""
    layers = students if same else students + teachers
    means = [x.mean(dim=0, dtype=torch.float64) for x in layers]  # [D] each
    n, s, count = layers[0].shape[0], len(students), len(layers)
    device, f64 = layers[0].device, torch.float64
    hsic = torch.zeros(s, len(teachers), dtype=f64, device=device)
    squares = torch.zeros(count, dtype=f64, device=device)  # ||Kc||_F^2
    # Layers centred once in float64 while they fit in CENTRED_BYTES (one product per strip and
    # no re-centring); the rest are centred block by block for every strip.
    centred: list[Tensor | None] = []
    room = CENTRED_BYTES
    for x in layers:
        size = x.numel() * 8
        centred.append(_centred(x) if size <= room else None)
        room -= size if size <= room else 0
    widest = max([x.shape[1] for x, c in zip(layers, centred, strict=True) if c is None] or [0])
    scratch = torch.empty(n * min(chunk, widest), dtype=f64, device=device)
    strip_buffer = torch.empty(count * min(GRAM_ROWS, n) * n, dtype=f64, device=device)
    for start in range(0, n, GRAM_ROWS):
        stop = min(start + GRAM_ROWS, n)
        rows, cols = stop - start, n - start
        strips = strip_buffer[: count * rows * cols].view(count, rows, cols)
        for x, mean, strip, xc in zip(layers, means, strips, centred, strict=True):
            _gram_strip(x, mean, start, stop, chunk, strip, scratch, xc)
        strips[:, :, rows:] *= math.sqrt(2.0)  # above the diagonal block: counts twice
        by_row = strips.transpose(0, 1)  # [r, L, N - start]
        if same:
            products = torch.bmm(by_row, by_row.transpose(1, 2)).sum(dim=0)  # [S, S]
            hsic += products
            squares += products.diagonal()
        else:
            # One product per strip row, summed: faster here than one [S, M] x [M, T] product,
            # which BLAS runs as a memory-bound long inner product.
            hsic += torch.bmm(by_row[:, :s], by_row[:, s:].transpose(1, 2)).sum(dim=0)  # [S, T]
            squares += torch.linalg.vector_norm(strips.reshape(count, -1), dim=1).square()
    norms = squares.sqrt()
    if same:  # the batched products need not round both triangles alike
        hsic = (hsic + hsic.T) / 2
    t_norms = norms if same else norms[s:]
    return hsic / torch.outer(norms[:s], t_norms)


@torch.no_grad()
def cka_matrix(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    form: str | None = None,
) -> Tensor:
    """Linear CKA of every student layer against every teacher layer: [S, T] float64 (CPU).

    ``form`` is ``"features"``, ``"gram"`` or None: the one with less work for this whole matrix
    (``cka_form``). Either way each layer's statistics are computed once, in float64:

    - ``"features"`` holds the teacher layers' centred features [N, Dt] and one student layer's;
    - ``"gram"`` builds the centred Gram matrices a strip of rows at a time (never a whole
      N x N matrix) from blocks of ``chunk_size`` feature columns.

    ``cka_matrix(feats, feats)`` (the same tensors on both sides) computes each layer once and
    each unordered pair once.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a whole number >= 1, got {chunk_size!r}")
    if form is not None and form not in FORMS:
        raise ValueError(f"form must be one of {FORMS} or None, got {form!r}")
    students, teachers = list(student_feats), list(teacher_feats)
    n = _same_samples(students + teachers)
    if not students or not teachers:
        return torch.zeros(len(students), len(teachers), dtype=torch.float64)
    same = len(students) == len(teachers) and all(
        s is t for s, t in zip(students, teachers, strict=True)
    )
    students = [_flat(s) for s in students]
    teachers = students if same else [_flat(t) for t in teachers]
    if form is None:
        form = cka_form(
            n, [s.shape[1] for s in students], [t.shape[1] for t in teachers], same=same
        )
    if form == "gram":
        values = _gram_form(students, teachers, same, chunk_size)
    else:
        values = _features_form(students, teachers, same)
    return values.clamp(0.0, 1.0).cpu()  # NaN (a constant layer) stays NaN


@torch.no_grad()
def centred_grams(feats: Sequence[Tensor], *, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Each layer's centred Gram matrix scaled to unit norm, Kc / ||Kc||_F with Kc = Xc Xc^T:
    [L, N, N] float64 (CPU), the sample-space statistics of linear CKA. One side's matrices
    serve every CKA matrix against that side (``cka_of_grams``): the probe keeps its teacher's
    (N is at most ``workbench.training.probe.PROBE_SIZE``, so they are a few MB a layer).

    Built like the Gram form of ``cka_matrix``: strips of ``GRAM_ROWS`` rows on and right of
    the diagonal from float64 blocks of ``chunk_size`` centred columns, mirrored below it.
    NaN for a layer that is constant over the samples."""
    layers = [_flat(x) for x in feats]
    n = _same_samples(layers)
    out = torch.zeros(len(layers), n, n, dtype=torch.float64)
    if not layers or n == 0:
        return out
    widest = max(x.shape[1] for x in layers)
    scratch = torch.empty(n * min(chunk_size, widest), dtype=torch.float64, device=layers[0].device)
    for k, x in enumerate(layers):
        mean = x.mean(dim=0, dtype=torch.float64)  # [D]
        for start in range(0, n, GRAM_ROWS):
            stop = min(start + GRAM_ROWS, n)
            strip = torch.empty(stop - start, n - start, dtype=torch.float64, device=x.device)
            _gram_strip(x, mean, start, stop, chunk_size, strip, scratch)
            out[k, start:stop, start:] = strip.cpu()
            out[k, stop:, start:stop] = out[k, start:stop, stop:].T
        out[k] /= torch.linalg.matrix_norm(out[k])
    return out


@torch.no_grad()
def cka_of_grams(student_grams: Tensor, teacher_grams: Tensor) -> Tensor:
    """Linear CKA [S, T] float64 from ``centred_grams`` of each side: <Ks, Kt>_F of the unit
    matrices, one [S, N^2] x [N^2, T] product. Equals ``cka_matrix`` of the features to
    rounding (float64 throughout)."""
    s, t = len(student_grams), len(teacher_grams)
    if s == 0 or t == 0:
        return torch.zeros(s, t, dtype=torch.float64)
    values = student_grams.reshape(s, -1) @ teacher_grams.reshape(t, -1).T  # [S, T]
    return values.clamp(0.0, 1.0)  # NaN (a constant layer) stays NaN


@torch.no_grad()
def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between x [N, ...] and y [N, ...] (see the module docstring): the 1 x 1 case of
    ``cka_matrix``, in the cheaper form."""
    return float(cka_matrix([x], [y])[0, 0])


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
