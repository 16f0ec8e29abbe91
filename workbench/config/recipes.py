"""Training recipes and method presets: named sets of ``RunConfig`` fields.

Recipes set how a model is optimised; methods set the loss. Both are plain dicts of fields that
the app's preset boxes and the CLI's ``--recipe`` / ``--method`` apply before the user's own
flags, so a preset never hides a field: every value it sets is a field of the run's config.

- ``short`` is today's default: AdamW, cosine schedule, 3 epochs, for CPU runs on digits.
- ``crd-cifar100`` is the protocol of the CIFAR-100 tables in the CRD paper (Tian, Krishnan and
  Isola, ICLR 2020) that DKD (Zhao et al., CVPR 2022) and DIST (Huang et al., NeurIPS 2022)
  reuse: SGD, lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr x0.1 after
  epochs 150, 180 and 210, random crops and flips; lr 0.01 for MobileNet and ShuffleNet students (RepDistiller's
  ``train_student.py``: ``if opt.model_s in ['MobileNetV2', 'ShuffleV1', 'ShuffleV2']``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workbench.errors import UnknownNameError

__all__ = [
    "DEFAULT_LR",
    "METHODS",
    "RECIPES",
    "RECIPE_FIELDS",
    "apply_presets",
    "dkd_warmup_epochs",
    "teacher_recipe",
]

PAPER_EPOCHS = 240  # the CRD/DKD protocol's length, the scale of DKD's 20-epoch warm-up
# The learning rate a teacher trains with, by optimizer: one teacher for every student variant
# (students that differ only in their own lr share it).
DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.05}
_SMALL_LR_STUDENTS = ("mobilenet_v2_cifar", "shufflenet_v1_cifar", "shufflenet_v2_cifar")
RECIPE_FIELDS = (
    "optimizer",
    "momentum",
    "weight_decay",
    "schedule",
    "milestones",
    "lr_decay",
    "warmup_epochs",
)

RECIPES: dict[str, dict[str, Any]] = {
    "short": {
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.01,
        "schedule": "cosine",
        "milestones": [],
        "warmup_epochs": 0,
        "epochs": 3,
        "teacher_epochs": 5,
        "batch_size": 64,
    },
    "crd-cifar100": {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "multistep",
        "milestones": [150, 180, 210],
        "lr_decay": 0.1,
        "warmup_epochs": 0,
        "epochs": 240,
        "teacher_epochs": 240,
        "batch_size": 64,
        "augment": True,  # random crop (padding 4 on 32x32) and horizontal flip, as RepDistiller's
    },
}

# Each with its paper's settings (the reference code's defaults for CIFAR-100).
METHODS: dict[str, dict[str, Any]] = {
    "KD (Hinton et al. 2015)": {
        "weights": {"label": 0.1, "response": 0.9},  # RepDistiller: -r 0.1 -a 0.9, T = 4
        "response_kind": "kd",
        "temperature": 4.0,
    },
    "DKD (Zhao et al. 2022)": {
        "weights": {"label": 1.0, "response": 1.0},  # mdistiller DKD: CE 1, alpha 1, beta 8
        "response_kind": "dkd",
        "temperature": 4.0,
        "dkd_alpha": 1.0,
        "dkd_beta": 8.0,
        "dkd_warmup": 20,
    },
    "DIST (Huang et al. 2022)": {
        # CE 1, beta = gamma = 1; tau 4 as KD on CIFAR-100 (the authors' dist_cifar.yaml is not
        # in the sources read: set the temperature if it differs)
        "weights": {"label": 1.0, "response": 1.0},
        "response_kind": "dist",
        "temperature": 4.0,
        "dist_beta": 1.0,
        "dist_gamma": 1.0,
    },
    "CRD (Tian et al. 2020)": {
        "weights": {"label": 1.0, "relation": 0.8},  # RepDistiller: -r 1 -a 0 -b 0.8
        "relation_kind": "crd",
    },
    "ReviewKD (Chen et al. 2021)": {
        "weights": {"label": 1.0, "feature": 1.0},  # mdistiller CIFAR-100: CE 1, REVIEWKD 1
        "feature_kind": "reviewkd",
    },
    # The three newest terms at once: the ablation suite of Distill measures each one's share.
    "DKD + ReviewKD + CRD": {
        "weights": {"label": 1.0, "response": 1.0, "feature": 1.0, "relation": 0.8},
        "response_kind": "dkd",
        "temperature": 4.0,
        "dkd_alpha": 1.0,
        "dkd_beta": 8.0,
        "feature_kind": "reviewkd",
        "relation_kind": "crd",
    },
}


def apply_presets(
    base: Mapping[str, Any], *, recipe: str | None = None, method: str | None = None
) -> dict[str, Any]:
    """``base`` (config fields) with the fields of ``recipe`` and ``method`` set; a MobileNet
    or ShuffleNet student under ``crd-cifar100`` gets the paper's lr 0.01."""
    out = dict(base)
    if recipe is not None:
        if recipe not in RECIPES:
            raise UnknownNameError("recipe", recipe, list(RECIPES))
        out.update(RECIPES[recipe])
        if recipe == "crd-cifar100" and out.get("student") in _SMALL_LR_STUDENTS:
            out["lr"] = 0.01
    if method is not None:
        if method not in METHODS:
            raise UnknownNameError("method preset", method, list(METHODS))
        out.update(METHODS[method])
    return out


def teacher_recipe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe fields a run's teacher trains with: the student's optimizer, momentum, weight
    decay, schedule and warm-up, the optimizer's ``DEFAULT_LR`` (so students that differ only
    in lr share a teacher), and milestones and warm-up scaled from ``epochs`` to
    ``teacher_epochs`` (150/180/210 of 240 stay 150/180/210 of a 240-epoch teacher)."""
    out = {name: config[name] for name in RECIPE_FIELDS}
    out["lr"] = DEFAULT_LR[config["optimizer"]]
    epochs, teacher_epochs = config["epochs"], config["teacher_epochs"]
    if teacher_epochs != epochs:
        scaled = [max(1, round(m * teacher_epochs / epochs)) for m in config["milestones"]]
        out["milestones"] = sorted({m for m in scaled if m < teacher_epochs})
        if config["schedule"] == "multistep" and not out["milestones"]:
            out["schedule"], out["milestones"] = "constant", []  # too short to decay
        out["warmup_epochs"] = min(
            round(config["warmup_epochs"] * teacher_epochs / epochs), teacher_epochs - 1
        )
    return out


def dkd_warmup_epochs(dkd_warmup: int, epochs: int) -> int:
    """DKD's warm-up length for a run of ``epochs``: ``dkd_warmup`` at the paper's 240 epochs,
    scaled down in proportion for a shorter run (20 of 240 -> 2 of 24, none for 3)."""
    return round(dkd_warmup * min(1.0, epochs / PAPER_EPOCHS))
