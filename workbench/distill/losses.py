"""Distillation losses: pure functions of tensors, and ``HybridLoss``, which wires them.

Four kinds of knowledge, one function each:

- label: cross-entropy with the ground truth;
- response: the teacher's softened class distribution (Hinton, Vinyals and Dean, "Distilling
  the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop, arXiv 2015);
- feature: intermediate features, after an adapter maps the student's onto the teacher's shape
  (cosine; FitNets hints, Romero et al., ICLR 2015), or the student's own maps (attention
  transfer, Zagoruyko and Komodakis, ICLR 2017);
- relation: how the samples of a batch relate to each other, on the raw features, whose widths
  may differ (similarity-preserving KD, Tung and Mori, ICCV 2019; relational KD, Park et al.,
  CVPR 2019).

Scales: ``mse``, ``at``, ``sp`` and ``rkd`` are unit-free means (the values of earlier runs);
``fitnet`` (1/2 ||.||^2 per sample), ``at_paper`` (beta/2 = 500), ``sp_paper`` (gamma = 3000)
and ``rkd_paper`` (25 : 50) are the papers' scales. Scales matter for fixed weights only: the
``normalized`` weighting scheme divides each term by its own running magnitude.

Every loss is computed and returned in float32 (float64 inputs stay float64), also under
autocast: the relation losses run with autocast off, since a bf16 Gram matrix loses the small
differences they compare (RKD's geometry even runs in float64, see ``_rkd_geometry``). Nothing
here calls ``.item()`` or otherwise waits for the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.config.loss_terms import COMPONENTS, LossWeights
from workbench.distill.weighting import WEIGHTINGS
from workbench.errors import ConfigError, IncompatibleModelsError, UnknownNameError

__all__ = [
    "FEATURE_LOSSES",
    "RELATION_LOSSES",
    "UNADAPTED_FEATURE_KINDS",
    "HybridLoss",
    "feature_loss",
    "label_loss",
    "relation_loss",
    "response_loss",
    "uses_adapter",
]


def _full(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it already is (bf16/fp16 features from autocast)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ------------------------------------------------------------------------------ label, response
def label_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy with the labels, mean over the batch. logits [B, K], targets [B] (int64)."""
    return F.cross_entropy(_full(logits), targets)


def response_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Soft-target loss of Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural
    Network":

        L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),  summed over classes, mean over batch

    (PyTorch's ``"batchmean"``). The ``T^2`` keeps the gradient's magnitude independent of ``T``
    (the soft gradient scales as ``1 / T^2``). Logits [B, K].
    """
    t = float(temperature)
    log_p_s = F.log_softmax(_full(student_logits) / t, dim=1)  # [B, K]
    log_p_t = F.log_softmax(_full(teacher_logits) / t, dim=1)  # [B, K]
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


# ------------------------------------------------------------------------------------- features
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
    cos = F.cosine_similarity(_full(student_feat), _full(teacher_feat), dim=dim, eps=1e-8)
    return (1.0 - cos).mean()  # cos: [B, H, W], [B, T] or [B]


def _mse(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets hint loss (Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints for
    Thin Deep Nets", ICLR 2015): mean over all elements of ``(r(s) - t)^2``, ``r`` the adapter
    (the paper's regressor). This is the paper's ``1/2 ||r(s) - t||^2`` per sample divided by
    ``D / 2`` (``D`` elements per sample); ``"fitnet"`` is the paper's scale."""
    return F.mse_loss(_full(student_feat), _full(teacher_feat))


def _fitnet(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets hint loss at the paper's scale: ``1/2 ||r(s) - t||^2`` per sample (summed over
    the sample's elements), mean over the batch (eq. 3 of Romero et al., ICLR 2015). For an
    [8, 8] map of 64 channels this is 2048x ``"mse"``."""
    diff = _full(student_feat) - _full(teacher_feat)  # [B, ...]
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
    q = _full(feat).pow(2).mean(dim=1, keepdim=True)  # [B, 1, H, W]
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


# ------------------------------------------------------------------------------------ relations
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
        return _full(s).sum().float() * 0.0
    with torch.autocast(s.device.type, enabled=False):
        return RELATION_LOSSES[kind](_full(s), _full(t))


# ----------------------------------------------------------------------------------- the hybrid
def _same(x: Tensor) -> Tensor:
    return x


class HybridLoss(nn.Module):
    """Weighted sum of the label, response, feature and relation terms.

    ``forward`` returns the four terms and their ``total``; how the terms are combined is the
    weighting scheme's (``workbench.distill.weighting.WEIGHTINGS``: ``fixed`` gives
    ``total = sum_k w_k L_k``). A component whose configured weight is 0 is never computed (its
    value is a constant 0), so a label-only student never touches teacher inputs.

    - feature term: ``sum_i feature_loss(adapters[i](s_i), t_i, feature_kind)`` over the layer
      pairs (without adapters the student features must already have the teacher's shapes);
      attention transfer (``at``, ``at_paper``) uses the student's own maps ``s_i``: adapters
      given for it are not used and are not parameters of the loss;
    - relation term: ``sum_i relation_loss(s_i, t_i, relation_kind)`` on the raw features.

    Names: ``configured`` holds the weights as set (``{component: w}``), ``scheme`` the weighting
    module built from them (``scheme_name`` its registry name); ``current_weights()`` the
    effective weights at the latest ``forward``. The module's parameters are the adapters' and
    the scheme's: build it before the optimizer and hand the optimizer ``parameters()``.
    """

    def __init__(
        self,
        weights: LossWeights,
        *,
        temperature: float,
        feature_kind: str = "cosine",
        relation_kind: str = "sp",
        adapters: nn.ModuleList | None = None,
        weighting: str = "fixed",
    ) -> None:
        super().__init__()
        weights.validate()
        if feature_kind not in FEATURE_LOSSES:
            raise UnknownNameError("feature kind", feature_kind, list(FEATURE_LOSSES))
        if relation_kind not in RELATION_LOSSES:
            raise UnknownNameError("relation kind", relation_kind, list(RELATION_LOSSES))
        if weighting not in WEIGHTINGS:
            raise UnknownNameError("weighting scheme", weighting, list(WEIGHTINGS))
        if isinstance(temperature, bool) or not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        self.configured = weights.as_dict()  # the weights the user set, {component: w}
        self.temperature = float(temperature)
        self.feature_kind = feature_kind
        self.relation_kind = relation_kind
        # Attention transfer compares the student's own maps: an adapter in front would let a
        # learned map fit the teacher's attention while the student stays as it is.
        self.adapters = adapters if uses_adapter(feature_kind) else None
        self.scheme_name = weighting
        self.scheme = WEIGHTINGS[weighting](self.configured)  # the weighting module

    @property
    def needs_teacher(self) -> bool:
        """True when a term reads the teacher's logits or features."""
        return any(self.configured[k] > 0 for k in ("response", "feature", "relation"))

    @property
    def needs_features(self) -> bool:
        """True when a term reads intermediate features."""
        return self.configured["feature"] > 0 or self.configured["relation"] > 0

    def forward(
        self,
        student_logits: Tensor,
        targets: Tensor,
        teacher_logits: Tensor | None = None,
        student_feats: Sequence[Tensor] = (),
        teacher_feats: Sequence[Tensor] = (),
    ) -> dict[str, Tensor]:
        """Terms and total for one batch: logits [B, K], targets [B], features [B, ...] per pair.

        Teacher tensors are read only (they may be inference tensors or cached constants).
        """
        needed = self.scheme.needed(self.configured)
        zero = torch.zeros((), device=student_logits.device)
        terms: dict[str, Tensor] = dict.fromkeys(COMPONENTS, zero)
        if "label" in needed:
            terms["label"] = label_loss(student_logits, targets)
        if "response" in needed:
            if teacher_logits is None:
                raise ValueError("the response term needs teacher_logits")
            terms["response"] = response_loss(student_logits, teacher_logits, self.temperature)
        if "feature" in needed:
            pairs = self._pairs(student_feats, teacher_feats, "feature")
            if self.adapters is not None and len(self.adapters) != len(pairs):
                raise ValueError(f"{len(self.adapters)} adapters for {len(pairs)} layer pairs")
            adapters = self.adapters if self.adapters is not None else [_same] * len(pairs)
            terms["feature"] = torch.stack(
                [
                    feature_loss(adapter(s), t, self.feature_kind)
                    for adapter, (s, t) in zip(adapters, pairs, strict=True)
                ]
            ).sum()
        if "relation" in needed:
            pairs = self._pairs(student_feats, teacher_feats, "relation")
            terms["relation"] = torch.stack(
                [relation_loss(s, t, self.relation_kind) for s, t in pairs]
            ).sum()
        active = {k: terms[k] for k in needed}
        return {**terms, "total": self.scheme(active, self.configured)}

    @staticmethod
    def _pairs(
        student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], term: str
    ) -> list[tuple[Tensor, Tensor]]:
        if len(student_feats) != len(teacher_feats) or not student_feats:
            raise ValueError(
                f"the {term} term needs one teacher feature per student feature (at least one "
                f"pair), got {len(student_feats)} student and {len(teacher_feats)} teacher"
            )
        return list(zip(student_feats, teacher_feats, strict=True))

    def current_weights(self) -> dict[str, float]:
        """Effective weight of each component at the latest ``forward`` (may sync the device)."""
        return self.scheme.current()

    def epoch_end(self, val_acc: float) -> None:
        """Tell the weighting scheme the validation accuracy of the epoch that just ended."""
        self.scheme.epoch_end(val_acc)

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.configured.items())
        return (
            f"{w}, temperature={self.temperature:g}, feature_kind={self.feature_kind}, "
            f"relation_kind={self.relation_kind}, weighting={self.scheme_name}"
        )
