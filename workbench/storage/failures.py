"""Storage errors as one line a user can act on: a full disk, a damaged or locked run index, an
unwritable folder. ``storage_error`` turns an exception from SQLite, diskcache or the file
system into a ``StoreError`` that names the file and the fix (``CHECK``, ``REPAIR``);
``is_disk_full`` tells a full disk apart, however deep in the exception chain it is.
"""

from __future__ import annotations

import contextlib
import errno
import pickle
import shutil
import sqlite3
from pathlib import Path
from typing import NoReturn

import diskcache

from workbench.errors import StoreError

__all__ = [
    "CHECK",
    "DB_NAME",
    "REPAIR",
    "STORAGE_ERRORS",
    "damaged_index_error",
    "full_disk_error",
    "is_disk_full",
    "raise_storage",
    "refuse_lost_index",
    "repair_marker",
    "storage_error",
    "write_errno",
]

DB_NAME = "cache.db"  # diskcache's file name inside home/store
REPAIR = "python -m workbench store repair"
CHECK = "python -m workbench store check"
REPAIR_MARKER = "store.repairing.json"  # beside store/: written before a repair moves it aside
STORAGE_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout, pickle.UnpicklingError, EOFError)
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _free_text(path: Path) -> str:
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(candidate).free
            return f"{free / 2**20:.1f} MiB free"
    return "free space unknown"


def full_disk_error(home: Path, what: str) -> StoreError:
    """The one message for a full disk under ``home`` (``what`` failed)."""
    return StoreError(
        f"the disk holding the run store {home} is full ({_free_text(home)}), so {what} failed: "
        "free space on that disk (or point KDWB_HOME at a larger one) and retry; "
        "`runs` and `show` still work"
    )


def damaged_index_error(db: Path, detail: str) -> StoreError:
    return StoreError(
        f"the run index {db} is damaged ({detail}): run `{CHECK}` to see what is affected, "
        f"then `{REPAIR}` to rebuild it from the run manifests (the damaged file is moved "
        "aside, not deleted)"
    )


def is_disk_full(exc: BaseException, home: Path | None = None) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error):
            name = getattr(exc, "sqlite_errorname", "") or ""
            if name == "SQLITE_FULL" or "full" in str(exc):
                return True
            if name.startswith("SQLITE_IOERR") and home is not None:
                with contextlib.suppress(OSError):
                    return shutil.disk_usage(home).free < 2**20  # an I/O error on a full disk
        exc = exc.__cause__ or exc.__context__
    return False


def storage_error(
    exc: BaseException, home: Path, what: str = "the store operation"
) -> StoreError | None:
    """``exc`` as one StoreError line naming the file and the fix; None when it is not a
    storage error (it is then re-raised as it is)."""
    db = home / "store" / DB_NAME
    if isinstance(exc, StoreError):
        return exc
    if is_disk_full(exc, home):
        return full_disk_error(home, what)
    if isinstance(exc, diskcache.Timeout):
        return StoreError(
            f"{what} timed out: the run index {db} stayed locked by another process for over a "
            "minute; retry, and if it persists stop the other workbench processes"
        )
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        if "locked" in text or name.startswith("SQLITE_BUSY"):
            return StoreError(
                f"{what} failed: the run index {db} is locked by another connection ({text}); "
                "retry, and stop other workbench processes if it persists"
            )
        if name in ("SQLITE_READONLY", "SQLITE_CANTOPEN") or "readonly" in text:
            return StoreError(
                f"{what} failed: cannot write the run index {db} ({text}); check that the "
                "folder exists and that this user may write to it"
            )
        return damaged_index_error(db, text)
    if isinstance(exc, pickle.UnpicklingError | EOFError):
        return damaged_index_error(db, f"a stored value does not unpickle: {exc}")
    if isinstance(exc, OSError):
        where = exc.filename or home
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(
                f"{what} failed: cannot write {where} ({exc.strerror}); make the run store "
                "writable or point KDWB_HOME at a writable folder"
            )
        if exc.errno == errno.EIO:
            return StoreError(
                f"{what} failed: the disk reported an I/O error on {where}; check the disk, "
                f"then run `{CHECK}`"
            )
        return StoreError(
            f"{what} failed: {where}: {exc.strerror or exc}; KDWB_HOME must name a folder this "
            "user can write to"
        )
    return None


def raise_storage(exc: BaseException, home: Path, what: str) -> NoReturn:
    """Re-raise ``exc`` (in an ``except`` clause) as a StoreError when it is a storage error."""
    error = storage_error(exc, home, what)
    if error is None:
        raise exc
    raise error from exc


def repair_marker(home: Path) -> Path:
    """The file a repair keeps while it rebuilds the index: present after the repair ends
    means it was interrupted, and the index holds only part of the runs."""
    return Path(home) / REPAIR_MARKER


def refuse_lost_index(home: Path) -> None:
    """Refuse to open an index that is not whole: a repair was interrupted (its marker is
    left), or the index is missing or zero bytes next to run files (an index in WAL mode is
    never zero bytes: its header page is written when it is made)."""
    marker = repair_marker(home)
    if marker.exists():
        raise StoreError(
            f"a `store repair` of {home} was interrupted ({marker} is left), so the run index "
            f"holds only part of the runs: run `{REPAIR}` again to finish it"
        )
    db = Path(home) / "store" / DB_NAME
    with contextlib.suppress(OSError):
        if db.stat().st_size > 0:
            return
    try:
        files = [
            f
            for f in (Path(home) / "checkpoints").iterdir()
            if not f.name.startswith(".") and f.suffix in (".pt", ".json")
        ]
    except OSError:
        return
    if files:
        state = "empty (0 bytes)" if db.exists() else "missing"
        raise StoreError(
            f"the run index {db} is {state}, but {Path(home) / 'checkpoints'} holds "
            f"{len(files)} run files (checkpoints, manifests): run `{REPAIR}` to rebuild "
            "the index from the run manifests"
        )


def write_errno(path: Path) -> int:
    """The errno for a write of ``path`` that torch reported only as failed (``RuntimeError:
    [enforce fail at inline_container.cc]``): ENOSPC when its disk is (nearly) full, else EIO."""
    try:
        return errno.ENOSPC if shutil.disk_usage(Path(path).parent).free < 2**20 else errno.EIO
    except OSError:
        return errno.EIO
