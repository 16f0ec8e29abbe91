"""The CIFAR zoo of the CRD benchmark: plain ResNets, WRN-40-1 and the CIFAR VGGs with BN.

The definitions are those of Tian, Krishnan and Isola's RepDistiller ("Contrastive Representation
Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller, ``models/resnet.py``, ``wrn.py``,
``vgg.py``), which mdistiller (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022) reuses:

- ``resnet20`` / ``resnet32`` / ``resnet56`` / ``resnet110``: the CIFAR ResNets of He et al.
  ("Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2): depth ``6n + 2``,
  ``n`` BasicBlocks per stage, a 16-channel stem and stage widths 16/32/64 (``num_filters =
  [16, 16, 32, 64]``, the same ``CifarResNet`` as ``resnet8x4``).
- ``wrn_40_1``: Wide ResNet-40-1 of Zagoruyko and Komodakis (BMVC 2016), ``WideResNet(40, 1)``.
- ``vgg8`` / ``vgg13``: VGG (Simonyan and Zisserman, ICLR 2015) with BatchNorm in five conv stages,
  cfg ``"S"`` = [[64], [128], [256], [512], [512]] (one 3x3 conv per stage) and ``"B"`` = two
  per stage; 2x2 max-pools after stages 0-2 (after stage 3 too for 64x64 inputs), global average
  pooling after stage 4 and one Linear(512, K), no fully connected hidden layers.

Parameters for 3x32x32 inputs and 100 classes (the reference definitions give the same):
resnet20 278,324; resnet32 472,756; resnet56 861,620; resnet110 1,736,564; wrn_40_1 569,780;
vgg8 3,965,028; vgg13 9,462,180.

Changes for small inputs, as in ``workbench.models.cifar``: the stem takes any channel count and
the final pooling is adaptive; a VGG max-pool that would take the map below 1x1 is an
``nn.Identity`` (an 8x8 input keeps ``pool0..pool2``; the reference pools ``pool3`` only when
the input is 64 pixels high, here when it is at least 64).

Feature taps (module paths for forward hooks; ``feature_layers`` lists the post-activation ones):

- ResNets: every block ``layer{1,2,3}.{i}`` (post-ReLU); the pre-activation of a block (the
  reference's ``preact=True`` features, taken at each stage's last block) is
  ``layer{s}.{n-1}.preact``, e.g. ``layer3.2.preact`` for resnet20.
- WRN-40-1: every block ``block{1,2,3}.{i}``; the reference's pre-activation features are
  ``block2.0.bn1``, ``block3.0.bn1`` and ``bn1`` (see ``workbench.models.cifar``).
- VGG: each stage ``block0..block4`` ends in its ReLU (post-activation); the stage's last BatchNorm
  is its pre-activation (the reference's ``get_bn_before_relu``): ``block{s}.1`` for vgg8,
  ``block{s}.4`` for vgg13.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.models.cifar import CifarResNet, WideResNet, fan_out_init

__all__ = [
    "VGG_CFGS",
    "CifarVGG",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "vgg8",
    "vgg13",
    "wrn_40_1",
]

InputShape = tuple[int, int, int]

# RepDistiller's vgg.py: the output channels of the 3x3 convs of each of the five stages.
VGG_CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def _resnet(depth: int, in_channels: int, num_classes: int) -> CifarResNet:
    return CifarResNet(depth, [16, 16, 32, 64], in_channels=in_channels, num_classes=num_classes)


def resnet20(*, in_channels: int, num_classes: int) -> CifarResNet:
    return _resnet(20, in_channels, num_classes)


def resnet32(*, in_channels: int, num_classes: int) -> CifarResNet:
    return _resnet(32, in_channels, num_classes)


def resnet56(*, in_channels: int, num_classes: int) -> CifarResNet:
    return _resnet(56, in_channels, num_classes)


def resnet110(*, in_channels: int, num_classes: int) -> CifarResNet:
    return _resnet(110, in_channels, num_classes)


def wrn_40_1(*, in_channels: int, num_classes: int) -> WideResNet:
    return WideResNet(40, 1, in_channels=in_channels, num_classes=num_classes)


def _vgg_stage(widths: list[int], in_channels: int) -> nn.Sequential:
    """Conv(3x3, bias)-BN-ReLU per width. The reference drops the stage's last ReLU and applies
    it in ``forward``; keeping it here makes the stage's output post-activation and its last BN
    (``[-2]``) the pre-activation, both addressable by path."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """Five conv stages ``block0..block4``, max-pools ``pool0..pool3`` between them, global
    average pooling ``pool4`` and a Linear classifier (RepDistiller's CIFAR VGG with BN)."""

    def __init__(self, cfg: list[list[int]], *, input_shape: InputShape, num_classes: int):
        super().__init__()
        c_in = [input_shape[0]] + [stage[-1] for stage in cfg[:-1]]
        self.block0 = _vgg_stage(cfg[0], c_in[0])
        self.block1 = _vgg_stage(cfg[1], c_in[1])
        self.block2 = _vgg_stage(cfg[2], c_in[2])
        self.block3 = _vgg_stage(cfg[3], c_in[3])
        self.block4 = _vgg_stage(cfg[4], c_in[4])
        side = min(input_shape[1:])
        pools: list[nn.Module] = []
        for i in range(4):
            # Pools 0-2 as the reference, pool 3 for 64x64 inputs; none below a 1x1 map.
            keep = side >= 2 and (i < 3 or min(input_shape[1:]) >= 64)
            pools.append(nn.MaxPool2d(2, stride=2) if keep else nn.Identity())
            side = side // 2 if keep else side
        self.pool0, self.pool1, self.pool2, self.pool3 = pools
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        fan_out_init(self, linear_std=0.01)  # the reference's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(self.block0(x))  # (B, 64, H/2, W/2)
        x = self.pool1(self.block1(x))  # (B, 128, H/4, W/4)
        x = self.pool2(self.block2(x))  # (B, 256, H/8, W/8)
        x = self.pool3(self.block3(x))  # (B, 512, H/8, W/8): pool3 only for 64x64 inputs
        x = self.pool4(self.block4(x))  # (B, 512, 1, 1)
        return self.classifier(torch.flatten(x, 1))  # (B, K)


def vgg8(*, input_shape: InputShape, num_classes: int) -> CifarVGG:
    return CifarVGG(VGG_CFGS["S"], input_shape=input_shape, num_classes=num_classes)


def vgg13(*, input_shape: InputShape, num_classes: int) -> CifarVGG:
    return CifarVGG(VGG_CFGS["B"], input_shape=input_shape, num_classes=num_classes)
