"""What a model's test logits say beyond its accuracy: how well its confidence is calibrated,
and whether it learned the teacher's class similarities.

- Calibration (Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks",
  ICML 2017): the expected calibration error over 15 equal-width confidence bins,

      ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|,

  with conf the top softmax probability and acc whether that class is the label; the bins give
  the reliability diagram. The negative log-likelihood is the mean cross-entropy of the labels.
- Class similarities (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022, Fig. 5, and
  mdistiller's ``tools/visualizations/correlation``): for each class c the mean logit vector of
  the test images of class c, a [K, K] matrix ``M``; the gap of a student is ``|M_s - M_t|``,
  and its number the mean of the off-diagonal entries (the diagonal is each class's own score,
  which accuracy already measures).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BINS",
    "class_mean_logits",
    "expected_calibration_error",
    "logit_gap",
    "negative_log_likelihood",
    "reliability_bins",
    "logits_of",
    "quality_on_test",
]

BINS = 15  # Guo et al. 2017


@torch.inference_mode()
def logits_of(model: nn.Module, x: Tensor, batch: int = 512) -> Tensor:
    """The logits of every sample of ``x`` ([N, K], float32, CPU), in eval mode; restores it."""
    was_training = model.training
    model.eval()
    try:
        parts = [model(x[i : i + batch]).float().cpu() for i in range(0, len(x), batch)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def reliability_bins(logits: Tensor, labels: Tensor, bins: int = BINS) -> list[dict[str, float]]:
    """Per confidence bin ``((m-1)/bins, m/bins]``: its share of the samples, their mean
    confidence and their accuracy (0 for an empty bin, whose share is 0). Logits [N, K]."""
    probs = F.softmax(logits.double(), dim=1)  # [N, K]
    conf, pred = probs.max(dim=1)  # [N], [N]
    correct = (pred == labels).double()  # [N]
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=False)  # [N], bin m-1 for (edge, edge]
    n = len(labels)
    out = []
    for m in range(bins):
        inside = which == m
        count = int(inside.sum())
        out.append(
            {
                "share": count / n if n else 0.0,
                "confidence": float(conf[inside].mean()) if count else 0.0,
                "accuracy": float(correct[inside].mean()) if count else 0.0,
            }
        )
    return out


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = BINS) -> float:
    """ECE of Guo et al. (2017) over ``bins`` equal-width confidence bins, in [0, 1]."""
    return float(
        sum(
            b["share"] * abs(b["accuracy"] - b["confidence"])
            for b in reliability_bins(logits, labels, bins)
        )
    )


def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean ``-log softmax(z)_y`` over the samples (nats)."""
    return float(F.cross_entropy(logits.double(), labels))


def class_mean_logits(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Row c: the mean logit vector of the samples of class c ([K, K]; a class without samples
    gives a row of zeros)."""
    sums = torch.zeros(num_classes, logits.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels, logits.double())
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).double()
    return sums / counts[:, None]


def logit_gap(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, num_classes: int
) -> tuple[Tensor, float]:
    """``(|M_s - M_t|, mean of its off-diagonal entries)``, M the class-mean logits."""
    gap = (
        class_mean_logits(student_logits, labels, num_classes)
        - class_mean_logits(teacher_logits, labels, num_classes)
    ).abs()  # [K, K]
    off = ~torch.eye(num_classes, dtype=torch.bool)
    return gap, float(gap[off].mean()) if num_classes > 1 else 0.0


def quality_on_test(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    num_classes: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, probe entries)`` of a finished run from its (and its teacher's) test logits:
    ``ece``, ``nll``, ``teacher_ece``, ``teacher_nll`` and ``logit_gap`` for the run record;
    the reliability bins of both and the [K, K] gap matrix for the probe."""
    metrics: dict[str, Any] = {
        "ece": expected_calibration_error(student_logits, labels),
        "nll": negative_log_likelihood(student_logits, labels),
        "teacher_ece": None,
        "teacher_nll": None,
        "logit_gap": None,
    }
    probe: dict[str, Any] = {"reliability": reliability_bins(student_logits, labels)}
    if teacher_logits is not None:
        metrics["teacher_ece"] = expected_calibration_error(teacher_logits, labels)
        metrics["teacher_nll"] = negative_log_likelihood(teacher_logits, labels)
        gap, mean_gap = logit_gap(student_logits, teacher_logits, labels, num_classes)
        metrics["logit_gap"] = mean_gap
        probe["teacher_reliability"] = reliability_bins(teacher_logits, labels)
        probe["logit_gap_matrix"] = gap.float().tolist()
    return metrics, probe
