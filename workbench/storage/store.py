"""The run store: run records, metric history, probes, suites and checkpoints on disk.

Everything lives under one home folder: ``$KDWB_HOME`` when set, else ``./cache``.
Records, histories and probes are kept in a diskcache ``Cache`` (SQLite underneath), which is
safe to share between threads and processes; checkpoints are plain ``.pt`` files beside it,
written to a temporary name and renamed so that a reader never sees half a file.

The queue of runs lives here too (the records whose status is ``queued``); claiming, heartbeats
and the recovery of runs whose process died are ``workbench.runs.queue``'s.

Failing loudly, and repairably: every storage error (a full disk, a damaged, truncated or empty
``store/cache.db``, a lost value file) becomes one ``StoreError`` line that names the file and
the fix. When the disk is full the store opens read-only (SQLite's immutable mode needs no
shared-memory file), so listing and showing runs keep working. Each run also keeps a small
manifest beside its checkpoint (``checkpoints/<run_id>.manifest.json``: record, history,
epochs), from which ``workbench.storage.repair`` rebuilds the run index.

Private to the user that runs the workbench: opening a store makes its folders 0700 and sets
the process umask so that every file written in it is 0600 (see ``_private_umask``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import pickle
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import diskcache

from workbench.errors import CheckpointError, StoreError
from workbench.storage import locks

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: pages load faster
    import torch

__all__ = ["ACTIVE", "FINISHED", "REPAIR", "STATUSES", "Store", "default_home"]

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "diverged", "interrupted")
ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled", "diverged", "interrupted")
_HOST = socket.gethostname()
HISTORY_CHUNK = 256
MANIFEST_FORMAT = 1
RUN_FILE_SUFFIXES = (".pt", ".state.pt", ".manifest.json")  # in checkpoints/, per run
DB_NAME = "cache.db"  # diskcache's file name inside home/store
ACTIVE_INDEX = "index:active-runs"  # {run id: status} of the queued and running runs
REPAIR = "python -m workbench store repair"
CHECK = "python -m workbench store check"
log = logging.getLogger("kdwb.store")


def default_home() -> Path:
    return Path(os.environ.get("KDWB_HOME") or Path.cwd() / "cache")


def new_id(prefix: str = "") -> str:
    """Sortable, unique: ``20261127-181501-3f9a2c``."""
    return prefix + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


# ---------------------------------------------------------------------- storage errors
_STORAGE_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout, pickle.UnpicklingError, EOFError)
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


def _raise_storage(exc: BaseException, home: Path, what: str) -> NoReturn:
    """Re-raise ``exc`` (in an ``except`` clause) as a StoreError when it is a storage error."""
    error = storage_error(exc, home, what)
    if error is None:
        raise exc
    raise error from exc


class _GuardedDb:
    """A ``diskcache.Cache`` (or ``_ReadOnlyIndex``) whose storage errors become StoreErrors.
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
            except _STORAGE_ERRORS as exc:
                raise self._translate(exc, name) from exc

        return call

    def __contains__(self, key: Any) -> bool:
        try:
            return key in self._inner
        except _STORAGE_ERRORS as exc:
            raise self._translate(exc, "lookup") from exc

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        try:
            with self._inner.transact():
                yield
        except _STORAGE_ERRORS as exc:
            raise self._translate(exc, "transaction") from exc

    def iterkeys(self) -> Iterator[Any]:
        try:
            yield from self._inner.iterkeys()
        except _STORAGE_ERRORS as exc:
            raise self._translate(exc, "listing") from exc


class _ReadOnlyIndex:
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


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        return value.tolist()
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file, fsync it and rename it over ``path``: a
    reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, default=_jsonable, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _private_umask() -> None:
    """Mask group and other bits for every file this process creates from now on. diskcache
    (SQLite files, value files) and torch create files with the process umask, and the store
    holds pickles: another local user who can read it reads every run, one who can write it
    plants a pickle that runs code when loaded. Set 0o077 first so the mask is never looser
    than that, even between the two calls (other threads may be writing); then keep whatever
    else the process already masked."""
    old = os.umask(0o077)
    if old & ~0o077:
        os.umask(old | 0o077)


def _private_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) as 0700, and tighten it to 0700 if it exists with
    group or other bits (a store made before this rule, or by hand)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)


class Store:
    """Run records and artifacts. Cheap to create; every method is thread- and process-safe."""

    def __init__(self, home: str | Path | None = None, *, rebuilding: bool = False):
        """Open (or create) the store at ``home``. A missing or empty run index next to run
        files raises StoreError (``rebuilding=True`` is for ``store repair``, which refills it);
        on a full disk the store opens read-only (``read_only`` then holds the reason)."""
        self.home = Path(home) if home is not None else default_home()
        self.read_only: StoreError | None = None
        _private_umask()
        try:
            for folder in (self.home, self.home / "store", self.home / "checkpoints"):
                _private_folder(folder)
        except OSError as exc:
            _raise_storage(exc, self.home, "creating the run store")
        if not rebuilding:
            self._refuse_lost_index()
        try:
            db: Any = diskcache.Cache(
                str(self.home / "store"), size_limit=2**40, eviction_policy="none"
            )
        except _STORAGE_ERRORS as exc:
            error = storage_error(exc, self.home, "opening the run store")
            if error is None:
                raise
            if not is_disk_full(exc, self.home) or not self.db_path.exists():
                raise error from exc
            self.read_only = full_disk_error(self.home, "writing to it")
            db = _ReadOnlyIndex(self.home / "store", self.read_only)
            log.info("the run store is open read-only: %s", self.read_only)
        self._db = _GuardedDb(db, self.home)

    @property
    def db_path(self) -> Path:
        return self.home / "store" / DB_NAME

    def _refuse_lost_index(self) -> None:
        """A missing or zero-byte index next to run files is damage, not an empty store (an
        index in WAL mode is never zero bytes: its header page is written when it is made)."""
        db = self.db_path
        with contextlib.suppress(OSError):
            if db.stat().st_size > 0:
                return
        try:
            files = [
                f
                for f in (self.home / "checkpoints").iterdir()
                if not f.name.startswith(".") and f.suffix in (".pt", ".json")
            ]
        except OSError:
            return
        if files:
            state = "empty (0 bytes)" if db.exists() else "missing"
            raise StoreError(
                f"the run index {db} is {state}, but {self.home / 'checkpoints'} holds "
                f"{len(files)} run files (checkpoints, manifests): run `{REPAIR}` to rebuild "
                "the index from the run manifests"
            )

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ run records
    def create_run(
        self,
        config: Any,
        *,
        name: str = "",
        tags: Iterable[str] = (),
        suite: str | None = None,
        variant: str | None = None,
        status: str = "queued",
        owner: str = "",
        private: bool = False,
    ) -> str:
        """Record a new run (``owner``: the user it belongs to; ``private``: seen by its owner
        and admins only, see ``workbench.lab.access``); returns its id."""
        run_id = new_id()
        record = {
            "id": run_id,
            "name": name,
            "tags": list(tags),
            "owner": owner,
            "private": bool(private),
            "role": config.role,
            "status": status,
            "config": config.to_dict(),
            "fingerprint": config.fingerprint(),
            "created_at": time.time(),
            "started_at": None,
            "finished_at": None,
            "seconds": None,
            "pid": os.getpid(),
            "host": _HOST,
            "progress": {
                "epoch": 0,
                "epochs": config.epochs,
                "step": 0,
                "total_steps": 0,
                "eta_s": None,
            },
            "metrics": {},
            "error": None,
            "diverged_step": None,
            "teacher_run": None,
            "teacher_source": None,
            "teacher_note": None,
            "suite": suite,
            "variant": variant,
        }
        with self._db.transact():
            self._db.set(f"run:{run_id}", record)
            self._index_status(run_id, status)
        self.write_manifest(run_id)
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any]:
        record = self._db.get(f"run:{run_id}")
        if record is None:
            raise KeyError(f"no run {run_id!r} in the store at {self.home}")
        return record

    def has_run(self, run_id: str) -> bool:
        return f"run:{run_id}" in self._db

    def update_run(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the record atomically (one writer wins per field)."""
        key = f"run:{run_id}"
        with self._db.transact():
            record = self._db.get(key)
            if record is None:
                raise KeyError(f"no run {run_id!r} in the store at {self.home}")
            record.update(fields)
            self._db.set(key, record)
            if "status" in fields:
                self._index_status(run_id, record["status"])
        if fields.get("status") in FINISHED:  # a final state: keep the manifest up to date
            self._write_manifest_quietly(run_id)
        return record

    def update_run_if(
        self, run_id: str, condition: Callable[[dict[str, Any]], bool], **fields: Any
    ) -> dict[str, Any] | None:
        """Merge ``fields`` into the record in one transaction if ``condition(record)`` holds;
        the record, or None when it did not hold (or the run is gone). A field's value may be a
        function of the record before the change (e.g. a counter's increment)."""
        key = f"run:{run_id}"
        with self._db.transact():
            record = self._db.get(key)
            if record is None or not condition(record):
                return None
            record.update({k: v(record) if callable(v) else v for k, v in fields.items()})
            self._db.set(key, record)
            if "status" in fields:
                self._index_status(run_id, record["status"])
        if "status" in fields:  # queued again, claimed, interrupted: keep the manifest current
            self._write_manifest_quietly(run_id)
        return record

    def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        role: str | None = None,
        suite: str | None = None,
    ) -> list[dict[str, Any]]:
        """All matching records, newest first. Queued and running runs alone are read through
        the index of active runs (the queue's every decision, recovery, ``busy``): their cost
        follows the queue, not every run the store ever kept."""
        wanted = {status} if isinstance(status, str) else set(status) if status else None
        get = self._db.get  # one guarded wrapper for the listing, not one per record (~10 %)
        index = self._active_index() if wanted and wanted <= set(ACTIVE) else None
        if index is not None:
            keys: Iterable[Any] = [f"run:{i}" for i, st in index.items() if st in wanted]
        else:
            keys = self._db.iterkeys()
        records = []
        for key in keys:
            if not (isinstance(key, str) and key.startswith("run:")):
                continue
            record = get(key)
            if record is None:  # deleted meanwhile
                continue
            if wanted and record["status"] not in wanted:
                continue
            if role and record["role"] != role:
                continue
            if suite and record.get("suite") != suite:
                continue
            records.append(record)
        records.sort(key=lambda r: r["created_at"], reverse=True)
        return records

    # ------------------------------------------------------------------ the index of active runs
    # ACTIVE_INDEX holds {run id: status} for every queued or running run. It changes in the
    # transaction that changes a record's status (create_run, update_run, update_run_if,
    # delete_run), so it is never behind the records; a store without one (older, or rebuilt by
    # `store repair`) gets it from a scan of every record, in one transaction, on first use.
    def _index_status(self, run_id: str, status: str | None) -> None:
        """Inside the transaction that gave ``run_id`` its ``status`` (None: deleted)."""
        index = self._db.get(ACTIVE_INDEX)
        if index is None:  # not built yet: the first listing builds it from the records
            return
        if status in ACTIVE:
            if index.get(run_id) == status:
                return
            index[run_id] = status
        elif index.pop(run_id, None) is None:
            return
        self._db.set(ACTIVE_INDEX, index)

    def _active_index(self) -> dict[str, str] | None:
        """The index of active runs, built now when missing; None on a read-only store that has
        none (the caller then scans every record)."""
        index = self._db.get(ACTIVE_INDEX)
        if index is not None:
            return index
        try:
            with self._db.transact():  # writers wait: no status change slips past the scan
                index = self._db.get(ACTIVE_INDEX)
                if index is None:
                    index = self._scan_active()
                    self._db.set(ACTIVE_INDEX, index)
        except StoreError:
            if self.read_only is None:
                raise
            return None
        return index

    def _scan_active(self) -> dict[str, str]:
        index = {}
        for key in self._db.iterkeys():
            if isinstance(key, str) and key.startswith("run:"):
                record = self._db.get(key)
                if record is not None and record.get("status") in ACTIVE:
                    index[record["id"]] = record["status"]
        return index

    def rebuild_active_index(self) -> None:
        """Drop the index of active runs; the next listing builds it again (``store repair``
        calls this after writing records itself)."""
        self._db.delete(ACTIVE_INDEX)

    def delete_run(self, run_id: str) -> None:
        with self._db.transact():
            self._db.delete(f"run:{run_id}")
            self._index_status(run_id, None)
        for prefix in ("epochs", "probe", "cancel"):
            self._db.delete(f"{prefix}:{run_id}")
        self._delete_chunks(f"history:{run_id}")
        for path in self.run_files(run_id):
            path.unlink(missing_ok=True)

    def run_files(self, run_id: str) -> list[Path]:
        """The files a run keeps beside the index: final weights, training state, manifest."""
        folder = self.home / "checkpoints"
        return [folder / f"{run_id}{suffix}" for suffix in RUN_FILE_SUFFIXES]

    # ------------------------------------------------------------------ cancel flags
    def request_cancel(self, run_id: str) -> None:
        self._db.set(f"cancel:{run_id}", True)

    def cancel_requested(self, run_id: str) -> bool:
        return bool(self._db.get(f"cancel:{run_id}", False))

    def clear_cancel(self, run_id: str) -> None:
        self._db.delete(f"cancel:{run_id}")

    # ------------------------------------------------------------------ history
    # The history is kept in chunks of HISTORY_CHUNK rows, so that a logged step rewrites one
    # chunk instead of the whole (growing) history: a long run costs O(steps), not O(steps^2).
    def set_history(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Store the whole history of a run (replacing any). The new chunks are written
        before the old ones beyond them are dropped: a failed write loses no rows."""
        for start in range(0, len(rows), HISTORY_CHUNK):
            self._db.set(
                f"history:{run_id}:{start // HISTORY_CHUNK}", rows[start : start + HISTORY_CHUNK]
            )
        index = -(-len(rows) // HISTORY_CHUNK)
        while self._db.delete(f"history:{run_id}:{index}"):
            index += 1

    def save_history_tail(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Store a history that only grew since the last call: rewrites its last chunk."""
        if rows:
            last = (len(rows) - 1) // HISTORY_CHUNK
            chunk = rows[last * HISTORY_CHUNK : (last + 1) * HISTORY_CHUNK]
            self._db.set(f"history:{run_id}:{last}", chunk)

    def history(self, run_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        index = 0
        while (chunk := self._db.get(f"history:{run_id}:{index}")) is not None:
            rows.extend(chunk)
            index += 1
        if f"history:{run_id}:{index}" in self._db:  # listed, but its value file is gone
            raise StoreError(
                f"the metric history of run {run_id} is damaged: the file of rows from "
                f"{index * HISTORY_CHUNK} on is missing under {self.home / 'store'}; run "
                f"`{REPAIR}` to restore it from the run's manifest"
            )
        return rows

    def _delete_chunks(self, prefix: str) -> None:
        index = 0
        while self._db.delete(f"{prefix}:{index}"):
            index += 1

    def set_epochs(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        self._db.set(f"epochs:{run_id}", rows)

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        return self._db.get(f"epochs:{run_id}", [])

    # ------------------------------------------------------------------ probes
    def save_probe(self, run_id: str, probe: dict[str, Any]) -> None:
        self._db.set(f"probe:{run_id}", probe)
        with contextlib.suppress(KeyError):  # remembered in the record (and so the manifest)
            self.update_run(run_id, probe_saved_at=time.time())

    def probe(self, run_id: str) -> dict[str, Any] | None:
        """The run's probe; None when there is none (``probe_state`` tells whether it was
        never made or made and lost)."""
        probe = self._db.get(f"probe:{run_id}")
        if probe is None and self.probe_state(run_id) == "missing":
            log.warning("the probe of run %s was saved but is missing from the store", run_id)
        return probe

    def probe_state(self, run_id: str) -> str:
        """``"saved"``; ``"none"`` (never made: teachers, unfinished runs); ``"missing"`` (it
        was saved, but its file was deleted or the index was rebuilt without it)."""
        key = f"probe:{run_id}"
        if key in self._db and self._db.get(key) is not None:
            return "saved"
        listed = key in self._db
        record = self._db.get(f"run:{run_id}") or {}
        return "missing" if listed or record.get("probe_saved_at") else "none"

    # ------------------------------------------------------------------ teachers
    def find_teacher(self, fingerprint: str) -> str | None:
        """The completed teacher run trained under ``fingerprint``, if any."""
        run_id = self._db.get(f"teacher:{fingerprint}")
        if run_id and self.has_run(run_id) and self.checkpoint_path(run_id).exists():
            return run_id
        return None

    def set_teacher(self, fingerprint: str, run_id: str) -> None:
        self._db.set(f"teacher:{fingerprint}", run_id)

    # ------------------------------------------------------------------ suites
    def save_suite(self, suite: dict[str, Any]) -> None:
        self._db.set(f"suite:{suite['id']}", suite)
        try:  # a copy beside the run manifests, from which `store repair` restores it
            write_json_atomic(self.suite_manifest_path(suite["id"]), suite)
        except OSError as exc:
            _raise_storage(exc, self.home, "writing the suite manifest")

    def suite_manifest_path(self, suite_id: str) -> Path:
        return self.home / "checkpoints" / f"suite-{suite_id}.manifest.json"

    def get_suite(self, suite_id: str) -> dict[str, Any]:
        suite = self._db.get(f"suite:{suite_id}")
        if suite is None:
            raise KeyError(f"no suite {suite_id!r} in the store at {self.home}")
        return suite

    def list_suites(self) -> list[dict[str, Any]]:
        suites = [
            self._db.get(k)
            for k in self._db.iterkeys()
            if isinstance(k, str) and k.startswith("suite:")
        ]
        return sorted((s for s in suites if s), key=lambda s: s["created_at"], reverse=True)

    def delete_suite(self, suite_id: str) -> None:
        self._db.delete(f"suite:{suite_id}")
        self.suite_manifest_path(suite_id).unlink(missing_ok=True)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, run_id: str) -> Path:
        return self.home / "checkpoints" / f"{run_id}.pt"

    def save_checkpoint(self, run_id: str, state_dict: dict[str, torch.Tensor]) -> Path:
        import torch

        path = self.checkpoint_path(run_id)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:  # a file object: a full disk is an OSError, not torch's
                torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, f)
            os.replace(tmp, path)
        except OSError as exc:
            _raise_storage(exc, self.home, f"saving the checkpoint of run {run_id}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path

    def load_checkpoint(self, run_id: str) -> dict[str, torch.Tensor]:
        return load_state_dict(self.checkpoint_path(run_id), run_id=run_id)

    # ------------------------------------------------------------------ manifests
    def manifest_path(self, run_id: str) -> Path:
        return self.home / "checkpoints" / f"{run_id}.manifest.json"

    def write_manifest(self, run_id: str) -> Path:
        """Write the run's manifest (record, history, epochs as JSON) atomically beside its
        checkpoint; ``store repair`` rebuilds the index from these. Raises StoreError."""
        manifest = {
            "format": MANIFEST_FORMAT,
            "written_at": time.time(),
            "record": self.get_run(run_id),
            "history": self.history(run_id),
            "epochs": self.epochs(run_id),
        }
        path = self.manifest_path(run_id)
        try:
            write_json_atomic(path, manifest)
        except OSError as exc:
            _raise_storage(exc, self.home, f"writing the manifest of run {run_id}")
        return path

    def _write_manifest_quietly(self, run_id: str) -> None:
        try:
            self.write_manifest(run_id)
        except (StoreError, KeyError) as exc:  # the index itself was updated: say it, go on
            log.warning("could not write the manifest of run %s: %s", run_id, exc)

    def read_manifest(self, run_id: str) -> dict[str, Any]:
        return read_manifest(self.manifest_path(run_id))

    # ------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def lock(
        self,
        name: str,
        *,
        description: str = "",
        on_wait: Callable[[str], None] | None = None,
        poll: float = 0.2,
        heartbeat: float = locks.HEARTBEAT_S,
        stale_after: float = locks.STALE_AFTER_S,
        report_after: float = locks.REPORT_AFTER_S,
    ) -> Iterator[locks.LockHandle]:
        """A lock shared by every thread and process using this store (``workbench.storage.locks``).

        It records its holder (host, pid, thread, ``description``, a heartbeat refreshed every
        ``heartbeat`` s); a dead holder (same host, process gone) or a silent one (no heartbeat
        for ``stale_after`` s) is taken over at once. A wait longer than ``report_after`` s is
        logged and passed to ``on_wait(message)``. ``poll`` keeps waiting cheap (diskcache's own
        Lock spins every millisecond, which would steal a core from a training run). The handle
        it yields can ``describe(text)`` the work once more is known (a run id).
        """
        handle = locks.acquire(
            self._db,
            name,
            description=description,
            on_wait=on_wait,
            poll=poll,
            heartbeat=heartbeat,
            stale_after=stale_after,
            report_after=report_after,
        )
        try:
            yield handle
        finally:
            handle.release()

    def lock_holder(self, name: str) -> dict[str, Any] | None:
        """Who holds lock ``name`` (its record), or None."""
        return self._db.get(f"lock:{name}")

    # ------------------------------------------------------------------ key/value extras
    def get(self, key: str, default: Any = None) -> Any:
        return self._db.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._db.set(key, value)

    def delete(self, key: str) -> None:
        self._db.delete(key)

    def keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``."""
        return [k for k in self._db.iterkeys() if isinstance(k, str) and k.startswith(prefix)]

    def values(self, prefix: str) -> list[Any]:
        """The values of every key that starts with ``prefix``."""
        found = (
            self._db.get(k)
            for k in self._db.iterkeys()
            if isinstance(k, str) and k.startswith(prefix)
        )
        return [v for v in found if v is not None]


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A run manifest; StoreError when it cannot be read."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"the run manifest {path} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("record"), dict):
        raise StoreError(f"the run manifest {path} does not hold a run record")
    return manifest


def load_state_dict(path: str | Path, *, run_id: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; a clear CheckpointError otherwise.

    ``run_id`` marks a checkpoint the workbench wrote itself (the advice is then to retrain or
    restore it, not how to save one, which is for uploaded files)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, non-tensor payloads
        if run_id is not None:
            raise CheckpointError(
                f"the checkpoint of run {run_id} ({path}) is damaged ({type(exc).__name__}): "
                "the workbench wrote it whole, so the file was truncated or overwritten on "
                f"disk; restore it from a backup or train the run again (`{CHECK}` lists "
                "every damaged file)"
            ) from None
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch state dict ({type(exc).__name__}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path.name} does not hold a state dict (a mapping of names to tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return state
