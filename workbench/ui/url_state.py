"""A page's state in its URL: the query parameters that a reload, a bookmark or a link sent to a
colleague restores (``/compare?runs=ID1,ID2&group=feature_kind``).

Pure conversions between a page's values and query-parameter text; the pages read
``st.query_params`` once per session and write them back as the values change. A value that
cannot be read back (a deleted run, a number that is not one) is dropped, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["decode_ids", "decode_value", "encode_ids", "encode_value", "from_params", "to_params"]


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
    out = {}
    for key, like in defaults.items():
        if key not in params:
            continue
        try:
            out[key] = decode_value(params[key], like)
        except ValueError:
            continue  # a hand-edited or stale link: keep the default
    return out
