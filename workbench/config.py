"""Run configuration: one frozen, validated dataclass that goes into ``engine.run``.

A config serializes to a plain dict and to TOML, and has a stable fingerprint (a hash of the
fields that change the result) used as a cache key for teachers and teacher outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, UnknownNameError

__all__ = ["COMPONENTS", "LossWeights", "RunConfig", "PRESETS", "parse_weights"]

COMPONENTS = ("label", "response", "feature", "relation")
ROLES = ("student", "teacher")
# Fields that do not change what a run computes, left out of the fingerprint.
_NOT_FINGERPRINTED = ("device", "log_every")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms of the hybrid loss (total = sum of weight * term)."""

    label: float = 0.3
    response: float = 0.3
    feature: float = 0.2
    relation: float = 0.2

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in COMPONENTS}

    def active(self) -> tuple[str, ...]:
        """The components with a non-zero weight, in canonical order."""
        return tuple(name for name in COMPONENTS if getattr(self, name) > 0)

    def without(self, component: str) -> LossWeights:
        """The same weights with one component switched off (an ablation)."""
        return dataclasses.replace(self, **{component: 0.0})

    def validate(self) -> None:
        for name in COMPONENTS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"weight {name} must be a finite number, got {value!r}")
            if value < 0:
                raise ConfigError(f"weight {name} must be >= 0, got {value}")
        if not self.active():
            raise ConfigError(
                "all loss weights are zero: give at least one of label, response, feature, "
                "relation a weight > 0"
            )


def parse_weights(text: str) -> LossWeights:
    """Parse ``label=0.3,response=0.3,feature=0.2,relation=0.2``; missing names are 0."""
    values: dict[str, float] = dict.fromkeys(COMPONENTS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"weights must look like label=0.3,response=0.7; got {part!r}")
        if name not in COMPONENTS:
            raise UnknownNameError("loss component", name, COMPONENTS)
        try:
            values[name] = float(raw)
        except ValueError:
            raise ConfigError(f"weight {name} must be a number, got {raw.strip()!r}") from None
    weights = LossWeights(**values)
    weights.validate()
    return weights


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run.

    ``role="teacher"`` trains ``teacher`` on the labels alone; ``role="student"`` trains
    ``student`` with the hybrid loss against ``teacher`` (a run whose only non-zero weight is
    ``label`` is a scratch student and never runs the teacher).
    """

    role: str = "student"
    dataset: str = "digits"
    data_path: str = ""
    teacher: str = "resnet18"
    student: str = "small_cnn"
    teacher_run: str = ""
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 4.0
    feature_kind: str = "cosine"
    relation_kind: str = "sp"
    layer_pairs: tuple[tuple[str, str], ...] = ()
    weighting: str = "fixed"
    epochs: int = 3
    teacher_epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    device: str = "auto"
    augment: bool = False
    train_fraction: float = 1.0
    teacher_cache: bool = True
    log_every: int = 10

    def __post_init__(self) -> None:
        # Accept lists/dicts (from TOML, JSON or a form) and store hashable tuples.
        if isinstance(self.weights, dict):
            object.__setattr__(self, "weights", LossWeights(**self.weights))
        pairs = tuple(tuple(p) for p in self.layer_pairs)
        object.__setattr__(self, "layer_pairs", pairs)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        from workbench.data import list_datasets
        from workbench.losses import FEATURE_LOSSES, RELATION_LOSSES
        from workbench.models import list_models
        from workbench.weighting import WEIGHTINGS

        _check_choice("role", self.role, ROLES)
        _check_choice("dataset", self.dataset, list_datasets())
        if self.dataset == "image_folder" and not self.data_path:
            raise ConfigError("dataset image_folder needs data_path: the folder of class folders")
        _check_choice("teacher model", self.teacher, list_models())
        _check_choice("student model", self.student, list_models())
        if not isinstance(self.weights, LossWeights):
            raise ConfigError(f"weights must be LossWeights, got {type(self.weights).__name__}")
        self.weights.validate()
        if self.role == "teacher" and self.weights.active() != ("label",):
            raise ConfigError("a teacher run trains on the labels alone: set only the label weight")
        _check_number("temperature", self.temperature, low=0.0, inclusive=False)
        _check_choice("feature kind", self.feature_kind, list(FEATURE_LOSSES))
        _check_choice("relation kind", self.relation_kind, list(RELATION_LOSSES))
        _check_choice("weighting scheme", self.weighting, list(WEIGHTINGS))
        for name in ("epochs", "teacher_epochs", "batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        _check_number("lr", self.lr, low=0.0, inclusive=False)
        _check_number("train_fraction", self.train_fraction, low=0.0, inclusive=False)
        if self.train_fraction > 1:
            raise ConfigError(
                f"train_fraction must be in (0, 1] (the share of the training split this run "
                f"trains on), got {self.train_fraction:g}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        for pair in self.layer_pairs:
            if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
                raise ConfigError(
                    f"each layer pair must be (student_layer, teacher_layer), got {pair!r}"
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

        The teacher recipe is the default one (batch size, learning rate, seed 0) with
        ``teacher_epochs`` epochs, so that every student variant and every seed of an ablation
        suite shares one teacher; change ``teacher_epochs`` (or pick a teacher run) for another.
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
        )

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """One line for tables: ``resnet18 -> small_cnn, label 0.3 response 0.3 ...``."""
        if self.role == "teacher":
            return f"teacher {self.teacher} on {self.dataset}, {self.epochs} ep"
        w = " ".join(f"{k[:3]} {v:g}" for k, v in self.weights.as_dict().items() if v > 0)
        part = f" ({self.train_fraction:.0%} of train)" if self.train_fraction < 1 else ""
        return (
            f"{self.teacher} -> {self.student} on {self.dataset}{part}: {w}, T={self.temperature:g}"
        )

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layer_pairs"] = [list(p) for p in self.layer_pairs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}"
            )
        data = dict(data)
        if isinstance(data.get("weights"), dict):
            extra = sorted(set(data["weights"]) - set(COMPONENTS))
            if extra:
                raise UnknownNameError("loss component", extra[0], COMPONENTS)
            data["weights"] = LossWeights(**{k: float(v) for k, v in data["weights"].items()})
        try:
            return cls(**data)
        except TypeError as exc:  # wrong value types that slipped past validate()
            raise ConfigError(str(exc)) from None

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    def to_toml(self) -> str:
        """A TOML document that ``from_toml`` reads back to an equal config."""
        lines = []
        for key, value in self.to_dict().items():
            if key not in ("weights", "layer_pairs"):
                lines.append(f"{key} = {json.dumps(value)}")
        pairs = ", ".join(f"[{json.dumps(s)}, {json.dumps(t)}]" for s, t in self.layer_pairs)
        lines.append(f"layer_pairs = [{pairs}]")
        lines.append("")
        lines.append("[weights]")
        lines.extend(f"{k} = {v!r}" for k, v in self.weights.as_dict().items())
        return "\n".join(lines) + "\n"

    def fingerprint(self) -> str:
        """A stable hash of every field that changes what the run computes."""
        data = {k: v for k, v in self.to_dict().items() if k not in _NOT_FINGERPRINTED}
        if data.get("train_fraction") == 1.0:  # the default: fingerprints of older configs stay
            del data["train_fraction"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _check_choice(what: str, value: str, valid: list[str] | tuple[str, ...]) -> None:
    if value not in valid:
        raise UnknownNameError(what, str(value), list(valid))


def _check_number(name: str, value: float, *, low: float, inclusive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < low or (not inclusive and value == low):
        raise ConfigError(f"{name} must be {'>=' if inclusive else '>'} {low:g}, got {value:g}")


# Presets offered by the app and the CLI: (label, response, feature, relation).
PRESETS: dict[str, LossWeights] = {
    "hybrid (course default)": LossWeights(0.3, 0.3, 0.2, 0.2),
    "KD only (Hinton)": LossWeights(0.5, 0.5, 0.0, 0.0),
    "scratch student": LossWeights(1.0, 0.0, 0.0, 0.0),
}
