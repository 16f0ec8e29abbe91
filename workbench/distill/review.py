"""ReviewKD: Chen, Liu, Zhao and Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021
(reference code: dvlab-research/ReviewKD; mdistiller's ``mdistiller/distillers/ReviewKD.py``,
read for this module).

Each student stage is compared not with its own teacher stage alone: the student's stages are
fused from deep to shallow by attention-based fusion modules (``ABF``), so the fused feature at
stage i also carries the student's deeper stages ("reviewing" them), and each fused feature is
compared with the teacher's feature at stage i by the hierarchical context loss (``hcl``).

``hcl`` is the per-pair math (registered as the feature kind ``reviewkd``); ``ReviewKDTerm`` the
stateful module ``HybridLoss`` builds: the ABFs, trained with the student.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.distill.precision import full_precision
from workbench.distill.stateful import MethodInputs, TermModule
from workbench.errors import IncompatibleModelsError

__all__ = ["ABF", "HCL_LEVELS", "REVIEWKD_MAX_MID_CHANNELS", "ReviewKDTerm", "hcl"]

HCL_LEVELS = (4, 2, 1)  # the reference's pyramid: 4x4, 2x2 and 1x1 average pools
REVIEWKD_MAX_MID_CHANNELS = 512  # mdistiller: mid_channel = min(512, in_channels[-1])


def hcl(fused: Tensor, teacher_feat: Tensor) -> Tensor:
    """The hierarchical context loss of one pair (the reference's ``hcl``): the MSE of the full
    maps plus the MSEs of their adaptive average pools to l x l for l = 4, 2, 1 (a level is left
    out when l >= H), the weights halving from 1:

        L = (mse(f, t) + sum_k 2^-k mse(pool_{l_k}(f), pool_{l_k}(t))) / (1 + sum_k 2^-k)

    (k = 1, 2, ... over the levels kept: H = 8 gives weights 1, 1/2, 1/4, 1/8; H = 4 gives 1,
    1/2, 1/4 for the full map, 2x2 and 1x1). Fused student feature and teacher feature
    [B, C, H, W] of the same shape."""
    f, t = full_precision(fused), full_precision(teacher_feat)
    if f.ndim != 4 or f.shape != t.shape:
        raise IncompatibleModelsError(
            f"reviewkd's hierarchical context loss compares maps [B, C, H, W] of one shape: got "
            f"{list(f.shape)} and {list(t.shape)} (the ABFs map the student to the teacher)"
        )
    loss = F.mse_loss(f, t)
    weight, total = 1.0, 1.0
    for level in HCL_LEVELS:
        if level >= f.shape[2]:
            continue
        weight /= 2.0
        pooled = F.mse_loss(F.adaptive_avg_pool2d(f, level), F.adaptive_avg_pool2d(t, level))
        loss = loss + weight * pooled
        total += weight
    return loss / total


class ABF(nn.Module):
    """Attention-based fusion (the reference's ``ABF``): the student's stage map x [B, C_s, H, W]
    through a 1x1 conv + BN to ``mid`` channels; with ``fuse``, the deeper stages' fused map y
    [B, mid, H'', W''] is resized (nearest) to H x W and the two are mixed by two attention maps
    from a 1x1 conv over their concatenation and a sigmoid,

        a = sigmoid(conv([x, y])) [B, 2, H, W],   x <- x * a[:, 0] + y * a[:, 1];

    then resized (nearest) to the teacher's H' x W' and through a 3x3 conv + BN to the teacher's
    channels. Returns (output [B, C_t, H', W'], fused map [B, mid, H', W'] for the next
    shallower stage). Convs without bias, Kaiming-uniform (a = 1) as the reference."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channels),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid())
            if fuse
            else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        x = self.conv1(x)  # [B, mid, H, W]
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the deeper stages' fused map")
            y = F.interpolate(residual, (h, w), mode="nearest")  # [B, mid, H, W]
            a = self.att_conv(torch.cat([x, y], dim=1))  # [B, 2, H, W]
            x = x * a[:, 0].view(b, 1, h, w) + y * a[:, 1].view(b, 1, h, w)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, tuple(out_size), mode="nearest")  # [B, mid, H', W']
        return self.conv2(x), x  # [B, C_t, H', W'], [B, mid, H', W']


class ReviewKDTerm(TermModule):
    """ReviewKD over every layer pair at once. The pairs run shallow to deep, as the engine gives
    them (``pair_layers``; hand-made pairs are taken in their given order, the last one as the
    deepest): one ABF per pair, the deepest without fusion; the fused outputs are compared with
    the teacher features by ``hcl``, summed over the pairs:

        (o_n, r_n) = ABF_n(s_n),   (o_i, r_i) = ABF_i(s_i, r_{i+1}),   L = sum_i hcl(o_i, t_i)

    ``mid`` channels = min(512, C of the deepest student feature): mdistiller's rule (256 for
    its resnet32x4 -> resnet8x4 config, whose deepest student feature has 256 channels).

    mdistiller weights the term by ``REVIEWKD_WEIGHT = 1`` and warms it up linearly,
    ``min(epoch / 20, 1)`` over ``WARMUP_EPOCHS = 20`` of 240; here the weight is the run's
    feature weight and there is no warm-up. mdistiller's deepest pair is the pooled feature
    (1x1) and its teacher side the pre-ReLU features (``STU_PREACT = False`` for the student);
    here the pairs are the run's. Maps [B, C, H, W] on both sides of every pair."""

    def __init__(self, inputs: MethodInputs):
        super().__init__()
        pairs = inputs.map_pairs("reviewkd")
        mid = min(REVIEWKD_MAX_MID_CHANNELS, pairs[-1][0][0])
        self.abfs = nn.ModuleList(
            ABF(s[0], mid, t[0], fuse=i < len(pairs) - 1) for i, (s, t) in enumerate(pairs)
        )

    def fused(
        self, student_feats: Sequence[Tensor], sizes: Sequence[tuple[int, int]]
    ) -> list[Tensor]:
        """The ABF outputs o_i [B, C_t, H'_i, W'_i], shallow to deep, for teacher sizes ``sizes``."""
        outputs: list[Tensor] = []
        residual = None
        for i in reversed(range(len(self.abfs))):  # deep to shallow
            out, residual = self.abfs[i](student_feats[i], residual, sizes[i])
            outputs.insert(0, out)
        return outputs

    def forward(
        self,
        student_feats: Sequence[Tensor],
        teacher_feats: Sequence[Tensor],
        indices: Tensor | None = None,
    ) -> Tensor:
        if len(student_feats) != len(self.abfs) or len(teacher_feats) != len(self.abfs):
            raise ValueError(
                f"reviewkd was built for {len(self.abfs)} layer pairs, got "
                f"{len(student_feats)} student and {len(teacher_feats)} teacher features"
            )
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in teacher_feats]
        outputs = self.fused(student_feats, sizes)
        return torch.stack([hcl(o, t) for o, t in zip(outputs, teacher_feats, strict=True)]).sum()
