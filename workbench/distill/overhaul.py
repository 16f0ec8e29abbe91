"""OFD: Heo, Kim, Yun, Park, Kwak and Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019 (reference code: clovaai/overhaul-distillation, ``CIFAR-100/distiller.py``; mdistiller's
``mdistiller/distillers/OFD.py`` is the same method).

The teacher's feature is taken *before* its ReLU, where it still carries the negative values the
ReLU would erase; the student's feature passes through a connector (1x1 conv + BN) to the
teacher's channels; the target is ``max(t, m)``, ``m`` a per-channel margin: the expected value of
the negative responses, from the teacher's BatchNorm (``ofd_margin``); and the partial L2 leaves
out the positions where both are "off" (``s <= t <= 0``): the ReLU would make them equal anyway.

``ofd_partial_l2`` is the per-pair math (registered as the feature kind ``ofd``); ``OFDTerm`` the
stateful module ``HybridLoss`` builds: the connectors (trained with the student) and the margins
(buffers, in the loss's ``state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.distill.precision import full_precision
from workbench.distill.stateful import MethodInputs, TermModule
from workbench.errors import IncompatibleModelsError

__all__ = [
    "OFD_MIN_NEGATIVE_MASS",
    "OFDTerm",
    "ofd_connector",
    "ofd_margin",
    "ofd_partial_l2",
    "pre_activation_bn",
]

OFD_MIN_NEGATIVE_MASS = 0.001  # the reference: below P(x < 0) = 0.001 the margin is -3 sigma


def ofd_margin(weight: Tensor, bias: Tensor) -> Tensor:
    """The margin per channel [C] from a BatchNorm's affine weight and bias [C] (the reference's
    ``get_margin_from_BN``): the BN output is taken as x ~ N(mu, sigma^2) with mu = bias and
    sigma = |weight|, and the margin is the mean of its negative part,

        m = E[x | x < 0] = mu - sigma * phi(mu / sigma) / Phi(-mu / sigma),

    phi and Phi the standard normal density and distribution; where Phi(-mu / sigma) (the mass
    below 0) is at most 0.001, m = -3 sigma. Always < 0. Computed in float64, returned float32."""
    sigma = weight.detach().to(torch.float64).abs().clamp_min(1e-12)  # [C]
    mu = bias.detach().to(torch.float64)  # [C]
    mass = torch.special.ndtr(-mu / sigma)  # P(x < 0), [C]
    density = torch.exp(-((mu / sigma) ** 2) / 2) / math.sqrt(2 * math.pi)
    margin = mu - sigma * density / mass.clamp_min(1e-300)
    return torch.where(mass > OFD_MIN_NEGATIVE_MASS, margin, -3.0 * sigma).to(torch.float32)


def ofd_partial_l2(
    student_feat: Tensor, teacher_feat: Tensor, margin: Tensor | None = None
) -> Tensor:
    """OFD's partial L2 distance (eq. 5 of Heo et al.) between the connected student feature
    s [B, C, H, W] and the teacher's pre-ReLU feature t [B, C, H', W'], with the margin [C]:

        t' = max(t, m),   L = 1/B sum_{b,c,h,w} (s - t')^2 * [s > t' or t' > 0]

    i.e. every element counts except where s <= t' <= 0. The teacher map is average-pooled to the
    student's spatial size first when they differ (mdistiller); the sum over elements, mean over
    the batch, is mdistiller's ``feat_loss`` (``mean(dim=0).sum()``) and the reference's
    ``loss.sum() / batch_size`` (whose further ``/ 1000``, mdistiller's ``FEAT_WEIGHT = 0.001``,
    is the run's feature weight). ``margin`` comes from the teacher's BatchNorm (``ofd_margin``):
    ``OFDTerm`` passes it; there is no default."""
    if margin is None:
        raise ValueError(
            "ofd's margin comes from the teacher's batch-norm statistics (ofd_margin); the ofd "
            "feature module (OFDTerm) passes it: feature_loss(s, t, 'ofd', margin=m)"
        )
    s, t = full_precision(student_feat), full_precision(teacher_feat)
    if s.ndim != 4 or t.ndim != 4 or s.shape[1] != t.shape[1] or margin.numel() != t.shape[1]:
        raise IncompatibleModelsError(
            f"ofd compares a connected student map with the teacher's map channel by channel: "
            f"got student {list(s.shape)}, teacher {list(t.shape)} and {margin.numel()} margins"
        )
    if t.shape[-2:] != s.shape[-2:]:
        t = F.adaptive_avg_pool2d(t, s.shape[-2:])  # [B, C, H, W]
    t = torch.maximum(t, full_precision(margin).view(1, -1, 1, 1))  # t' = max(t, m)
    kept = (s > t) | (t > 0)  # all but s <= t' <= 0
    return ((s - t).pow(2) * kept).sum() / s.shape[0]


def ofd_connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """The reference's ``build_feature_connector``: a 1x1 conv (no bias) to the teacher's channels,
    weights N(0, 2 / (k^2 C_t)), then a BatchNorm with weight 1 and bias 0."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))
    bn = nn.BatchNorm2d(teacher_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


def pre_activation_bn(teacher: nn.Module, path: str) -> nn.BatchNorm2d:
    """The BatchNorm whose statistics describe the teacher's pre-activation at ``path``: the
    module itself when it is one (a WRN's ``block2.0.bn1``, a VGG stage's last BN); for a
    ``<block>.preact`` tap (the residual sum before the block's ReLU) the block's last BatchNorm
    among its own children (``bn2`` of a CIFAR ResNet BasicBlock, ``bn3`` of a ShuffleNet block),
    as the reference's ``get_bn_before_relu`` does for residual blocks: the shortcut's share of
    the sum is ignored. Raises ``IncompatibleModelsError`` with the fix when there is none."""
    modules = dict(teacher.named_modules())
    module = modules.get(path)
    if isinstance(module, nn.BatchNorm2d):
        return module
    if module is not None and path.endswith(".preact"):
        block = modules[path.rsplit(".", 1)[0]]
        norms = [m for m in block.children() if isinstance(m, nn.BatchNorm2d)]
        if norms:
            return norms[-1]
    raise IncompatibleModelsError(
        f"ofd needs a pre-activation teacher layer such as layer3.2.preact, got {path!r} (no "
        "BatchNorm before its ReLU); pick one on the Models page"
    )


class OFDTerm(TermModule):
    """OFD over every layer pair (the run's pairs, shallow to deep): one connector per pair, one
    margin per pair (``margin_<i>``, a buffer) from the BatchNorm before the teacher layer, and

        L = sum_i ofd_partial_l2(connector_i(s_i), t_i, m_i) / 2^(n - 1 - i)

    the deepest pair weighted 1 and each shallower one half the next, as the reference. The
    student layers may be pre- or post-activation; the reference takes the student's pre-ReLU
    features too (``preReLU=True``), so pick ``.preact`` taps on both sides to follow it. Maps
    [B, C, H, W] on both sides; a student map of another size is compared with the teacher's
    pooled to its size (mdistiller). The teacher (``inputs.teacher``) must be given."""

    def __init__(self, inputs: MethodInputs):
        super().__init__()
        pairs = inputs.map_pairs("ofd")
        if inputs.teacher is None or len(inputs.teacher_paths) != len(pairs):
            raise ValueError(
                "ofd reads its margins from the teacher's batch norms: pass MethodInputs.teacher "
                "and one teacher_paths entry per layer pair"
            )
        self.connectors = nn.ModuleList(ofd_connector(s[0], t[0]) for s, t in pairs)
        for i, (path, (_, t_shape)) in enumerate(zip(inputs.teacher_paths, pairs, strict=True)):
            bn = pre_activation_bn(inputs.teacher, path)
            if bn.num_features != t_shape[0]:
                raise IncompatibleModelsError(
                    f"the BatchNorm before the teacher layer {path!r} covers {bn.num_features} of "
                    f"its {t_shape[0]} channels (a concatenation): ofd needs a pre-activation "
                    "layer that is one BatchNorm's output, such as a stage's last .preact of a "
                    "CIFAR ResNet; pick one on the Models page"
                )
            self.register_buffer(f"margin_{i}", ofd_margin(bn.weight, bn.bias))  # [C_t]

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin_{i}") for i in range(len(self.connectors))]

    def forward(
        self,
        student_feats: Sequence[Tensor],
        teacher_feats: Sequence[Tensor],
        indices: Tensor | None = None,
    ) -> Tensor:
        n = len(self.connectors)
        terms = [
            ofd_partial_l2(connector(s), t, margin) / 2 ** (n - 1 - i)  # s: [B, C_t, H, W]
            for i, (connector, s, t, margin) in enumerate(
                zip(self.connectors, student_feats, teacher_feats, self.margins(), strict=True)
            )
        ]
        return torch.stack(terms).sum()
