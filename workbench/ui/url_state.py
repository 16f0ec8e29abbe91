"""A page's state in its URL: the query parameters that a reload, a bookmark or a link sent to a
colleague restores (``/compare?runs=ID1,ID2&group=feature_kind``).

Pure conversions between a page's values and query-parameter text; the pages read
``st.query_params`` once per session and write them back as the values change. A value that
cannot be read back (a deleted run, a number that is not one) is dropped, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from workbench.ui.escape import plain

__all__ = [
    "MAX_TEXT",
    "Steps",
    "decode_ids",
    "decode_value",
    "dropped_notes",
    "encode_ids",
    "encode_value",
    "from_params",
    "read_params",
    "to_params",
]

MAX_TEXT = 1000  # characters: a longer value in a link is not one the app wrote


class Range(Protocol):
    """What a numeric field allows: ``workbench.config.bounds.Bound`` or ``Steps``."""

    def contains(self, value: Any) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Steps:
    """A slider's values: ``low`` to ``high`` in steps of ``step`` (what the widget can hold)."""

    low: float
    high: float
    step: float

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or not self.low <= value <= self.high:
            return False
        steps = (value - self.low) / self.step
        return abs(steps - round(steps)) < 1e-6

    def describe(self) -> str:
        return f"a number from {self.low:g} to {self.high:g} in steps of {self.step:g}"


def encode_ids(ids: Iterable[str]) -> str:
    """Run (or suite) ids as one parameter: ``"r1,r2"``."""
    return ",".join(ids)


def decode_ids(text: str | None, available: Iterable[str]) -> list[str]:
    """The ids of ``text`` that are ``available``, in the order given, each once."""
    have = set(available)
    return [i for i in dict.fromkeys((text or "").split(",")) if i and i in have]


def encode_value(value: Any) -> str:
    """A draft value as text: numbers as Python writes them, booleans as 1/0, layer pairs as
    ``s1>t1;s2>t2`` (``auto`` for pairing automatically)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return ";".join(f"{s}>{t}" for s, t in value) if value else "auto"
    return str(value)


def decode_value(text: str, like: Any) -> Any:
    """``text`` read back as the type of ``like`` (the field's default); ``ValueError`` if it is
    not one. A default of None means layer pairs."""
    if like is None or isinstance(like, (tuple, list)):
        if text == "auto":
            return ()
        pairs = []
        for part in text.split(";"):
            s, sep, t = part.partition(">")
            if not sep or not s or not t:
                raise ValueError(f"not a layer pair: {part!r}")
            pairs.append((s, t))
        return tuple(pairs)
    if isinstance(like, bool):
        if text not in ("0", "1"):
            raise ValueError(f"not 0 or 1: {text!r}")
        return text == "1"
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    return text


def to_params(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, str]:
    """The values that differ from their defaults, as query parameters (a short URL)."""
    return {
        key: encode_value(value)
        for key, value in values.items()
        if key in defaults and value != defaults[key] and value is not None
    }


def from_params(params: Mapping[str, str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that name a field of ``defaults`` and read back as its type."""
    return read_params(params, defaults)[0]


def read_params(
    params: Mapping[str, str],
    defaults: Mapping[str, Any],
    allowed: Mapping[str, Collection[Any] | Range] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(values, dropped)``: the parameters that name a field of ``defaults``, read back as its
    type and within what its widget allows, and ``{key: why}`` for those that were not.

    ``allowed[key]`` is the widget's options (a collection) or its range (``Steps``, or a
    ``Bound``, anything with ``contains`` and ``describe``). Whatever ``allowed`` says, a number
    must be finite and a text printable and at most ``MAX_TEXT`` characters: a value from a link
    is never handed to a widget that cannot hold it (Streamlit raises on a slider value out of
    its range, and a stale link must not break the page).
    """
    allowed = allowed or {}
    values: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    for key, like in defaults.items():
        if key not in params:
            continue
        text = params[key]
        if not isinstance(text, str) or len(text) > MAX_TEXT or not text.isprintable():
            dropped[key] = f"not printable text of at most {MAX_TEXT} characters"
            continue
        try:
            value = decode_value(text, like)
        except ValueError:
            dropped[key] = f"not {_kind(like)}"
            continue
        if isinstance(value, float) and not math.isfinite(value):
            dropped[key] = "not a finite number"
            continue
        rule = allowed.get(key)
        if rule is None:
            values[key] = value
        elif hasattr(rule, "contains"):
            if rule.contains(value):
                values[key] = value
            else:
                dropped[key] = f"not {rule.describe()}"
        elif value in rule:
            values[key] = value
        else:
            dropped[key] = "not one of the choices"
    return values, dropped


def _kind(like: Any) -> str:
    if like is None or isinstance(like, (tuple, list)):
        return "layer pairs (student>teacher;...) or auto"
    if isinstance(like, bool):
        return "0 or 1"
    if isinstance(like, int):
        return "a whole number"
    return "a number" if isinstance(like, float) else "text"


def dropped_notes(params: Mapping[str, str], dropped: Mapping[str, str]) -> list[str]:
    """One line per dropped parameter, escaped for markdown (the value is the user's):
    ``ignored smooth=5 from the link: not a number from 0 to 0.95 in steps of 0.05``."""
    notes = []
    for key, why in dropped.items():
        value = "".join(c if c.isprintable() else "?" for c in str(params.get(key, ""))[:40])
        shown = value if len(value) < 40 else value[:39] + "…"
        notes.append(plain(f"ignored {key}={shown} from the link: {why}"))
    return notes
