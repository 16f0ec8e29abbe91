"""Run configuration: one frozen, validated dataclass that goes into ``loop.run``.

A config serializes to a plain dict and to TOML, and has a stable fingerprint (a hash of the
fields that change the result) used as a cache key for teachers and teacher outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.bounds import BOUNDS, Bound, check_bound, show
from workbench.config.choices import (
    FEATURE_KINDS,
    OPTIMIZERS,
    RELATION_KINDS,
    RESPONSE_KINDS,
    SCHEDULES,
    WEIGHTING_SCHEMES,
    list_datasets,
    list_models,
)
from workbench.config.files import read_toml
from workbench.config.loss_terms import (
    COMPONENTS,
    LossWeights,
    as_float,
    parse_weights,
    weights_from_mapping,
)
from workbench.config.recipes import teacher_recipe
from workbench.errors import ConfigError, UnknownNameError, cut, quoted

__all__ = [
    "COMPONENTS",
    "IDENTITY_ADDED_LATER",
    "IDENTITY_EXCLUDED",
    "BOUNDS",
    "PRESETS",
    "Bound",
    "LossWeights",
    "RunConfig",
    "check_run_name",
    "fingerprint_of",
    "parse_weights",
    "read_toml",
    "summary_of",
]

ROLES = ("student", "teacher")
# Fields that do not change what a run computes: left out of its fingerprint, the one
# definition of a run's identity (a teacher is found in the store by its fingerprint).
IDENTITY_EXCLUDED = ("device", "log_every", "evaluate_test")
# Fields added after stores existed, left out of the fingerprint at their default value, so that
# the fingerprints of older configs (and the teachers found by them) stay the same.
IDENTITY_ADDED_LATER = {
    "train_fraction": 1.0,
    # issue 20: the response methods and the training recipe
    "response_kind": "kd",
    "dkd_alpha": 1.0,
    "dkd_beta": 8.0,
    "dkd_warmup": 20,
    "dist_beta": 1.0,
    "dist_gamma": 1.0,
    "optimizer": "adamw",
    "momentum": 0.9,
    "weight_decay": 0.01,
    "schedule": "cosine",
    "milestones": [],
    "lr_decay": 0.1,
    "warmup_epochs": 0,
}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
NAME_MAX = 200
TEXT_MAX = 4096  # a text field (a path, an id, a name from a registry): PATH_MAX on Linux


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run.

    ``role="teacher"`` trains ``teacher`` on the labels alone; ``role="student"`` trains
    ``student`` with the hybrid loss against ``teacher`` (a run whose only non-zero weight is
    ``label`` is a scratch student and never runs the teacher).

    Every field is checked on construction, whatever the source (flags, TOML, JSON, a form):
    text fields take text, whole-number fields whole numbers, numbers real numbers (never a
    bool), switches real booleans (never ``"no"``), each number within ``BOUNDS``. What needs the
    machine or the store (the device exists, the teacher run is there, the batch fits the
    training set) is ``workbench.runs.submit.admit``'s.
    """

    role: str = "student"
    dataset: str = "digits"
    data_path: str = ""
    teacher: str = "resnet18"
    student: str = "small_cnn"
    teacher_run: str = ""
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 4.0
    response_kind: str = "kd"
    dkd_alpha: float = 1.0  # DKD (Zhao et al. 2022): weight of the target-class term
    dkd_beta: float = 8.0  # ... of the non-target-class term
    dkd_warmup: int = 20  # epochs of DKD's linear warm-up at 240 epochs, scaled for shorter runs
    dist_beta: float = 1.0  # DIST (Huang et al. 2022): weight of the inter-class relation
    dist_gamma: float = 1.0  # ... of the intra-class relation
    feature_kind: str = "cosine"
    relation_kind: str = "sp"
    layer_pairs: tuple[tuple[str, str], ...] = ()
    weighting: str = "fixed"
    epochs: int = 3
    teacher_epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD's (AdamW ignores it)
    weight_decay: float = 0.01  # AdamW's default; the papers' SGD recipe uses 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()  # epochs after which multistep multiplies lr by lr_decay
    lr_decay: float = 0.1
    warmup_epochs: int = 0  # linear learning-rate warm-up before the schedule
    seed: int = 0
    device: str = "auto"
    augment: bool = False
    train_fraction: float = 1.0
    teacher_cache: bool = True
    log_every: int = 10
    # False: the run never reads the test split (a search's trials, chosen on validation only);
    # its record then has no test metrics and its probe no per-image test results.
    evaluate_test: bool = True

    def __post_init__(self) -> None:
        # Accept lists/dicts (from TOML, JSON or a form) and store hashable tuples; a value of
        # the wrong shape is left as it is for validate() to name.
        if isinstance(self.weights, Mapping):
            object.__setattr__(self, "weights", weights_from_mapping(self.weights))
        pairs = self.layer_pairs
        if isinstance(pairs, list | tuple) and all(isinstance(p, list | tuple) for p in pairs):
            object.__setattr__(self, "layer_pairs", tuple(tuple(p) for p in pairs))
        if isinstance(self.milestones, list):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        for name in _FLOATS:
            object.__setattr__(self, name, as_float(getattr(self, name)))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise a one-line ``ConfigError`` naming the first bad field and what it may be."""
        for name in _TEXTS:
            _check_text(name, getattr(self, name))
        for name in _SWITCHES:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {show(value)}")
        for name in (*_WHOLES, *_FLOATS):
            check_bound(name, getattr(self, name))
        _check_choice("role", self.role, ROLES)
        _check_choice("dataset", self.dataset, list_datasets())
        if self.dataset == "image_folder" and not self.data_path:
            raise ConfigError("dataset image_folder needs data_path: the folder of class folders")
        _check_choice("teacher model", self.teacher, list_models())
        _check_choice("student model", self.student, list_models())
        if not isinstance(self.weights, LossWeights):
            raise ConfigError(
                f"weights must be a table of label, response, feature, relation, got {show(self.weights)}"
            )
        self.weights.validate()
        if self.role == "teacher" and self.weights.active() != ("label",):
            raise ConfigError("a teacher run trains on the labels alone: set only the label weight")
        _check_choice("response kind", self.response_kind, list(RESPONSE_KINDS))
        _check_choice("feature kind", self.feature_kind, list(FEATURE_KINDS))
        _check_choice("relation kind", self.relation_kind, list(RELATION_KINDS))
        _check_choice("weighting scheme", self.weighting, list(WEIGHTING_SCHEMES))
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {show(self.device)}")
        _check_pairs(self.layer_pairs)
        _check_choice("optimizer", self.optimizer, list(OPTIMIZERS))
        _check_choice("schedule", self.schedule, list(SCHEDULES))
        check_milestones(self.milestones, self.epochs, self.schedule)
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs must be below epochs ({self.epochs}), got {self.warmup_epochs}"
            )

    # ------------------------------------------------------------------ derived views
    @property
    def trained_model(self) -> str:
        """The architecture this run trains."""
        return self.teacher if self.role == "teacher" else self.student

    @property
    def uses_teacher(self) -> bool:
        """True when a loss term needs the teacher's outputs during training."""
        return self.role == "student" and any(
            getattr(self.weights, c) > 0 for c in ("response", "feature", "relation")
        )

    def teacher_config(self) -> RunConfig:
        """The config that trains this run's teacher.

        The teacher recipe is the default one (batch size, seed 0, the optimizer's default
        learning rate) with ``teacher_epochs`` epochs and the student's optimizer and schedule
        (``workbench.config.recipes.teacher_recipe``), so that every student variant and every
        seed of an ablation suite shares one teacher; change ``teacher_epochs`` (or pick a
        teacher run) for another.
        """
        return RunConfig(
            role="teacher",
            dataset=self.dataset,
            data_path=self.data_path,
            teacher=self.teacher,
            student=self.teacher,
            weights=LossWeights(1.0, 0.0, 0.0, 0.0),
            epochs=self.teacher_epochs,
            teacher_epochs=self.teacher_epochs,
            seed=0,
            device=self.device,
            augment=self.augment,
            log_every=self.log_every,
            **teacher_recipe(self.to_dict()),
        )

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """One line for tables: ``resnet18 -> small_cnn on digits: lab 0.3 res 0.3 ...``."""
        return summary_of(self.to_dict())

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layer_pairs"] = [list(p) for p in self.layer_pairs]
        data["milestones"] = list(self.milestones)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run config is a table of fields, got {show(data)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {cut(', '.join(unknown))}; valid fields: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        """The config in the TOML file ``path``; a ``ConfigError`` that names the file otherwise."""
        data = read_toml(path)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None

    def fingerprint(self, *, exclude_seed: bool = False) -> str:
        """A stable hash of every field that changes what the run computes; with
        ``exclude_seed``, the key shared by the seeds of one configuration (a seed group)."""
        return fingerprint_of(self.to_dict(), exclude_seed=exclude_seed)

    @classmethod
    def parse_field(cls, name: str, text: str) -> Any:
        """The value of field ``name`` from command-line text (``"3"`` -> 3 for ``epochs``),
        checked like any other value; a one-line ``ConfigError`` otherwise."""
        if name in _WHOLES or name in _FLOATS:
            try:
                value: Any = int(text) if name in _WHOLES else float(text)
            except ValueError:
                raise ConfigError(
                    f"{name} must be {BOUNDS[name].describe()}, got {quoted(text)}"
                ) from None
            check_bound(name, value)
            return value
        if name in _TEXTS:
            _check_text(name, text)
            return text
        raise ConfigError(f"{name} cannot be given as text")


# Field names by kind; a test checks that every field of RunConfig is in exactly one of these
# (or is weights / layer_pairs, checked on their own).
_TEXTS = (
    "role",
    "dataset",
    "data_path",
    "teacher",
    "student",
    "teacher_run",
    "response_kind",
    "feature_kind",
    "relation_kind",
    "weighting",
    "device",
    "optimizer",
    "schedule",
)
_WHOLES = ("epochs", "teacher_epochs", "batch_size", "seed", "log_every", "dkd_warmup")
_WHOLES += ("warmup_epochs",)
_FLOATS = ("temperature", "lr", "train_fraction", "dkd_alpha", "dkd_beta", "dist_beta")
_FLOATS += ("dist_gamma", "momentum", "weight_decay", "lr_decay")
_SWITCHES = ("augment", "teacher_cache", "evaluate_test")


def fingerprint_of(config: Mapping[str, Any], *, exclude_seed: bool = False) -> str:
    """The fingerprint of a config dict shaped like ``RunConfig.to_dict()`` (a stored record's
    config, not validated again): sha256 of its sorted JSON without ``IDENTITY_EXCLUDED`` (and
    ``seed``, with ``exclude_seed``) nor the fields of ``IDENTITY_ADDED_LATER`` at their
    default; 16 hex digits."""
    excluded = (*IDENTITY_EXCLUDED, "seed") if exclude_seed else IDENTITY_EXCLUDED
    data = {
        k: v
        for k, v in config.items()
        if k not in excluded and not (k in IDENTITY_ADDED_LATER and v == IDENTITY_ADDED_LATER[k])
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summary_of(config: Mapping[str, Any]) -> str:
    """``RunConfig.summary()`` of a config dict, without validating it again (a stored record
    may predate today's bounds): ``resnet18 -> small_cnn on digits: lab 0.3 res 0.3, T=4``."""
    if config.get("role") == "teacher":
        return (
            f"teacher {config.get('teacher')} on {config.get('dataset')}, {config.get('epochs')} ep"
        )
    weights = config.get("weights") or {}
    w = " ".join(
        f"{k[:3]} {v:g}" for k, v in weights.items() if isinstance(v, int | float) and v > 0
    )
    temperature = config.get("temperature", 0)
    t = f"{temperature:g}" if isinstance(temperature, int | float) else str(temperature)
    fraction = config.get("train_fraction", 1.0)
    part = (
        f" ({fraction:.0%} of train)" if isinstance(fraction, int | float) and fraction < 1 else ""
    )
    return (
        f"{config.get('teacher')} -> {config.get('student')} on {config.get('dataset')}{part}: "
        f"{w}, T={t}"
    )


def check_run_name(name: Any) -> str:
    """A run name as the store keeps it: one line of printable text, at most ``NAME_MAX``
    characters, surrounding blanks stripped. A newline or another control character would break
    every listing that prints names one per line, so it is refused (not rewritten, so that the
    name a user sees is the name they gave)."""
    how = f"one line of printable text, at most {NAME_MAX} characters"
    if not isinstance(name, str):
        raise ConfigError(f"name must be {how}, got {show(name)}")
    name = name.strip()
    if len(name) > NAME_MAX:
        raise ConfigError(f"name must be {how}, got {len(name)} characters")
    if any(not ch.isprintable() for ch in name):
        raise ConfigError(f"name must be {how}, got {show(name)}")
    return name


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be text, got {show(value)}")
    if len(value) > TEXT_MAX:
        raise ConfigError(f"{name} must be at most {TEXT_MAX} characters, got {len(value)}")
    if "\x00" in value:
        raise ConfigError(f"{name} must not contain a NUL character, got {show(value)}")


def _check_choice(what: str, value: str, valid: list[str] | tuple[str, ...]) -> None:
    if value not in valid:
        raise UnknownNameError(what, value, list(valid))


def check_milestones(milestones: Any, epochs: int, schedule: str) -> None:
    """Milestones are rising whole epochs, each before the last one (a decay after the last
    epoch never happens); ``multistep`` needs at least one, other schedules none."""
    how = "rising whole epochs, e.g. 150,180,210"
    if not isinstance(milestones, tuple) or not all(
        isinstance(m, int) and not isinstance(m, bool) for m in milestones
    ):
        raise ConfigError(f"milestones must be {how}, got {show(milestones)}")
    if schedule == "multistep" and not milestones:
        raise ConfigError("schedule multistep needs milestones, e.g. 150,180,210")
    if schedule != "multistep" and milestones:
        raise ConfigError(f"milestones apply to schedule multistep only, not {schedule}")
    if list(milestones) != sorted(set(milestones)) or (milestones and milestones[0] < 1):
        raise ConfigError(f"milestones must be {how}, got {show(list(milestones))}")
    if milestones and milestones[-1] >= epochs:
        raise ConfigError(
            f"milestone {milestones[-1]} is not before the last epoch: epochs is {epochs}; "
            "lower the milestone or raise epochs"
        )


def _check_pairs(pairs: Any) -> None:
    how = "a list of [student_layer, teacher_layer] pairs of module paths"
    if not isinstance(pairs, tuple):
        raise ConfigError(f"layer_pairs must be {how}, got {show(pairs)}")
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(p, str) and p.strip() for p in pair):
            raise ConfigError(
                f"each layer pair must be (student_layer, teacher_layer), got {show(pair)}"
            )


# Presets offered by the app and the CLI: (label, response, feature, relation).
PRESETS: dict[str, LossWeights] = {
    "hybrid (course default)": LossWeights(0.3, 0.3, 0.2, 0.2),
    "KD only (Hinton)": LossWeights(0.5, 0.5, 0.0, 0.0),
    "scratch student": LossWeights(1.0, 0.0, 0.0, 0.0),
}
