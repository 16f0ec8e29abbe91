"""The feature slot: intermediate features of the student matched to the teacher's.

After an adapter maps the student's feature onto the teacher's shape: cosine, MSE, or FitNets
hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015); or on the student's own
maps: attention transfer (Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR
2017). ``mse`` and ``at`` are unit-free means; ``fitnet`` (1/2 ||.||^2 per sample) and
``at_paper`` (beta/2 = 500) are the papers' scales. Scales matter for fixed weights only: the
``normalized`` weighting divides each term by its own running magnitude.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from workbench.distill.precision import full_precision
from workbench.errors import IncompatibleModelsError, UnknownNameError

__all__ = ["AT_BETA", "FEATURE_LOSSES", "UNADAPTED_FEATURE_KINDS", "feature_loss", "uses_adapter"]


def _vector_dim(x: Tensor) -> int:
    """The dimension that holds one feature vector: channels of [B, C, H, W] (every spatial
    position is one vector), the last of [B, T, D] (one vector per token), the features of
    [B, D]."""
    if x.ndim == 3:
        return 2
    if x.ndim >= 2:
        return 1
    raise IncompatibleModelsError(
        f"a feature needs a batch dimension and at least one more, got shape {list(x.shape)}"
    )


def _check_same_shape(student_feat: Tensor, teacher_feat: Tensor) -> None:
    if student_feat.shape != teacher_feat.shape:
        raise IncompatibleModelsError(
            f"the adapted student feature {list(student_feat.shape)} does not match the teacher "
            f"feature {list(teacher_feat.shape)}: the adapter must map the student layer to the "
            "teacher layer's shape (pick another layer pair or build the adapters for these layers)"
        )


def _cosine(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Mean over samples and positions of ``1 - cos(s, t)``; no temperature factor.

    The course sketch multiplies this by ``T^2``; that factor belongs to the softened softmax of
    the response loss only, and here would just rescale the feature weight by ``T^2``.
    """
    dim = _vector_dim(teacher_feat)
    cos = F.cosine_similarity(
        full_precision(student_feat), full_precision(teacher_feat), dim=dim, eps=1e-8
    )
    return (1.0 - cos).mean()  # cos: [B, H, W], [B, T] or [B]


def _mse(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets hint loss (Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints for
    Thin Deep Nets", ICLR 2015): mean over all elements of ``(r(s) - t)^2``, ``r`` the adapter
    (the paper's regressor). This is the paper's ``1/2 ||r(s) - t||^2`` per sample divided by
    ``D / 2`` (``D`` elements per sample); ``"fitnet"`` is the paper's scale."""
    return F.mse_loss(full_precision(student_feat), full_precision(teacher_feat))


def _fitnet(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets hint loss at the paper's scale: ``1/2 ||r(s) - t||^2`` per sample (summed over
    the sample's elements), mean over the batch (eq. 3 of Romero et al., ICLR 2015). For an
    [8, 8] map of 64 channels this is 2048x ``"mse"``."""
    diff = full_precision(student_feat) - full_precision(teacher_feat)  # [B, ...]
    return 0.5 * diff.pow(2).sum() / diff.shape[0]


def _attention_map(feat: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """a(f) = l2_normalize(flatten(mean_c f^2)), [B, C, H, W] -> [B, H'*W'].

    With ``size = (H', W')`` different from ``(H, W)``, the map ``mean_c f^2`` [B, H, W] is
    resized first: adaptive average pooling when it is larger, bilinear interpolation when it
    is smaller (as the adapters resize maps), so only the batch must agree.
    """
    if feat.ndim != 4:
        raise IncompatibleModelsError(
            f"attention transfer needs 4-D feature maps [B, C, H, W], got shape "
            f"{list(feat.shape)}: choose feature kind cosine or mse, or convolutional layers"
        )
    q = full_precision(feat).pow(2).mean(dim=1, keepdim=True)  # [B, 1, H, W]
    if size is not None and tuple(q.shape[-2:]) != tuple(size):
        if q.shape[-2] >= size[0] and q.shape[-1] >= size[1]:
            q = F.adaptive_avg_pool2d(q, size)  # [B, 1, H', W']
        else:
            q = F.interpolate(q, size=size, mode="bilinear", align_corners=False)
    return F.normalize(q.flatten(1), p=2, dim=1)  # [B, H'*W']


def _attention(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Activation-based attention transfer (Zagoruyko and Komodakis, "Paying More Attention to
    Attention", ICLR 2017), with the authors' choice p = 2 and mean-of-squares over channels:

        a(f) = l2_normalize(flatten(mean_c f^2)),   L = mean((a(s) - a(t))^2)

    (mean over samples and positions, as in the authors' code), on the student's *own* map:
    channel counts may differ, only the spatial sizes are compared (the student's map is
    resized to the teacher's when they differ, see ``_attention_map``). No adapter: a learned
    map in front of the student could fit the teacher's attention without the student changing.
    The paper weights this by ``beta / 2`` with ``beta = 1000``; ``"at_paper"`` includes it.
    Maps [B, C_s, H, W] and [B, C_t, H', W'].
    """
    if teacher_feat.ndim != 4:
        _attention_map(teacher_feat)  # raises with the fix
    size = (int(teacher_feat.shape[-2]), int(teacher_feat.shape[-1]))
    a_s = _attention_map(student_feat, size)  # [B, H'*W']
    a_t = _attention_map(teacher_feat)  # [B, H'*W']
    return (a_s - a_t).pow(2).mean()


AT_BETA = 1000.0  # Zagoruyko and Komodakis 2017: beta = 10^3, applied as beta / 2


def _attention_paper(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Attention transfer at the paper's scale: ``beta / 2 * _attention`` with ``beta = 1000``
    (Zagoruyko and Komodakis, ICLR 2017, and their code: ``beta / 2 * sum of at_loss``)."""
    return (AT_BETA / 2) * _attention(student_feat, teacher_feat)


FEATURE_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cosine": _cosine,
    "mse": _mse,
    "at": _attention,
    "fitnet": _fitnet,
    "at_paper": _attention_paper,
}

# Feature kinds that compare the student's own features (no adapter in front of them).
UNADAPTED_FEATURE_KINDS = ("at", "at_paper")


def uses_adapter(kind: str) -> bool:
    """True when feature kind ``kind`` compares an adapted student feature with the teacher's;
    attention transfer compares the student's own maps. The engine builds adapters only then."""
    return kind not in UNADAPTED_FEATURE_KINDS


def feature_loss(student_feat: Tensor, teacher_feat: Tensor, kind: str) -> Tensor:
    """Feature loss ``kind`` (a key of ``FEATURE_LOSSES``) between a student feature and the
    teacher feature, both [B, ...]. For ``cosine``, ``mse`` and ``fitnet`` the student feature
    must already be adapted to the teacher's shape; ``at`` and ``at_paper`` take the student's
    own map [B, C_s, H, W] (channels may differ, the spatial size is matched)."""
    if kind not in FEATURE_LOSSES:
        raise UnknownNameError("feature kind", kind, list(FEATURE_LOSSES))
    if uses_adapter(kind):
        _check_same_shape(student_feat, teacher_feat)
    elif student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError(
            f"student and teacher batches differ: {student_feat.shape[0]} vs "
            f"{teacher_feat.shape[0]} samples"
        )
    return FEATURE_LOSSES[kind](student_feat, teacher_feat)
