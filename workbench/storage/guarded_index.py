"""The run index behind guards: ``GuardedIndex`` wraps a ``diskcache.Cache`` so that every
storage error of every method becomes a ``StoreError``; ``ReadOnlyIndex`` reads the index on a
full disk (SQLite's immutable mode) and refuses every write with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache

from workbench.errors import StoreError
from workbench.storage.failures import DB_NAME, STORAGE_ERRORS, storage_error

__all__ = ["GuardedIndex", "ReadOnlyIndex"]


class GuardedIndex:
    """A ``diskcache.Cache`` (or ``ReadOnlyIndex``) whose storage errors become StoreErrors.
    Wrapping the database once covers every method of the store, present and future."""

    def __init__(self, db: Any, home: Path):
        self._inner, self._home = db, home

    def _translate(self, exc: BaseException, name: str) -> BaseException:
        return storage_error(exc, self._home, f"the store's {name}") or exc

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except STORAGE_ERRORS as exc:
                raise self._translate(exc, name) from exc

        return call

    def __contains__(self, key: Any) -> bool:
        try:
            return key in self._inner
        except STORAGE_ERRORS as exc:
            raise self._translate(exc, "lookup") from exc

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        try:
            with self._inner.transact():
                yield
        except STORAGE_ERRORS as exc:
            raise self._translate(exc, "transaction") from exc

    def iterkeys(self) -> Iterator[Any]:
        try:
            yield from self._inner.iterkeys()
        except STORAGE_ERRORS as exc:
            raise self._translate(exc, "listing") from exc


class ReadOnlyIndex:
    """Just enough of ``diskcache.Cache`` to read the store on a full disk: SQLite's immutable
    mode opens the file without the shared-memory file that a full disk cannot hold. Changes
    still in ``cache.db-wal`` are not seen; every write raises the reason it is read-only."""

    def __init__(self, directory: Path, reason: StoreError):
        self._path = directory / DB_NAME
        self.reason = reason
        self._disk = diskcache.Disk(str(directory))
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self._path}?immutable=1", uri=True)
            self._local.con = con
        return con

    def _row(self, key: Any) -> tuple[Any, ...] | None:
        db_key, raw = self._disk.put(key)
        return (
            self._con()
            .execute(
                "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?"
                " AND (expire_time IS NULL OR expire_time > ?)",
                (db_key, raw, time.time()),
            )
            .fetchone()
        )

    def get(self, key: Any, default: Any = None) -> Any:
        row = self._row(key)
        if row is None:
            return default
        try:
            return self._disk.fetch(row[0], row[1], row[2], False)
        except OSError:  # a value file gone: the same answer as diskcache's
            return default

    def __contains__(self, key: Any) -> bool:
        return self._row(key) is not None

    def iterkeys(self) -> Iterator[Any]:
        rows = self._con().execute("SELECT key, raw FROM Cache ORDER BY key, raw").fetchall()
        for key, raw in rows:
            yield self._disk.get(key, raw)

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise self.reason

    set = add = delete = _refuse

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        raise self.reason
        yield  # pragma: no cover - a generator, for the context manager protocol
