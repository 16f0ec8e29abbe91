"""What a run can choose, by name: datasets, models, feature and relation losses, weighting
schemes. Importable without torch.

The app's first page shows these choices and ``RunConfig`` validates against them; neither needs
a tensor. When they were read from the modules that build things, every page imported torch and
torchvision first (about 3 s of a cold page's 4 s on a 2-core CPU). The datasets live here
whole (``workbench.data.datasets`` re-exports them); the models' names, families and descriptions live
here and ``workbench.models.registry`` adds a builder to each (it refuses a model missing on either side);
the loss and weighting names are checked against ``losses`` and ``weighting`` by
``tests/test_catalog.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATASETS",
    "FEATURE_KINDS",
    "FIELD_LABELS",
    "MODEL_INFO",
    "OPTIMIZERS",
    "RELATION_KINDS",
    "RESPONSE_KINDS",
    "SCHEDULES",
    "WEIGHTING_SCHEMES",
    "DatasetSpec",
    "ModelInfo",
    "list_datasets",
    "list_models",
]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    bundled: bool = False  # True when it needs neither files on disk nor a download


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture as the app lists it; ``workbench.models.registry.MODELS`` builds it."""

    name: str
    family: str  # "torchvision" | "cifar" | "small"
    description: str


def _by_name(*entries: DatasetSpec | ModelInfo) -> dict:
    out: dict = {}
    for entry in entries:
        if entry.name in out:
            raise ValueError(f"{entry.name!r} is registered twice")
        out[entry.name] = entry
    return out


DATASETS: dict[str, DatasetSpec] = _by_name(
    DatasetSpec("digits", "8x8 grey digits, 1,797 images, 10 classes (in scikit-learn)", True),
    DatasetSpec("mnist", "28x28 grey digits, 60k train / 10k test, 10 classes"),
    DatasetSpec("fashion_mnist", "28x28 grey clothing, 60k train / 10k test, 10 classes"),
    DatasetSpec("cifar10", "32x32 colour photos, 50k train / 10k test, 10 classes"),
    DatasetSpec("cifar100", "32x32 colour photos, 50k train / 10k test, 100 classes"),
    DatasetSpec("image_folder", "your own path/class_name/image.png folders, 32x32 RGB"),
)

# In display order: teachers first, small students last.
MODEL_INFO: dict[str, ModelInfo] = _by_name(
    ModelInfo("resnet18", "torchvision", "ResNet-18, 3x3 stem, no max-pool (11M)"),
    ModelInfo("resnet34", "torchvision", "ResNet-34, 3x3 stem, no max-pool (21M)"),
    ModelInfo("resnet50", "torchvision", "ResNet-50 (bottleneck), 3x3 stem (24M)"),
    ModelInfo("mobilenet_v2", "torchvision", "MobileNetV2, stride-1 stem (2.2M)"),
    ModelInfo("mobilenet_v3_small", "torchvision", "MobileNetV3-Small, stride-1 stem (1.5M)"),
    ModelInfo(
        "shufflenet_v2_x0_5", "torchvision", "ShuffleNetV2 0.5x, stride-1 stem, no max-pool (0.35M)"
    ),
    ModelInfo("efficientnet_b0", "torchvision", "EfficientNet-B0, stride-1 stem (4M)"),
    ModelInfo("vgg11_bn", "torchvision", "VGG-11 with BN, pools fit to the input, 1 Linear (9M)"),
    ModelInfo("resnet8x4", "cifar", "CIFAR ResNet-8x4, CRD student (1.2M)"),
    ModelInfo("resnet32x4", "cifar", "CIFAR ResNet-32x4, CRD teacher (7.4M)"),
    ModelInfo("wrn_16_2", "cifar", "Wide ResNet-16-2, CRD student (0.7M)"),
    ModelInfo("wrn_40_2", "cifar", "Wide ResNet-40-2, CRD teacher (2.2M)"),
    ModelInfo("resnet20", "cifar", "CIFAR ResNet-20, He et al. 2016, CRD student (0.28M)"),
    ModelInfo("resnet32", "cifar", "CIFAR ResNet-32, He et al. 2016, CRD student (0.47M)"),
    ModelInfo("resnet56", "cifar", "CIFAR ResNet-56, He et al. 2016, CRD teacher (0.86M)"),
    ModelInfo("resnet110", "cifar", "CIFAR ResNet-110, He et al. 2016, CRD teacher (1.7M)"),
    ModelInfo("wrn_40_1", "cifar", "Wide ResNet-40-1, Zagoruyko 2016, CRD student (0.57M)"),
    ModelInfo("vgg8", "cifar", "CIFAR VGG-8 with BN, CRD student (4.0M)"),
    ModelInfo("vgg13", "cifar", "CIFAR VGG-13 with BN, CRD teacher (9.5M)"),
    ModelInfo("mobilenet_v2_cifar", "cifar", "MobileNetV2 x0.5, Sandler 2018, CRD student (0.81M)"),
    ModelInfo("shufflenet_v1_cifar", "cifar", "ShuffleNetV1 g=3, Zhang 2018, CRD student (0.95M)"),
    ModelInfo("shufflenet_v2_cifar", "cifar", "ShuffleNetV2 1x, Ma 2018, CRD student (1.4M)"),
    ModelInfo("small_cnn", "small", "3 conv-BN-ReLU blocks (16/32/64) + Linear (~24k)"),
    ModelInfo("mlp", "small", "Flatten, 2 hidden layers (256, 128), Linear"),
)

# The keys of response.RESPONSE_LOSSES, feature.FEATURE_LOSSES, relation.RELATION_LOSSES and
# weighting.WEIGHTINGS, in order.
RESPONSE_KINDS = ("kd", "dkd", "dist")
FEATURE_KINDS = ("cosine", "mse", "at", "fitnet", "at_paper", "nst", "vid", "reviewkd", "ofd")
RELATION_KINDS = ("sp", "rkd", "sp_paper", "rkd_paper", "pkt", "cc", "crd")
# The training recipe: optimizers and learning-rate schedules (workbench.training.setup).
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "multistep", "constant")
WEIGHTING_SCHEMES = ("fixed", "uncertainty", "normalized", "validation")


def list_datasets() -> list[str]:
    return list(DATASETS)


def list_models() -> list[str]:
    """Registered model names, in registry order (teachers first, small students last)."""
    return list(MODEL_INFO)


# The form's word for each RunConfig field (Distill's labels), for messages that name a field:
# "Learning rate (lr) must be ...", in the app and on the command line alike.
FIELD_LABELS = {
    "dataset": "Dataset",
    "data_path": "Image folder",
    "teacher": "Teacher architecture",
    "student": "Student architecture",
    "teacher_epochs": "Teacher epochs",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "temperature": "Temperature T",
    "response_kind": "Response kind",
    "dkd_alpha": "DKD alpha",
    "dkd_beta": "DKD beta",
    "dkd_warmup": "DKD warm-up epochs",
    "dist_beta": "DIST beta",
    "dist_gamma": "DIST gamma",
    "optimizer": "Optimizer",
    "momentum": "Momentum",
    "weight_decay": "Weight decay",
    "schedule": "LR schedule",
    "milestones": "Milestones",
    "lr_decay": "LR decay",
    "warmup_epochs": "Warm-up epochs",
    "feature_kind": "Feature kind",
    "relation_kind": "Relation kind",
    "weighting": "Weighting scheme",
    "seed": "Seed",
    "device": "Device",
    "name": "Run name",
    **{
        f"weights.{c}": f"{c.capitalize()} weight"
        for c in ("label", "response", "feature", "relation")
    },
}
