"""The one reader of TOML files a user gives: run configs (``--config``) and the instance's
settings (``workbench.toml``).

A config is a small text file, so anything else is refused before a byte is read, in one line
that names the file and the fix: a FIFO (reading it blocks until someone writes), a device
(``/dev/zero`` never ends: it filled 22 GB before the OOM killer came), a folder, a file over
``MAX_TOML_BYTES``, text that is not UTF-8 or starts with a byte-order mark, and nesting deep
enough to exhaust Python's recursion limit in ``tomllib``.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError

__all__ = ["MAX_TOML_BYTES", "read_toml"]

MAX_TOML_BYTES = 2**20  # 1 MiB: a config or settings file is a few hundred bytes
_BOM = b"\xef\xbb\xbf"


def read_toml(
    path: str | Path, what: str = "config file", error: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    """The table in the TOML file ``path``; every way of failing is one ``error`` line that
    starts ``{what} {path}``.

    The file is opened without blocking (``O_NONBLOCK``: opening a FIFO does not wait for a
    writer) and checked with ``fstat`` on the open descriptor, so what is read is the regular
    file that was checked, and at most ``MAX_TOML_BYTES + 1`` bytes of it."""
    where = f"{what} {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{where} does not exist") from None
    except PermissionError:
        raise error(f"{where} cannot be read: permission denied") from None
    except OSError as exc:
        raise error(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        raw = _read_regular(fd, where, error)
    finally:
        os.close(fd)
    return _parse(raw, where, error)


def _read_regular(fd: int, where: str, error: type[ConfigError]) -> bytes:
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        raise error(f"{where} is a folder; give a TOML file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise error(f"{where} is not a regular file ({kind}); give a TOML file")
    chunks, size = [], 0
    try:
        while size <= MAX_TOML_BYTES:  # bounded: the file may grow after the check
            chunk = os.read(fd, MAX_TOML_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error(f"{where} cannot be read: {exc.strerror or exc}") from None
    raw = b"".join(chunks)
    if len(raw) > MAX_TOML_BYTES:
        size = max(len(raw), os.fstat(fd).st_size)
        raise error(
            f"{where} is {size} bytes; a config file is at most 1 MiB: give the TOML file of "
            "settings, not a data file"
        )
    return raw


def _parse(raw: bytes, where: str, error: type[ConfigError]) -> dict[str, Any]:
    # A BOM is named, not stripped: TOML is UTF-8 without one, and a file this reader took
    # would still fail in every other TOML tool (tomllib, the editors' linters, Streamlit's).
    if raw.startswith(_BOM):
        raise error(
            f"{where} starts with a UTF-8 byte-order mark; save it without BOM "
            "(as UTF-8, not 'UTF-8 with signature')"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); TOML files are UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise error(
            f"{where} nests lists or tables too deeply for a config; its values are plain "
            "numbers, text, lists and tables a few levels deep"
        ) from None
