"""The feature slot: intermediate features of the student matched to the teacher's.

After an adapter maps the student's feature onto the teacher's shape: cosine, MSE, or FitNets
hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015); or on the student's own
maps: attention transfer (Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR
2017) and neuron selectivity transfer (Huang and Wang, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer", arXiv 2017); or as the likelihood of the teacher's feature under a
Gaussian whose mean is the adapted student feature: variational information distillation (Ahn,
Hu, Damianou, Lawrence and Dai, "Variational Information Distillation for Knowledge Transfer",
CVPR 2019). ``mse`` and ``at`` are unit-free means; ``fitnet`` (1/2 ||.||^2 per sample) and
``at_paper`` (beta/2 = 500) are the papers' scales. Scales matter for fixed weights only: the
``normalized`` weighting divides each term by its own running magnitude.

VID's learned variances are the one state of this slot: ``VIDVariance`` holds them (one module
per layer pair, built by ``HybridLoss``) and ``feature_loss(..., "vid", variance=...)`` takes them.

Two kinds are stateful modules over all the pairs at once, their math in modules of their own:
``reviewkd`` (Chen, Liu, Zhao and Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021;
``workbench.distill.review``: its per-pair math is the hierarchical context loss ``hcl``) and
``ofd`` (Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019;
``workbench.distill.overhaul``: the partial L2 against the teacher's pre-ReLU map, with a margin
from the teacher's BatchNorm). Both bring their own connectors, so the engine builds no adapters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.distill.overhaul import ofd_partial_l2
from workbench.distill.precision import full_precision
from workbench.distill.review import hcl
from workbench.errors import IncompatibleModelsError, UnknownNameError

__all__ = [
    "AT_BETA",
    "FEATURE_LOSSES",
    "UNADAPTED_FEATURE_KINDS",
    "VID_EPS",
    "VID_INITIAL_VARIANCE",
    "VIDVariance",
    "feature_channels",
    "feature_loss",
    "nst_mmd",
    "uses_adapter",
    "vid_nll",
]


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
    return F.normalize(_resized(q, size).flatten(1), p=2, dim=1)  # [B, H'*W']


def _resized(maps: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Maps [B, C, H, W] at spatial ``size`` (H', W'): adaptive average pooling when they are
    larger, bilinear interpolation when smaller, unchanged when ``size`` is None or equal."""
    if size is None or tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(maps, size)  # [B, C, H', W']
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


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


# ----------------------------------------------------------------------------------- NST
def _channel_maps(feat: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Each channel's spatial map, flattened and l2-normalised: [B, C, H, W] -> [B, C, H'*W']
    (resized to ``size`` first, as ``_resized``)."""
    if feat.ndim != 4:
        raise IncompatibleModelsError(
            f"neuron selectivity transfer needs 4-D feature maps [B, C, H, W], got shape "
            f"{list(feat.shape)}: choose feature kind cosine or mse, or convolutional layers"
        )
    maps = _resized(full_precision(feat), size).flatten(2)  # [B, C, H'*W']
    return F.normalize(maps, p=2, dim=2)


def _poly_kernel_mean(x: Tensor, y: Tensor, degree: int, c: float) -> Tensor:
    """mean over b, i, j of k(x[b, i], y[b, j]) = (x[b, i] . y[b, j] + c)^degree; x [B, I, N],
    y [B, J, N]."""
    return (x @ y.transpose(1, 2) + c).pow(degree).mean()  # [B, I, J] -> []


def nst_mmd(student_maps: Tensor, teacher_maps: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Squared MMD between the student's and the teacher's channels, each channel a sample
    (its normalised spatial map f^i [B, C, N]), under the polynomial kernel k(x, y) = (x.y + c)^d:

        MMD^2 = mean_{i,i'} k(s^i, s^i') + mean_{j,j'} k(t^j, t^j') - 2 mean_{i,j} k(s^i, t^j)

    per sample, mean over the batch (the channel counts C_s and C_t may differ). The teacher's
    own term is a constant, detached as in the reference code."""
    s, t = student_maps, teacher_maps
    return (
        _poly_kernel_mean(s, s, degree, c)
        + _poly_kernel_mean(t, t, degree, c).detach()
        - 2.0 * _poly_kernel_mean(s, t, degree, c)
    )


def _neuron_selectivity(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Neuron selectivity transfer (Huang and Wang, "Like What You Like: Knowledge Distill via
    Neuron Selectivity Transfer", arXiv 1707.01219, 2017): ``nst_mmd`` of the l2-normalised
    channel maps with the paper's polynomial kernel d = 2, c = 0 (as RepDistiller's NSTLoss).

    On the student's *own* maps, like attention transfer: the kernel compares spatial patterns,
    so channel counts may differ; the student's maps are resized to the teacher's spatial size
    (the reference pools the larger of the two). Unit-free: no paper weight is included.
    Maps [B, C_s, H, W] and [B, C_t, H', W'].
    """
    if teacher_feat.ndim != 4:
        _channel_maps(teacher_feat)  # raises with the fix
    size = (int(teacher_feat.shape[-2]), int(teacher_feat.shape[-1]))
    return nst_mmd(_channel_maps(student_feat, size), _channel_maps(teacher_feat))


# ----------------------------------------------------------------------------------- VID
VID_INITIAL_VARIANCE = 5.0  # Ahn et al. 2019 / RepDistiller's VIDLoss: init_pred_var = 5
VID_EPS = 1e-5  # the variance's floor, eps = 1e-5


def feature_channels(sample_shape: Sequence[int]) -> int:
    """The channel count of a feature of per-sample shape ``sample_shape`` (no batch dimension,
    as ``LayerInfo.shape``): C of (C, H, W) and of (C,), D of (T, D). VID learns one variance
    per channel of the teacher feature: ``teacher_channels`` of ``HybridLoss``."""
    shape = tuple(int(n) for n in sample_shape)
    if not shape:
        raise IncompatibleModelsError("a feature needs at least one dimension besides the batch")
    return shape[1] if len(shape) == 2 else shape[0]  # as _vector_dim, less the batch


class VIDVariance(nn.Module):
    """VID's learned per-channel variance sigma_c^2 = softplus(alpha_c) + eps, initialised so
    that sigma_c^2 = 5 (RepDistiller's ``log_scale``). ``channels`` is the teacher feature's
    channel count (its vector dimension, see ``_vector_dim``); ``forward()`` gives [C]."""

    def __init__(self, channels: int, initial: float = VID_INITIAL_VARIANCE, eps: float = VID_EPS):
        super().__init__()
        self.eps = float(eps)
        start = math.log(math.expm1(initial - eps))  # softplus^-1(initial - eps)
        self.alpha = nn.Parameter(torch.full((int(channels),), start))  # [C]

    def forward(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps  # [C]

    def extra_repr(self) -> str:
        return f"channels={self.alpha.numel()}, eps={self.eps:g}"


def vid_nll(mean: Tensor, target: Tensor, variance: Tensor) -> Tensor:
    """Gaussian negative log-likelihood of VID, without the constant 0.5 log(2 pi):

        NLL = mean over all elements of 0.5 * (log sigma_c^2 + (t - mu)^2 / sigma_c^2)

    mean mu and target t [B, C, ...] (or [B, T, C]: the vector dimension of ``_vector_dim``),
    variance sigma^2 [C] (one per channel) or a scalar."""
    mu, t = full_precision(mean), full_precision(target)
    var = full_precision(variance)
    if var.ndim == 1:  # [C] broadcast along the vector dimension
        dim = _vector_dim(t)
        if var.numel() != t.shape[dim]:
            raise IncompatibleModelsError(
                f"VID has {var.numel()} variances for a teacher feature of {t.shape[dim]} "
                f"channels (shape {list(t.shape)}): size teacher_channels from the teacher layers"
            )
        shape = [1] * t.ndim
        shape[dim] = var.numel()
        var = var.view(shape)
    return (0.5 * (var.log() + (t - mu).pow(2) / var)).mean()


def _variational(
    student_feat: Tensor, teacher_feat: Tensor, *, variance: Tensor | None = None
) -> Tensor:
    """Variational information distillation (Ahn, Hu, Damianou, Lawrence and Dai, "Variational
    Information Distillation for Knowledge Transfer", CVPR 2019): maximise a variational lower
    bound on the mutual information of teacher and student features, i.e. minimise ``vid_nll``
    of the teacher feature under N(mu(s), sigma^2), mu the adapter (the reference's 1x1-conv
    regressor), sigma_c^2 a learned per-channel variance (``VIDVariance``, initially 5).
    ``HybridLoss`` passes each pair's variance; without one the variance is 1 and the loss is
    half the MSE. Adapted student feature and teacher feature [B, C, ...] of the same shape."""
    if variance is None:
        variance = torch.ones((), device=teacher_feat.device)
    return vid_nll(student_feat, teacher_feat, variance)


FEATURE_LOSSES: dict[str, Callable[..., Tensor]] = {
    "cosine": _cosine,
    "mse": _mse,
    "at": _attention,
    "fitnet": _fitnet,
    "at_paper": _attention_paper,
    "nst": _neuron_selectivity,
    "vid": _variational,
    "reviewkd": hcl,  # one (fused, teacher) pair; the ABFs are ReviewKDTerm's
    "ofd": ofd_partial_l2,  # one (connected, teacher) pair; margin from OFDTerm
}

# Feature kinds that compare the student's own features (no adapter in front of them), or that
# bring their own connectors (ReviewKD's ABFs, OFD's conv + BN): the engine builds no adapters.
UNADAPTED_FEATURE_KINDS = ("at", "at_paper", "nst", "reviewkd", "ofd")


def uses_adapter(kind: str) -> bool:
    """True when feature kind ``kind`` compares an adapted student feature with the teacher's;
    attention transfer compares the student's own maps. The engine builds adapters only then."""
    return kind not in UNADAPTED_FEATURE_KINDS


def feature_loss(student_feat: Tensor, teacher_feat: Tensor, kind: str, **params: Tensor) -> Tensor:
    """Feature loss ``kind`` (a key of ``FEATURE_LOSSES``) between a student feature and the
    teacher feature, both [B, ...]. For ``cosine``, ``mse``, ``fitnet`` and ``vid`` the student
    feature must already be adapted to the teacher's shape; ``at``, ``at_paper`` and ``nst`` take
    the student's own map [B, C_s, H, W] (channels may differ, the spatial size is matched).
    ``params``: ``variance`` [C] for ``vid`` (see ``VIDVariance``); ``margin`` [C] for ``ofd``
    (``overhaul.ofd_margin``; required). ``reviewkd`` is the HCL of one fused student feature
    and the teacher's, of one shape."""
    if kind not in FEATURE_LOSSES:
        raise UnknownNameError("feature kind", kind, list(FEATURE_LOSSES))
    if uses_adapter(kind):
        _check_same_shape(student_feat, teacher_feat)
    elif student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError(
            f"student and teacher batches differ: {student_feat.shape[0]} vs "
            f"{teacher_feat.shape[0]} samples"
        )
    return FEATURE_LOSSES[kind](student_feat, teacher_feat, **params)
