"""The bounds of every number a run takes, in one place.

The CLI, TOML files and the app's forms all reach these through ``RunConfig.validate``; the
app's widgets can take their ``min_value``/``max_value`` from ``BOUNDS`` too, so that what the
app offers and what the library accepts never differ. A leaf module (it imports nothing else
from the workbench), so that the loss weights and the run config can both use it.

Why these bounds: 500 epochs is far beyond what a lab run on these datasets needs; a batch of
one breaks BatchNorm in training mode; AdamW above a learning rate of 1 only diverges; seeds
are 32-bit so that every generator (Python, NumPy, torch) takes them; a temperature below 0.05
turns the softened distributions into one-hot ones and overflows the logits / T.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from workbench.errors import ConfigError

__all__ = ["BOUNDS", "Bound", "check_bound", "show"]


@dataclass(frozen=True)
class Bound:
    """``low <= value <= high`` (``low < value`` when ``low_open``); ``whole`` for int fields."""

    low: float
    high: float
    whole: bool = False
    low_open: bool = False

    def describe(self) -> str:
        """The allowed values in words, e.g. ``a whole number from 1 to 500``."""
        if self.whole:
            return f"a whole number from {self.low:d} to {self.high:d}"
        if self.low_open:
            return f"a number > {self.low:g} and <= {self.high:g}"
        return f"a number from {self.low:g} to {self.high:g}"

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool):  # True is an int to Python, never a number to a user
            return False
        if self.whole:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real):
            return False
        elif not isinstance(value, numbers.Integral) and not math.isfinite(value):
            return False  # nan, inf (an int is finite, and math.isfinite(2**2000) overflows)
        above_low = value > self.low if self.low_open else value >= self.low
        return above_low and value <= self.high


BOUNDS: dict[str, Bound] = {
    "epochs": Bound(1, 500, whole=True),
    "teacher_epochs": Bound(1, 500, whole=True),
    "batch_size": Bound(2, 4096, whole=True),
    "log_every": Bound(1, 100_000, whole=True),
    "seed": Bound(0, 2**32 - 1, whole=True),
    "lr": Bound(1e-6, 1.0),
    "temperature": Bound(0.05, 100.0),
    "train_fraction": Bound(0.0, 1.0, low_open=True),  # the share of the training split used
    "weight": Bound(0.0, 100.0),  # each of the four loss weights
    "dkd_alpha": Bound(0.0, 100.0),
    "dkd_beta": Bound(0.0, 100.0),
    "dkd_warmup": Bound(0, 500, whole=True),
    "dist_beta": Bound(0.0, 100.0),
    "dist_gamma": Bound(0.0, 100.0),
    "momentum": Bound(0.0, 0.999),  # 1 would never forget a gradient
    "weight_decay": Bound(0.0, 1.0),
    "lr_decay": Bound(0.0, 1.0, low_open=True),
    "warmup_epochs": Bound(0, 499, whole=True),
}


def check_bound(name: str, value: Any, bound: Bound | None = None) -> None:
    """Raise a one-line ``ConfigError`` naming ``name`` and its range unless ``value`` is in it.

    ``bound`` defaults to ``BOUNDS[name]``.
    """
    bound = bound or BOUNDS[name]
    if not bound.contains(value):
        raise ConfigError(f"{name} must be {bound.describe()}, got {show(value)}")


def show(value: Any, limit: int = 80) -> str:
    """``value`` for an error message: one line (``repr`` escapes newlines), at most ``limit``
    characters, with its type when that is not obvious from the text."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str | bool | numbers.Number):
        text = repr(value)
    else:
        text = f"{value!r} ({type(value).__name__})"
    return text if len(text) <= limit else text[: limit - 3] + "..."
