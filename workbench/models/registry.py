"""The model registry: build a teacher or student by name, and find its candidate feature layers.

Every model takes ``input_shape = (C, H, W)`` and ``num_classes`` and is randomly initialised
(never pretrained: the workbench runs offline). Seeding is the caller's job: the same
``torch.manual_seed`` before ``build_model`` gives the same weights.

Families:

- ``torchvision``: architectures from ``torchvision.models`` with the stem adapted to small
  inputs (8x8 digits, 28x28 MNIST, 32x32 CIFAR) and any channel count, the usual CIFAR
  adaptation (He et al., CVPR 2016, section 4.2): ResNets get a 3x3 stride-1 first conv and no
  max-pool; MobileNets, ShuffleNet and EfficientNet a stride-1 first conv; VGG drops the
  max-pools that would shrink the map below 1x1 and ends in global pooling and one Linear, as the
  CIFAR VGG of the CRD repo (Tian et al., ICLR 2020).
- ``cifar``: the CIFAR zoo of the KD literature (the CRD benchmark's definitions): the ResNet/WRN
  pairs in ``workbench.models.cifar``, the plain ResNets, WRN-40-1 and VGGs in
  ``workbench.models.cifar_zoo``, MobileNetV2 and the ShuffleNets in ``workbench.models.cifar_mobile``.
- ``small``: ``small_cnn`` and ``mlp``, quick students for CPU runs.

``feature_layers`` runs one dry forward pass with hooks and returns the block-level candidates for
feature distillation, by a rule per family (see ``_RULES``) with a generic fallback; with
``preact=True`` also the pre-activation taps of the CIFAR families (``_PREACT_RULES``: the
tensor before a block's last ReLU, which OFD distils), flagged ``LayerInfo.preact``: they may be
paired by hand but are never suggested (``workbench.distill.taps.pair_layers`` skips them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tvm

from workbench.config.choices import MODEL_INFO
from workbench.errors import ConfigError, UnknownNameError
from workbench.models import cifar as cifar_nets
from workbench.models import cifar_mobile, cifar_zoo

__all__ = [
    "MLP",
    "MODELS",
    "LayerInfo",
    "ModelSpec",
    "SmallCNN",
    "build_model",
    "candidate_paths",
    "count_params",
    "feature_layers",
    "list_models",
    "preactivation_paths",
]

InputShape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: ``builder(input_shape=(C, H, W), num_classes=K)``."""

    name: str
    builder: Callable[..., nn.Module]
    family: str  # "torchvision" | "cifar" | "small"
    description: str


@dataclass(frozen=True)
class LayerInfo:
    """A candidate layer: module path, output shape without the batch dim, its parameter count;
    ``preact`` marks a pre-activation tap (the tensor before a ReLU, see ``preactivation_paths``)."""

    path: str
    shape: tuple[int, ...]
    params: int
    preact: bool = False


# ---------------------------------------------------------------------------------- small nets
class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (16, 32, 64 channels; the last two stride 2), pool, Linear."""

    def __init__(
        self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64)
    ):
        super().__init__()
        self.block1 = _conv_bn_relu(in_channels, widths[0], stride=1)
        self.block2 = _conv_bn_relu(widths[0], widths[1], stride=2)
        self.block3 = _conv_bn_relu(widths[1], widths[2], stride=2)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[2], num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)  # (B, 16, H, W)
        x = self.block2(x)  # (B, 32, H/2, W/2)
        x = self.block3(x)  # (B, 64, H/4, W/4)
        return self.head(x)  # (B, K)


class MLP(nn.Module):
    """Flatten, two hidden Linear-ReLU layers (256, 128), a Linear classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, int] = (256, 128)):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Sequential(nn.Linear(in_features, hidden[0]), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Linear(hidden[0], hidden[1]), nn.ReLU())
        self.fc = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # (B, C*H*W)
        x = self.layer2(self.layer1(x))  # (B, 128)
        return self.fc(x)  # (B, K)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


# ------------------------------------------------------------------ torchvision adaptations
def _stem_conv(old: nn.Conv2d, in_channels: int, *, kernel: int | None = None) -> nn.Conv2d:
    """A stride-1 replacement for a stem conv (Kaiming-normal, fan-out, as torchvision ResNets)."""
    k = kernel or old.kernel_size[0]
    conv = nn.Conv2d(
        in_channels, old.out_channels, k, stride=1, padding=k // 2, bias=old.bias is not None
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _resnet(arch: Callable[..., tvm.ResNet]) -> Callable[..., nn.Module]:
    def build(*, input_shape: InputShape, num_classes: int) -> nn.Module:
        model = arch(weights=None, num_classes=num_classes)
        model.conv1 = _stem_conv(model.conv1, input_shape[0], kernel=3)
        model.maxpool = nn.Identity()
        return model

    return build


def _features_stem(arch: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """MobileNet v2/v3 and EfficientNet: ``features[0][0]`` is the stride-2 stem conv."""

    def build(*, input_shape: InputShape, num_classes: int) -> nn.Module:
        model = arch(weights=None, num_classes=num_classes)
        model.features[0][0] = _stem_conv(model.features[0][0], input_shape[0])
        return model

    return build


def _shufflenet(*, input_shape: InputShape, num_classes: int) -> nn.Module:
    model = tvm.shufflenet_v2_x0_5(weights=None, num_classes=num_classes)
    model.conv1[0] = _stem_conv(model.conv1[0], input_shape[0])
    model.maxpool = nn.Identity()
    return model


class SmallVGG(tvm.VGG):
    """torchvision's VGG (its ``features`` layout and ``forward``) sized for small inputs.

    ``VGG.__init__`` is skipped on purpose: it allocates the 25088x4096 ImageNet classifier
    (100M parameters, 2 s to initialise) that would be thrown away.
    """

    def __init__(self, cfg: list, input_shape: InputShape, num_classes: int):
        nn.Module.__init__(self)
        self.features = tvm.vgg.make_layers(cfg, batch_norm=True)
        self.features[0] = nn.Conv2d(input_shape[0], cfg[0], 3, padding=1)
        # Drop (replace by Identity, so module paths match torchvision's) every max-pool that
        # would take the map below 1x1: an 8x8 input keeps three of the five.
        size = min(input_shape[1:])
        for i, module in enumerate(self.features):
            if isinstance(module, nn.MaxPool2d):
                if size >= 2:
                    size //= 2
                else:
                    self.features[i] = nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[-2], num_classes)
        cifar_nets.fan_out_init(self, linear_std=0.01)  # torchvision's VGG initialisation


def _vgg11_bn(*, input_shape: InputShape, num_classes: int) -> nn.Module:
    return SmallVGG(tvm.vgg.cfgs["A"], input_shape, num_classes)


def _cifar(arch: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(*, input_shape: InputShape, num_classes: int) -> nn.Module:
        return arch(in_channels=input_shape[0], num_classes=num_classes)

    return build


def _small_cnn(*, input_shape: InputShape, num_classes: int) -> nn.Module:
    return SmallCNN(input_shape[0], num_classes)


def _mlp(*, input_shape: InputShape, num_classes: int) -> nn.Module:
    c, h, w = input_shape
    return MLP(c * h * w, num_classes)


# --------------------------------------------------------------------------------- registry
def _registry(**builders: Callable[..., nn.Module]) -> dict[str, ModelSpec]:
    """The catalog's models (names, families and descriptions, which the app lists without
    importing torch: ``workbench.config.choices``) with their builders, in the catalog's order; a model
    missing on either side is refused here, at import."""
    if list(builders) != list(MODEL_INFO):
        raise ValueError(
            f"the model builders {list(builders)} are not the catalog's {list(MODEL_INFO)}"
        )
    return {
        name: ModelSpec(name, builders[name], info.family, info.description)
        for name, info in MODEL_INFO.items()
    }


MODELS: dict[str, ModelSpec] = _registry(
    resnet18=_resnet(tvm.resnet18),
    resnet34=_resnet(tvm.resnet34),
    resnet50=_resnet(tvm.resnet50),
    mobilenet_v2=_features_stem(tvm.mobilenet_v2),
    mobilenet_v3_small=_features_stem(tvm.mobilenet_v3_small),
    shufflenet_v2_x0_5=_shufflenet,
    efficientnet_b0=_features_stem(tvm.efficientnet_b0),
    vgg11_bn=_vgg11_bn,
    resnet8x4=_cifar(cifar_nets.resnet8x4),
    resnet32x4=_cifar(cifar_nets.resnet32x4),
    wrn_16_2=_cifar(cifar_nets.wrn_16_2),
    wrn_40_2=_cifar(cifar_nets.wrn_40_2),
    resnet20=_cifar(cifar_zoo.resnet20),
    resnet32=_cifar(cifar_zoo.resnet32),
    resnet56=_cifar(cifar_zoo.resnet56),
    resnet110=_cifar(cifar_zoo.resnet110),
    wrn_40_1=_cifar(cifar_zoo.wrn_40_1),
    vgg8=cifar_zoo.vgg8,
    vgg13=cifar_zoo.vgg13,
    mobilenet_v2_cifar=_cifar(cifar_mobile.mobilenet_v2_cifar),
    shufflenet_v1_cifar=_cifar(cifar_mobile.shufflenet_v1_cifar),
    shufflenet_v2_cifar=_cifar(cifar_mobile.shufflenet_v2_cifar),
    small_cnn=_small_cnn,
    mlp=_mlp,
)


def list_models() -> list[str]:
    """Registered model names, in registry order (teachers first, small students last)."""
    return list(MODELS)


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A randomly initialised ``name`` for inputs ``[B, *input_shape]`` and ``num_classes`` logits."""
    if name not in MODELS:
        raise UnknownNameError("model", name, list_models())
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ConfigError(
            f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    return MODELS[name].builder(input_shape=shape, num_classes=num_classes)


def count_params(model: nn.Module) -> int:
    """All parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------ candidate layers
def _children(model: nn.Module, *containers: str) -> list[str]:
    """The blocks of the given stage containers: ``layer1.0, layer1.1, ...``."""
    return [f"{c}.{name}" for c in containers for name, _ in getattr(model, c).named_children()]


def _mobilenet_cifar_blocks(model: nn.Module) -> list[str]:
    """Every inverted residual block of the seven stages, ``blocks.0.0 ... blocks.6.0``, then
    ``conv2``."""
    stages = model.blocks.named_children()
    return [f"blocks.{s}.{i}" for s, stage in stages for i, _ in stage.named_children()] + ["conv2"]


def _features_after_stem(model: nn.Module) -> list[str]:
    return [f"features.{name}" for name, _ in list(model.features.named_children())[1:]]


def _vgg_stage_ends(model: nn.Module) -> list[str]:
    """The ReLU that ends each conv stage: the one before each (kept or dropped) max-pool."""
    layers = list(model.features.named_children())
    relus = [i for i, (_, m) in enumerate(layers) if isinstance(m, nn.ReLU)]
    return [
        f"features.{layers[i][0]}"
        for i in relus
        if i == relus[-1] or isinstance(layers[i + 1][1], (nn.MaxPool2d, nn.Identity))
    ]


# One rule per family; the first isinstance match wins. A block is a residual block, an inverted
# residual block, an EfficientNet stage, a VGG stage's last ReLU, a small_cnn block, an MLP layer.
_RULES: tuple[tuple[type, Callable[[nn.Module], list[str]]], ...] = (
    (tvm.ResNet, lambda m: _children(m, "layer1", "layer2", "layer3", "layer4")),
    (cifar_nets.CifarResNet, lambda m: _children(m, "layer1", "layer2", "layer3")),
    (cifar_nets.WideResNet, lambda m: _children(m, "block1", "block2", "block3")),
    (cifar_zoo.CifarVGG, lambda m: [f"block{s}" for s in range(5)]),
    (cifar_mobile.CifarMobileNetV2, _mobilenet_cifar_blocks),
    (cifar_mobile.CifarShuffleNetV1, lambda m: _children(m, "layer1", "layer2", "layer3")),
    (
        cifar_mobile.CifarShuffleNetV2,
        lambda m: [*_children(m, "layer1", "layer2", "layer3"), "relu2"],
    ),
    (tvm.MobileNetV2, _features_after_stem),
    (tvm.MobileNetV3, _features_after_stem),
    (tvm.EfficientNet, _features_after_stem),
    (tvm.ShuffleNetV2, lambda m: [*_children(m, "stage2", "stage3", "stage4"), "conv5"]),
    (tvm.VGG, _vgg_stage_ends),
    (SmallCNN, lambda m: ["block1", "block2", "block3"]),
    (MLP, lambda m: ["layer1", "layer2"]),
)


def _preact_identities(model: nn.Module) -> list[str]:
    """Every ``<block>.preact`` hook target (an ``nn.Identity`` on the sum before a block's last
    ReLU: the CIFAR ResNets' and ShuffleNets' blocks)."""
    return [p for p, m in model.named_modules() if p.endswith(".preact")]


def _wrn_preact(model: nn.Module) -> list[str]:
    """The BatchNorm that opens each block after the first, and the final ``bn1``: each is the
    pre-activation of the block output before it (a WRN block ends in its residual sum)."""
    opening = [f"{p}.bn1" for p in _children(model, "block1", "block2", "block3")]
    return [*opening[1:], "bn1"]


def _vgg_preact(model: nn.Module) -> list[str]:
    """The last BatchNorm of each stage ``block0..block4`` (before the stage's closing ReLU)."""
    paths = []
    for s in range(5):
        stage = getattr(model, f"block{s}")
        last = max(i for i, m in enumerate(stage) if isinstance(m, nn.BatchNorm2d))
        paths.append(f"block{s}.{last}")
    return paths


# Pre-activation taps per family (the reference code's ``preact=True`` / ``preReLU=True``
# features, at every block); families not listed have none (torchvision blocks end in a ReLU
# with no hook target before it; MobileNetV2 blocks end linear, their outputs are the features).
_PREACT_RULES: tuple[tuple[type, Callable[[nn.Module], list[str]]], ...] = (
    (cifar_nets.CifarResNet, _preact_identities),
    (cifar_nets.WideResNet, _wrn_preact),
    (cifar_zoo.CifarVGG, _vgg_preact),
    (cifar_mobile.CifarShuffleNetV1, _preact_identities),
    (cifar_mobile.CifarShuffleNetV2, _preact_identities),
)


def preactivation_paths(model: nn.Module) -> list[str]:
    """Module paths whose output is a pre-activation (before a ReLU): ``layer3.2.preact`` of a
    CIFAR ResNet or ShuffleNet block, ``block2.0.bn1`` / ``bn1`` of a WRN, a VGG stage's last
    BatchNorm (``block2.1`` of vgg8); none for other families."""
    for cls, rule in _PREACT_RULES:
        if isinstance(model, cls):
            return rule(model)
    return []


def candidate_paths(model: nn.Module) -> list[str]:
    """Module paths that may be feature candidates, from the structure alone (no forward pass).

    For a family in ``_RULES`` these are its blocks; for any other model, the top-level children
    (a top-level ``nn.Sequential``, or the model itself when it is one, expanded one level).
    ``feature_layers`` keeps those whose output is a 2-D or 4-D tensor.
    """
    for cls, rule in _RULES:
        if isinstance(model, cls):
            return rule(model)
    expand = not isinstance(model, nn.Sequential)  # a Sequential model is already expanded
    paths = []
    for name, child in model.named_children():
        if expand and isinstance(child, nn.Sequential) and len(child) > 1:
            paths += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            paths.append(name)
    return paths


def feature_layers(
    model: nn.Module, input_shape: tuple[int, int, int], *, preact: bool = False
) -> list[LayerInfo]:
    """Candidate layers for feature distillation, in forward order, from one dry forward pass;
    with ``preact=True`` the pre-activation taps too (``preactivation_paths``, flagged
    ``LayerInfo.preact``), in forward order among them (``layer1.0.preact`` before ``layer1.0``).

    The pass runs on a batch of 2 zeros in eval mode under ``torch.no_grad`` and restores every
    module's train/eval flag afterwards. A candidate is kept when its output is a tensor of ndim
    2 (``[B, D]``) or 4 (``[B, C, H, W]``). Rules per family (``_RULES``):

    - torchvision ResNet: every block of ``layer1..layer4`` (resnet18: 8, resnet50: 16).
    - CIFAR ResNet: every block of ``layer1..layer3``; WRN: every block of ``block1..block3``.
    - CIFAR VGG: the five stages ``block0..block4`` (each ends in its ReLU).
    - CIFAR MobileNetV2: every block ``blocks.s.i`` of the seven stages, and ``conv2``.
    - CIFAR ShuffleNet V1: every block of ``layer1..layer3``; V2: the same, and ``relu2``.
    - MobileNetV2/V3, EfficientNet: every child of ``features`` after the stem (inverted residual
      blocks / EfficientNet stages, and the final 1x1 conv).
    - ShuffleNetV2: every block of ``stage2..stage4``, and ``conv5``.
    - VGG: the ReLU that ends each conv stage (before each max-pool, kept or dropped).
    - small_cnn: ``block1..block3``; mlp: ``layer1, layer2``.
    - Any other model: the top-level children (see ``candidate_paths``), keeping the last module
      of each run of equal output shapes (a stage's end, after its activation) and leaving out
      the module whose output is the model's output (the classifier).
    """
    known = any(isinstance(model, cls) for cls, _ in _RULES)
    modules = dict(model.named_modules())
    pre = [p for p in preactivation_paths(model) if p in modules] if preact else []
    paths = [p for p in candidate_paths(model) if p in modules] + pre
    outputs: dict[str, torch.Tensor] = {}

    def hook(path: str):
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            if path not in outputs and isinstance(output, torch.Tensor) and output.ndim in (2, 4):
                outputs[path] = output  # dict order = order of first call = forward order

        return record

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    handles = [modules[p].register_forward_hook(hook(p)) for p in paths]
    try:
        model.eval()
        with torch.no_grad():
            logits = model(torch.zeros(2, *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training

    found = list(outputs.items())
    if not known:
        found = [(p, out) for p, out in found if out is not logits]
        found = [
            (p, out)
            for i, (p, out) in enumerate(found)
            if i == len(found) - 1 or found[i + 1][1].shape != out.shape
        ]
    return [
        LayerInfo(p, tuple(out.shape[1:]), count_params(modules[p]), preact=p in pre)
        for p, out in found
    ]
