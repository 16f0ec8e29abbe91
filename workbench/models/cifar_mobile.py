"""The CIFAR zoo's mobile students: MobileNetV2 (width 0.5) and ShuffleNet V1 / V2.

The definitions are those of Tian, Krishnan and Isola's RepDistiller ("Contrastive Representation
Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller, ``models/mobilenetv2.py``,
``ShuffleNetv1.py``, ``ShuffleNetv2.py``), which mdistiller (Zhao et al., CVPR 2022) reuses:

- ``mobilenet_v2_cifar``: the reference's ``mobile_half``, MobileNetV2 of Sandler et al.
  ("MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018) with expansion ``T = 6``
  and width multiplier 0.5: a stride-2 3x3 stem of 16 channels, seven stages of inverted
  residual blocks (``(t, c, n, s)`` below, ``c`` halved), a 1x1 conv to 1280, pool, Linear. As in
  the reference (and unlike torchvision), the ``t = 1`` block keeps its expansion 1x1 conv.
- ``shufflenet_v1_cifar``: ShuffleNet of Zhang et al. ("ShuffleNet: An Extremely Efficient
  Convolutional Neural Network for Mobile Devices", CVPR 2018), ``groups = 3``, stage widths
  240/480/960 with 4/8/4 bottlenecks, a 1x1 stem of 24 channels; each stage opens with a stride-2
  block whose shortcut is a 3x3 average pool concatenated to the residual branch.
- ``shufflenet_v2_cifar``: ShuffleNet V2 of Ma et al. ("ShuffleNet V2: Practical Guidelines for
  Efficient CNN Architecture Design", ECCV 2018), ``net_size = 1``: widths 116/232/464, a
  stride-2 down-sampling block and 3/7/3 split-transform-shuffle blocks per stage, a 1x1 conv to
  1024, pool, Linear.

Parameters for 3x32x32 inputs and 100 classes (the reference definitions give the same):
mobilenet_v2_cifar 812,836; shufflenet_v1_cifar 949,258; shufflenet_v2_cifar 1,355,528.

Changes for small inputs: the stem takes any channel count and the final pooling is adaptive
(the reference's ``AvgPool2d(2)`` / ``avg_pool2d(4)`` need 32x32), so 8x8 digits reach 1x1 maps
and still run; the reference's ``ShuffleBlock`` module is the function ``channel_shuffle``.
Weights are initialised as in the reference (MobileNetV2: fan-out normal; ShuffleNets: PyTorch's
defaults).

Feature taps (module paths for forward hooks; ``feature_layers`` lists the block outputs):

- MobileNetV2: every block ``blocks.{s}.{i}`` and ``conv2`` (post-ReLU). A block ends in a linear
  bottleneck (no ReLU), so its output is the reference's feature and there is no separate
  pre-activation tap (the reference ignores ``preact`` for this model).
- ShuffleNet V1: every block ``layer{1,2,3}.{i}`` (post-ReLU); each block's ``preact`` is the
  sum (or concatenation) before its ReLU, the reference's ``preact`` features at each stage's
  last block: ``layer1.3.preact``, ``layer2.7.preact``, ``layer3.3.preact``.
- ShuffleNet V2: every block ``layer{1,2,3}.{i}`` (after the shuffle) and ``relu2`` (after
  ``conv2``); a basic block's ``preact`` is ``cat(x1, bn3(...))`` before the ReLU and unshuffled,
  as in the reference: ``layer1.3.preact``, ``layer2.7.preact``, ``layer3.3.preact``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.cifar import fan_out_init

__all__ = [
    "CifarMobileNetV2",
    "CifarShuffleNetV1",
    "CifarShuffleNetV2",
    "channel_shuffle",
    "mobilenet_v2_cifar",
    "shufflenet_v1_cifar",
    "shufflenet_v2_cifar",
]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, g, C/g, H, W] -> [B, C/g, g, H, W] -> [B, C, H, W]`` (Zhang et al.)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


# ---------------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear); identity shortcut
    when the stride is 1 and the width is kept (Sandler et al., figure 4)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_res_connect = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # (B, C_out, H/s, W/s)
        return x + out if self.use_res_connect else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs: stem ``conv1``, ``blocks`` (seven stages), ``conv2``, pool, Linear."""

    # (c, n, s) per stage: width (before the multiplier), blocks, stride of the first block; the
    # expansion t is 1 in the first stage and T in the others (Sandler et al., table 2).
    SETTINGS = (
        (16, 1, 1),
        (24, 2, 1),
        (32, 3, 2),
        (64, 4, 2),
        (96, 3, 1),
        (160, 3, 2),
        (320, 1, 1),
    )

    def __init__(
        self, *, expand: int = 6, width: float = 0.5, in_channels: int = 3, num_classes: int = 100
    ):
        super().__init__()
        c = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, c, 3, stride=2)
        self.blocks = nn.ModuleList()
        for i, (c_out, n, s) in enumerate(self.SETTINGS):
            c_out, t = int(c_out * width), expand if i > 0 else 1
            stage = []
            for stride in [s] + [1] * (n - 1):
                stage.append(InvertedResidual(c, c_out, stride, t))
                c = c_out
            self.blocks.append(nn.Sequential(*stage))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(c, last, 1, stride=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        fan_out_init(self, linear_std=0.01)  # the reference's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 16, H/2, W/2)
        for stage in self.blocks:
            x = stage(x)  # ... (B, 160, H/16, W/16)
        x = self.conv2(x)  # (B, 1280, H/16, W/16)
        return self.classifier(torch.flatten(self.avgpool(x), 1))  # (B, K)


# -------------------------------------------------------------------------------- ShuffleNet V1
class ShuffleV1Block(nn.Module):
    """1x1 group conv-BN-ReLU, channel shuffle, 3x3 depthwise (stride s)-BN-ReLU, 1x1 group
    conv-BN; added to the input, or (stride 2) concatenated with its 3x3 average pool; ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        mid = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the reference does not group the 24-channel stem
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride == 2:
            self.shortcut = nn.AvgPool2d(3, stride=2, padding=1)
        self.preact = nn.Identity()  # a hook target: the block before its last ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, M, H, W)
        out = channel_shuffle(out, self.conv1.groups)
        out = F.relu(self.bn2(self.conv2(out)))  # (B, M, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, P, H/s, W/s)
        res = self.shortcut(x)
        pre = torch.cat([out, res], 1) if self.stride == 2 else out + res  # (B, P_out, H/s, W/s)
        return F.relu(self.preact(pre))


class CifarShuffleNetV1(nn.Module):
    """1x1 stem, three stages ``layer1..layer3`` of ShuffleV1Blocks (each opening at stride 2),
    pool, ``linear``."""

    def __init__(
        self,
        *,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        in_channels: int = 3,
        num_classes: int = 100,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._stage(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._stage(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._stage(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _stage(self, out_planes: int, blocks: int, groups: int) -> nn.Sequential:
        # The first block concatenates its input, so its residual branch makes the rest.
        layers = [ShuffleV1Block(self.in_planes, out_planes - self.in_planes, 2, groups)]
        layers += [ShuffleV1Block(out_planes, out_planes, 1, groups) for _ in range(blocks - 1)]
        self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 24, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 960, H/8, W/8)
        return self.linear(torch.flatten(self.avgpool(x), 1))  # (B, K)


# -------------------------------------------------------------------------------- ShuffleNet V2
class ShuffleV2Block(nn.Module):
    """Split the channels in halves ``x1, x2``; ``x2`` through 1x1-BN-ReLU, 3x3 depthwise-BN,
    1x1-BN-ReLU; concatenate with ``x1`` and shuffle (Ma et al., figure 3c)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.preact = nn.Identity()  # a hook target: cat(x1, bn3(...)) before the ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)  # (B, C/2, H, W) each
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        pre = self.preact(torch.cat([x1, out], 1))  # (B, C, H, W)
        # x1 is part of a block's output, a ReLU output, so ReLU(cat(x1, out)) is the reference's
        # cat(x1, ReLU(out)), parameter gradients included.
        return channel_shuffle(F.relu(pre), 2)


class ShuffleV2Down(nn.Module):
    """Two stride-2 branches, each to half the output width: 3x3 depthwise-BN, 1x1-BN-ReLU; and
    1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU; concatenate and shuffle (Ma et al., figure 3d)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        c_in, mid = in_channels, out_channels // 2
        self.conv1 = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))  # (B, P/2, H/2, W/2)
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))  # (B, P/2, H/2, W/2)
        return channel_shuffle(torch.cat([left, right], 1), 2)  # (B, P, H/2, W/2)


class CifarShuffleNetV2(nn.Module):
    """1x1 stem, three stages ``layer1..layer3`` (a down block and basic blocks), 1x1 ``conv2``,
    pool, ``linear``."""

    def __init__(
        self,
        *,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
        in_channels: int = 3,
        num_classes: int = 100,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        widths = (24, *out_channels[:3])
        self.layer1 = self._stage(widths[0], widths[1], num_blocks[0])
        self.layer2 = self._stage(widths[1], widths[2], num_blocks[1])
        self.layer3 = self._stage(widths[2], widths[3], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    @staticmethod
    def _stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(
            ShuffleV2Down(c_in, c_out), *[ShuffleV2Block(c_out) for _ in range(blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 24, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 464, H/8, W/8)
        x = self.relu2(self.bn2(self.conv2(x)))  # (B, 1024, H/8, W/8)
        return self.linear(torch.flatten(self.avgpool(x), 1))  # (B, K)


def mobilenet_v2_cifar(*, in_channels: int, num_classes: int) -> CifarMobileNetV2:
    return CifarMobileNetV2(expand=6, width=0.5, in_channels=in_channels, num_classes=num_classes)


def shufflenet_v1_cifar(*, in_channels: int, num_classes: int) -> CifarShuffleNetV1:
    return CifarShuffleNetV1(in_channels=in_channels, num_classes=num_classes)


def shufflenet_v2_cifar(*, in_channels: int, num_classes: int) -> CifarShuffleNetV2:
    return CifarShuffleNetV2(in_channels=in_channels, num_classes=num_classes)
