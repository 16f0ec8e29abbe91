"""CIFAR-style teacher/student pairs from the knowledge-distillation literature.

These are the ResNet and Wide ResNet variants of the CRD benchmark (Tian, Krishnan and Isola,
"Contrastive Representation Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller),
reused by mdistiller (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022):

- ``resnet8x4`` / ``resnet32x4``: ResNet of He et al. (CVPR 2016) for 32x32 inputs, depth
  ``6n + 2`` with ``n`` BasicBlocks per stage, stage widths 64/128/256 after a 32-channel stem
  (``num_filters = [32, 64, 128, 256]``), strides 1/2/2.
- ``wrn_16_2`` / ``wrn_40_2``: Wide ResNet of Zagoruyko and Komodakis (BMVC 2016), depth ``6n + 4``
  with pre-activation blocks, widths 16/32/64 times the widen factor.

Two changes from those repos: the stem takes any channel count (MNIST is grey), and the final
``AvgPool2d(8)`` is an ``AdaptiveAvgPool2d(1)`` so that 8x8 and 28x28 inputs work too. Blocks
return one tensor (no ``preact`` tuple): features are read with forward hooks, not returned.

Pre-activation taps: a ResNet block's residual sum before its last ReLU (the reference's
``preact`` features, ``is_feat=True, preact=True``) is the output of the block's ``preact``
module (an ``nn.Identity``), e.g. ``layer3.1.preact``; the block itself (``layer3.1``) gives the
post-ReLU output. A WRN block has no ReLU after its sum: the reference's ``preact`` features of
stages 1-3 are the BatchNorm that opens the next stage, ``block2.0.bn1``, ``block3.0.bn1`` and the
final ``bn1``; their post-ReLU twins are ``block2.0.relu1``, ``block3.0.relu1`` and ``relu``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "CifarResNet",
    "WideResNet",
    "fan_out_init",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "wrn_40_2",
]


def fan_out_init(model: nn.Module, *, linear_std: float | None = None) -> None:
    """The reference codes' initialisation (RepDistiller, torchvision's VGG): Kaiming normal
    with fan-out for convolutions (N(0, 2 / (k^2 out))), biases 0, BatchNorm at (1, 0); linear
    weights from N(0, ``linear_std``) when given, else PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.preact = nn.Identity()  # a hook target: the sum before the last ReLU
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, P, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return self.relu(self.preact(out + self.downsample(x)))  # (B, P, H/s, W/s)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: stem, three stages of ``n`` BasicBlocks, pool, fc."""

    def __init__(
        self, depth: int, num_filters: list[int], *, in_channels: int = 3, num_classes: int = 100
    ):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._stage(num_filters[0], num_filters[1], n, stride=1)
        self.layer2 = self._stage(num_filters[1], num_filters[2], n, stride=2)
        self.layer3 = self._stage(num_filters[2], num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3], num_classes)
        fan_out_init(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, F0, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, F3, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (B, F3)
        return self.fc(x)  # (B, K)


class WideBlock(nn.Module):
    """Pre-activation block (BN-ReLU-conv twice); the shortcut is a 1x1 conv when shapes change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))  # (B, C, H, W)
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))  # (B, P, H/s, W/s)
        # As in the WRN reference code, a projection shortcut reads the activated input.
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv, three stages of ``(depth - 4) / 6`` WideBlocks, BN-ReLU, pool, fc."""

    def __init__(
        self, depth: int, widen_factor: int, *, in_channels: int = 3, num_classes: int = 100
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = self._stage(widths[0], widths[1], n, stride=1)
        self.block2 = self._stage(widths[1], widths[2], n, stride=2)
        self.block3 = self._stage(widths[2], widths[3], n, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        fan_out_init(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [WideBlock(in_planes, planes, stride)]
        layers += [WideBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.block3(self.block2(self.block1(x)))  # (B, 64k, H/4, W/4)
        x = torch.flatten(self.avgpool(self.relu(self.bn1(x))), 1)  # (B, 64k)
        return self.fc(x)  # (B, K)


def resnet8x4(*, in_channels: int, num_classes: int) -> CifarResNet:
    return CifarResNet(8, [32, 64, 128, 256], in_channels=in_channels, num_classes=num_classes)


def resnet32x4(*, in_channels: int, num_classes: int) -> CifarResNet:
    return CifarResNet(32, [32, 64, 128, 256], in_channels=in_channels, num_classes=num_classes)


def wrn_16_2(*, in_channels: int, num_classes: int) -> WideResNet:
    return WideResNet(16, 2, in_channels=in_channels, num_classes=num_classes)


def wrn_40_2(*, in_channels: int, num_classes: int) -> WideResNet:
    return WideResNet(40, 2, in_channels=in_channels, num_classes=num_classes)
