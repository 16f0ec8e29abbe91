"""The relation slot: how the samples of a batch relate to each other, student against teacher.

Computed on the raw features, whose widths may differ: similarity-preserving KD (Tung and Mori,
"Similarity-Preserving Knowledge Distillation", ICCV 2019) and relational KD (Park et al.,
"Relational Knowledge Distillation", CVPR 2019). ``sp`` and ``rkd`` are unit-free means;
``sp_paper`` (gamma = 3000) and ``rkd_paper`` (25 : 50) are the papers' scales. They run with
autocast off, since a bf16 Gram matrix loses the small differences they compare (RKD's geometry
even runs in float64).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.distill.precision import full_precision
from workbench.errors import UnknownNameError

__all__ = ["RELATION_LOSSES", "RKD_DISTANCE_WEIGHT", "SP_GAMMA", "relation_loss"]


def _sp_gram(f: Tensor) -> Tensor:
    """G = row_l2_normalize(F F^T), F [B, D] -> [B, B]."""
    return F.normalize(f @ f.T, p=2, dim=1)


def _similarity_preserving(student_flat: Tensor, teacher_flat: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung and Mori, "Similarity-Preserving Knowledge Distillation",
    ICCV 2019), for one layer pair:

        G = row_l2_normalize(F F^T),   L = ||G_s - G_t||_F^2 / B^2

    with F the [B, D] flattened features (D may differ between student and teacher). The paper
    weights it by ``gamma = 3000``; ``"sp_paper"`` includes it.
    """
    b = student_flat.shape[0]
    diff = _sp_gram(student_flat) - _sp_gram(teacher_flat)  # [B, B]
    return diff.pow(2).sum() / (b * b)


def _rkd_geometry(f: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise distances normalized by their mean over off-diagonal pairs [B, B], and the
    cosines of the angles ``cos(x_j - x_i, x_k - x_i)`` at every anchor i [B, B, B], of the
    flattened features f [B, D]; a distance or angle involving two coincident samples is 0 (the
    reference code's ``normalize(0) = 0``).

    Both come from the Gram matrix, so memory is O(B D + B^3) rather than the reference code's
    [B, B, D] difference tensor (1 GiB in float32 for B = 64 and D = 64 x 32 x 32). Gram differences cancel
    for close samples, so the batch mean is subtracted first (distances and angles do not
    change) and the geometry is computed in float64: a B^2 D matmul, cheap next to the model.
    """
    b = f.shape[0]
    f = f.double()
    f = f - f.mean(dim=0, keepdim=True)  # [B, D]
    g = f @ f.T  # [B, B]
    sq = g.diagonal()  # [B], |f_i|^2
    d2 = sq[:, None] + sq[None, :] - 2.0 * g  # [B, B]
    # Coincident up to rounding (the diagonal, duplicate or all-zero samples): distance 0,
    # with no gradient through sqrt at 0.
    coincident = d2 <= 1e-9 * (sq[:, None] + sq[None, :])  # [B, B]
    d = torch.where(coincident, 0.0, d2.clamp_min(1e-300).sqrt())  # [B, B]
    mean_d = d.sum() / (b * (b - 1))  # mean over the B(B-1) off-diagonal pairs
    dist = d / mean_d.clamp_min(1e-300)  # [B, B]
    # <f_j - f_i, f_k - f_i> = G_jk - G_ij - G_ik + G_ii, indexed [i, j, k].
    dot = g[None, :, :] - g[:, :, None] - g[:, None, :] + sq[:, None, None]  # [B, B, B]
    degenerate = coincident[:, :, None] | coincident[:, None, :]  # [B, B, B]
    norms = torch.where(degenerate, 1.0, d[:, :, None] * d[:, None, :])  # [B, B, B]
    angle = torch.where(degenerate, 0.0, (dot / norms).clamp(-1.0, 1.0))  # [B, B, B]
    return dist, angle


def _relational(student_flat: Tensor, teacher_flat: Tensor) -> Tensor:
    """Relational KD (Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019),
    distance-wise plus angle-wise with the paper's weights 25 : 50, i.e.

        L = smoothL1(psi_D(s), psi_D(t)) + 2 * smoothL1(psi_A(s), psi_A(t))

    psi_D(x)_ij = ||x_i - x_j|| / mu, mu the mean distance over the B(B-1) off-diagonal pairs;
    psi_A(x)_ijk = <e(x_j - x_i), e(x_k - x_i)>, e(v) = v / ||v|| (0 for v = 0).
    Smooth-L1 (beta = 1) is averaged over all B^2 ordered pairs and all B^3 ordered triplets,
    as in the authors' code. The teacher side is detached.
    """
    s_dist, s_angle = _rkd_geometry(student_flat)
    with torch.no_grad():
        t_dist, t_angle = _rkd_geometry(teacher_flat.detach())
    loss = F.smooth_l1_loss(s_dist, t_dist) + 2.0 * F.smooth_l1_loss(s_angle, t_angle)
    return loss.to(student_flat.dtype)


SP_GAMMA = 3000.0  # Tung and Mori 2019, gamma for CIFAR-10
RKD_DISTANCE_WEIGHT = 25.0  # Park et al. 2019: lambda_D = 25, lambda_A = 50


def _similarity_preserving_paper(student_flat: Tensor, teacher_flat: Tensor) -> Tensor:
    """Similarity-preserving KD at the paper's scale: ``gamma * ||G_s - G_t||_F^2 / B^2`` with
    ``gamma = 3000`` (Tung and Mori, ICCV 2019, their CIFAR-10 setting)."""
    return SP_GAMMA * _similarity_preserving(student_flat, teacher_flat)


def _relational_paper(student_flat: Tensor, teacher_flat: Tensor) -> Tensor:
    """Relational KD at the paper's scale: ``25 * distance + 50 * angle`` (Park, Kim, Lu and
    Cho, CVPR 2019), i.e. 25 x ``"rkd"``."""
    return RKD_DISTANCE_WEIGHT * _relational(student_flat, teacher_flat)


RELATION_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sp": _similarity_preserving,
    "rkd": _relational,
    "sp_paper": _similarity_preserving_paper,
    "rkd_paper": _relational_paper,
}


def relation_loss(student_feat: Tensor, teacher_feat: Tensor, kind: str) -> Tensor:
    """Relation loss ``kind`` (a key of ``RELATION_LOSSES``) between raw student and teacher
    features [B, ...], each flattened per sample to [B, D_s] and [B, D_t] (widths may differ).
    A batch of one sample has no relations: the loss is then 0."""
    if kind not in RELATION_LOSSES:
        raise UnknownNameError("relation kind", kind, list(RELATION_LOSSES))
    b = student_feat.shape[0]
    if teacher_feat.shape[0] != b:
        raise ValueError(
            f"student and teacher batches differ: {b} vs {teacher_feat.shape[0]} samples"
        )
    s = student_feat.reshape(b, -1)  # [B, D_s]
    t = teacher_feat.reshape(b, -1)  # [B, D_t]
    if b < 2:
        return full_precision(s).sum().float() * 0.0
    with torch.autocast(s.device.type, enabled=False):
        return RELATION_LOSSES[kind](full_precision(s), full_precision(t))
