"""The label and response slots: what the student's logits are compared with.

- label: cross-entropy with the ground truth;
- response (``RESPONSE_LOSSES``): the teacher's softened class distribution, as a whole
  (``kd``: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014
  Deep Learning Workshop, arXiv 2015), split into its target and non-target parts (``dkd``:
  Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation", CVPR 2022), or through
  the correlations of its probabilities (``dist``: Huang, You, Wang, Qian and Xu, "Knowledge
  Distillation from A Stronger Teacher", NeurIPS 2022).

Every response loss is ``fn(student_logits, teacher_logits, temperature, labels, **params)``
on logits [B, K]; ``response_loss`` checks the kind and the labels and calls it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.distill.precision import full_precision
from workbench.errors import UnknownNameError

__all__ = [
    "DIST_BETA",
    "DIST_GAMMA",
    "DKD_ALPHA",
    "DKD_BETA",
    "RESPONSE_LOSSES",
    "RESPONSE_NEEDS_LABELS",
    "dist_relations",
    "dkd_terms",
    "label_loss",
    "pearson_rows",
    "response_loss",
]


def label_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy with the labels, mean over the batch. logits [B, K], targets [B] (int64)."""
    return F.cross_entropy(full_precision(logits), targets)


def _kd(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, labels: Tensor | None = None
) -> Tensor:
    """Soft-target loss of Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural
    Network":

        L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),  summed over classes, mean over batch

    (PyTorch's ``"batchmean"``). The ``T^2`` keeps the gradient's magnitude independent of ``T``
    (the soft gradient scales as ``1 / T^2``). Logits [B, K]; the labels are not used.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(full_precision(student_logits) / t, dim=1)  # [B, K]
    log_p_t = F.log_softmax(full_precision(teacher_logits) / t, dim=1)  # [B, K]
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


# ------------------------------------------------------------------------------------ DKD
DKD_ALPHA = 1.0  # Zhao et al. 2022 (mdistiller's CIFAR-100 DKD config): alpha = 1
DKD_BETA = 8.0  # beta = 8 (the paper's CIFAR-100 choice; ImageNet uses 0.5)


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities [B, M] -> [B]."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The decomposition of Zhao et al. (CVPR 2022), per sample, at temperature ``T``.

    With p = softmax(z / T) [B, K], t the label, b = (p_t, 1 - p_t) the binary target /
    non-target split and p^ = softmax over the K - 1 non-target logits:

        TCKD = KL(b^T || b^S),   NCKD = KL(p^T || p^S),   KL(p^T || p^S) = TCKD + (1 - p^T_t) NCKD

    Returns ``(tckd, nckd, teacher_target_prob)``, each [B], without the ``T^2`` factor.
    Everything is computed from log-softmaxes (the reference code takes ``log`` of summed
    probabilities and masks the target logit with ``-1000``; the values are the same).
    """
    t = float(temperature)
    z_s = full_precision(student_logits) / t  # [B, K]
    z_t = full_precision(teacher_logits) / t  # [B, K]
    b, k = z_s.shape
    # Indices, not boolean masks: a masked select would wait for the device.
    y = labels.long().view(b, 1)  # [B, 1], the target class
    rest = torch.arange(k - 1, device=z_s.device).expand(b, k - 1)  # [B, K-1]
    rest = rest + (rest >= y).long()  # the other K - 1 classes, in order
    # Binary split (target, non-target) in log space: log p_t and log(sum of the others).
    log_p_s, log_p_t = F.log_softmax(z_s, dim=1), F.log_softmax(z_t, dim=1)  # [B, K]
    log_bin_s = torch.cat(
        [log_p_s.gather(1, y), log_p_s.gather(1, rest).logsumexp(dim=1, keepdim=True)], dim=1
    )  # [B, 2]
    log_bin_t = torch.cat(
        [log_p_t.gather(1, y), log_p_t.gather(1, rest).logsumexp(dim=1, keepdim=True)], dim=1
    )  # [B, 2]
    tckd = _kl_rows(log_bin_t, log_bin_s)  # [B]
    # Among the non-target classes only: softmax over the K - 1 remaining logits.
    log_nt_s = F.log_softmax(z_s.gather(1, rest), dim=1)  # [B, K-1]
    log_nt_t = F.log_softmax(z_t.gather(1, rest), dim=1)  # [B, K-1]
    nckd = _kl_rows(log_nt_t, log_nt_s)  # [B]
    return tckd, nckd, log_bin_t[:, 0].exp()


def _dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    labels: Tensor | None,
    *,
    alpha: float = DKD_ALPHA,
    beta: float = DKD_BETA,
) -> Tensor:
    """Decoupled KD (Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation", CVPR
    2022), as mdistiller's ``dkd_loss``:

        L = T^2 * mean_i (alpha * TCKD_i + beta * NCKD_i)

    (``dkd_terms`` gives the terms). Defaults alpha = 1, beta = 8, T = 4 (CIFAR-100). Classic KD
    is the special case alpha = 1, beta_i = 1 - p^T_t,i: the teacher's confidence suppresses the
    non-target term, which DKD frees. The reference's linear warm-up of the whole term,
    ``min(epoch / 20, 1)``, belongs to the training loop (``HybridLoss(warmup_epochs=...)``).
    Logits [B, K], labels [B] (int64).
    """
    tckd, nckd, _ = dkd_terms(student_logits, teacher_logits, labels, temperature)
    t = float(temperature)
    return (alpha * tckd + beta * nckd).mean() * (t * t)


# ----------------------------------------------------------------------------------- DIST
DIST_BETA = 1.0  # Huang et al. 2022 (hunto/DIST_KD): inter-class weight beta = 1
DIST_GAMMA = 1.0  # intra-class weight gamma = 1


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``, [N, M] -> [N]:
    the cosine of the centred rows, ``eps`` added to the norms' product (as DIST's code)."""
    a = a - a.mean(dim=1, keepdim=True)  # [N, M]
    b = b - b.mean(dim=1, keepdim=True)  # [N, M]
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(p_s: Tensor, p_t: Tensor) -> tuple[Tensor, Tensor]:
    """DIST's two relations of class probabilities p [B, K]: ``(inter, intra)`` with

        inter = 1 - mean_i pearson(p_s[i, :], p_t[i, :])   (each sample across its classes)
        intra = 1 - mean_k pearson(p_s[:, k], p_t[:, k])   (each class across the batch)

    Pearson's correlation ignores any positive affine map ``a p + b`` of either side, the
    "relaxed match" that lets the student differ from a much stronger teacher in scale and shift.
    """
    inter = 1.0 - pearson_rows(p_s, p_t).mean()
    intra = 1.0 - pearson_rows(p_s.T, p_t.T).mean()
    return inter, intra


def _dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    labels: Tensor | None = None,
    *,
    beta: float = DIST_BETA,
    gamma: float = DIST_GAMMA,
) -> Tensor:
    """DIST (Huang, You, Wang, Qian and Xu, "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022), as the authors' ``DIST`` loss:

        p = softmax(z / tau),   L = beta * tau^2 * inter(p_s, p_t) + gamma * tau^2 * intra(p_s, p_t)

    (``dist_relations``), tau the temperature. Defaults beta = gamma = 1; the reference class
    defaults to tau = 1, here tau is the run's temperature. Logits [B, K]; labels not used.
    """
    tau = float(temperature)
    p_s = F.softmax(full_precision(student_logits) / tau, dim=1)  # [B, K]
    p_t = F.softmax(full_precision(teacher_logits) / tau, dim=1)  # [B, K]
    inter, intra = dist_relations(p_s, p_t)
    return (beta * inter + gamma * intra) * (tau * tau)


RESPONSE_LOSSES: dict[str, Callable[..., Tensor]] = {"kd": _kd, "dkd": _dkd, "dist": _dist}
RESPONSE_NEEDS_LABELS = ("dkd",)  # kinds that split the distribution at the label


def response_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    *,
    kind: str = "kd",
    labels: Tensor | None = None,
    **params: float,
) -> Tensor:
    """Response loss ``kind`` (a key of ``RESPONSE_LOSSES``) of student against teacher logits
    [B, K] at ``temperature``; ``labels`` [B] (int64) for ``dkd``; ``params`` are the kind's
    weights (``alpha``, ``beta`` for ``dkd``; ``beta``, ``gamma`` for ``dist``)."""
    if kind not in RESPONSE_LOSSES:
        raise UnknownNameError("response kind", kind, list(RESPONSE_LOSSES))
    if kind in RESPONSE_NEEDS_LABELS and labels is None:
        raise ValueError(
            f"the {kind} response loss splits the teacher's distribution at the true class: "
            "pass labels=[B] class indices"
        )
    return RESPONSE_LOSSES[kind](
        student_logits, teacher_logits, float(temperature), labels, **params
    )
