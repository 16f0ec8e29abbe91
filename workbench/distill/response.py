"""The label and response slots: what the student's logits are compared with.

- label: cross-entropy with the ground truth;
- response: the teacher's softened class distribution (Hinton, Vinyals and Dean, "Distilling
  the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop, arXiv 2015).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from workbench.distill.precision import full_precision

__all__ = ["label_loss", "response_loss"]


def label_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy with the labels, mean over the batch. logits [B, K], targets [B] (int64)."""
    return F.cross_entropy(full_precision(logits), targets)


def response_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Soft-target loss of Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural
    Network":

        L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),  summed over classes, mean over batch

    (PyTorch's ``"batchmean"``). The ``T^2`` keeps the gradient's magnitude independent of ``T``
    (the soft gradient scales as ``1 / T^2``). Logits [B, K].
    """
    t = float(temperature)
    log_p_s = F.log_softmax(full_precision(student_logits) / t, dim=1)  # [B, K]
    log_p_t = F.log_softmax(full_precision(teacher_logits) / t, dim=1)  # [B, K]
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)
