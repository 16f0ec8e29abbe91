"""The relation slot: how the samples of a batch relate to each other, student against teacher.

Computed on the raw features, whose widths may differ: similarity-preserving KD (Tung and Mori,
"Similarity-Preserving Knowledge Distillation", ICCV 2019), relational KD (Park et al.,
"Relational Knowledge Distillation", CVPR 2019), probabilistic knowledge transfer (Passalis and
Tefas, ECCV 2018) and correlation congruence (Peng et al., ICCV 2019). ``sp`` and ``rkd`` are
unit-free means; ``sp_paper`` (gamma = 3000) and ``rkd_paper`` (25 : 50) are the papers' scales.
They run with autocast off, since a bf16 Gram matrix loses the small differences they compare
(RKD's geometry even runs in float64). All are stateless (no embedding head is learned here)
except contrastive representation distillation (Tian, Krishnan and Isola, ICLR 2020): ``crd``
keeps memory banks of the training set and learned heads, so ``HybridLoss`` builds it as a
module (``workbench.distill.contrastive``); its entry here is its pure math, ``crd_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.distill.contrastive import crd_loss
from workbench.distill.precision import full_precision
from workbench.errors import UnknownNameError

__all__ = [
    "CC_GAMMA",
    "CC_ORDER",
    "PKT_EPS",
    "RELATION_LOSSES",
    "RKD_DISTANCE_WEIGHT",
    "SP_GAMMA",
    "cc_correlation",
    "pkt_probabilities",
    "relation_loss",
]


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


# ----------------------------------------------------------------------------------- PKT
PKT_EPS = 1e-7  # RepDistiller's PKT.cosine_similarity_loss: eps = 0.0000001


def pkt_probabilities(f: Tensor, eps: float = PKT_EPS) -> Tensor:
    """PKT's conditional probabilities of the flattened features f [B, D] -> [B, B]: the cosine
    kernel K_ij = <f_i, f_j> / (|f_i| |f_j|) (each norm plus ``eps``) mapped to [0, 1] as
    (K + 1) / 2, each row divided by its sum: p_{j|i}."""
    f = f / (f.norm(dim=1, keepdim=True) + eps)  # [B, D]
    k = (f @ f.T + 1.0) / 2.0  # [B, B]
    return k / k.sum(dim=1, keepdim=True)


def _probabilistic(student_flat: Tensor, teacher_flat: Tensor, *, eps: float = PKT_EPS) -> Tensor:
    """Probabilistic knowledge transfer (Passalis and Tefas, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", ECCV 2018), as the authors' code (RepDistiller's PKT):

        L = mean_{i,j} p^t_{j|i} log((p^t_{j|i} + eps) / (p^s_{j|i} + eps))

    the KL divergence KL(P_t || P_s) of each row of ``pkt_probabilities`` (the diagonal
    included), summed over j and averaged over all B^2 entries, i.e. sum_i KL_i / B^2; eps = 1e-7.
    Features [B, D_s] and [B, D_t]."""
    p_s = pkt_probabilities(student_flat, eps)  # [B, B]
    p_t = pkt_probabilities(teacher_flat, eps)  # [B, B]
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ------------------------------------------------------------------------------------ CC
CC_GAMMA = 0.4  # Peng et al. 2019 (and torchdistill's CCKDLoss config): gamma = 0.4
CC_ORDER = 2  # P = 2: the Taylor expansion's order


def cc_correlation(f: Tensor, gamma: float = CC_GAMMA, order: int = CC_ORDER) -> Tensor:
    """Correlation matrix [B, B] of the l2-normalised features f [B, D] under the Gaussian RBF
    kernel exp(-gamma ||f_i - f_j||^2) = exp(-2 gamma) exp(2 gamma f_i.f_j) (unit vectors),
    the second exponential replaced by its order-P Taylor expansion:

        C_ij = exp(-2 gamma) * sum_{p=0}^{P} (2 gamma)^p / p! * (f_i . f_j)^p
    """
    f = F.normalize(f, p=2, dim=1)  # [B, D]
    g = f @ f.T  # [B, B]
    c = torch.ones_like(g)
    for p in range(1, int(order) + 1):
        c = c + (2.0 * gamma) ** p / math.factorial(p) * g.pow(p)
    return math.exp(-2.0 * gamma) * c


def _correlation_congruence(
    student_flat: Tensor, teacher_flat: Tensor, *, gamma: float = CC_GAMMA, order: int = CC_ORDER
) -> Tensor:
    """Correlation congruence (Peng et al., "Correlation Congruence for Knowledge
    Distillation", ICCV 2019):

        L = ||C_s - C_t||_F^2 / B^2,   C = ``cc_correlation`` (gamma = 0.4, P = 2)

    The reference (the paper, torchdistill's ``CCKDLoss``) applies it to l2-normalised linear
    embeddings of the penultimate features, learned with the student; here it runs on the
    slot's flattened features themselves, normalised, so the loss stays stateless and the widths
    may differ. torchdistill returns the unsquared norm ``torch.dist`` / B^2; this is the paper's
    squared norm. Features [B, D_s] and [B, D_t]."""
    b = student_flat.shape[0]
    diff = cc_correlation(student_flat, gamma, order) - cc_correlation(teacher_flat, gamma, order)
    return diff.pow(2).sum() / (b * b)


RELATION_LOSSES: dict[str, Callable[..., Tensor]] = {
    "sp": _similarity_preserving,
    "rkd": _relational,
    "sp_paper": _similarity_preserving_paper,
    "rkd_paper": _relational_paper,
    "pkt": _probabilistic,
    "cc": _correlation_congruence,
    "crd": crd_loss,  # on embeddings and memory rows: the module ContrastiveRepresentation
}


def relation_loss(student_feat: Tensor, teacher_feat: Tensor, kind: str, **params: float) -> Tensor:
    """Relation loss ``kind`` (a key of ``RELATION_LOSSES``) between raw student and teacher
    features [B, ...], each flattened per sample to [B, D_s] and [B, D_t] (widths may differ).
    A batch of one sample has no relations: the loss is then 0. ``params``: ``eps`` for ``pkt``;
    ``gamma``, ``order`` for ``cc``."""
    if kind not in RELATION_LOSSES:
        raise UnknownNameError("relation kind", kind, list(RELATION_LOSSES))
    if kind == "crd":
        raise ValueError(
            "relation kind crd keeps memory banks of the training set (one row per sample) and "
            "learned embedding heads, so it is no function of one batch: HybridLoss "
            "(workbench.distill.hybrid) builds it as a module from the run's MethodInputs "
            "(workbench.distill.contrastive.ContrastiveRepresentation); its math on embeddings "
            "and memory rows is workbench.distill.contrastive.crd_loss"
        )
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
        return RELATION_LOSSES[kind](full_precision(s), full_precision(t), **params)
