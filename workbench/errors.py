"""Errors the library raises for bad input.

Every message is written for the person at the keyboard: it says what is wrong and what to
change. The app shows it with ``st.error`` and the CLI prints it and exits non-zero; neither
shows a traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetUnavailableError",
    "IncompatibleModelsError",
    "StoreError",
    "UnknownNameError",
    "WorkbenchError",
    "cut",
    "first_line",
    "quoted",
]


class WorkbenchError(Exception):
    """Base class: the message is shown to the user as it is."""


class ConfigError(WorkbenchError, ValueError):
    """A configuration value is out of range or inconsistent."""


class UnknownNameError(ConfigError, KeyError):
    """A name (model, dataset, loss kind, ...) is not in its registry."""

    def __init__(self, what: str, name: str, valid: list[str] | tuple[str, ...]):
        self.what, self.name, self.valid = what, name, tuple(valid)
        super().__init__(f"unknown {what} {quoted(name)}; choose one of: {', '.join(valid)}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class DatasetUnavailableError(WorkbenchError):
    """The dataset's files are not on disk and may not be downloaded."""


class IncompatibleModelsError(WorkbenchError):
    """The teacher and student cannot be paired on the chosen layers or loss kinds."""


class CheckpointError(WorkbenchError):
    """A checkpoint is missing, unreadable or does not match the architecture."""


class StoreError(WorkbenchError):
    """The run store cannot be read or written: a full disk, a damaged or missing database, a
    lost file. The message names the file and the command that repairs it."""


QUOTE_MAX = 200  # characters of a value a message may echo


def quoted(value: Any, limit: int = QUOTE_MAX) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters: a value given by a
    user (a flag, a field of a file, a header) is named, never echoed whole (a 5 MiB field would
    make a 5 MiB error line). A cut value ends with its length: ``'xxx...' (5,242,882
    characters)``."""
    return cut(repr(value), limit)


def cut(text: str, limit: int = QUOTE_MAX) -> str:
    """``text`` (already quoted, or a list of names) at most ``limit`` characters, as
    ``quoted`` cuts it."""
    if len(text) <= limit:
        return text
    suffix = f"... ({len(text):,} characters)"
    return text[: max(limit - len(suffix), 8)] + suffix


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none): a library's
    multi-line error told in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
