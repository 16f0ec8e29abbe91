"""The run store: run records, metric history, probes, suites and checkpoints on disk.

Everything lives under one home folder: ``$KDWB_HOME`` when set, else ``./cache``.
Records, histories and probes are kept in a diskcache ``Cache`` (SQLite underneath), which is
safe to share between threads and processes; a run's final weights are a plain ``.pt`` file
beside it, written to a temporary name and renamed so that a reader never sees half a file
(``workbench.storage.weights``; the per-epoch state to resume from is ``training_state``'s).

The queue of runs lives here too (the records whose status is ``queued``); claiming, heartbeats
and the recovery of runs whose process died are ``workbench.runs.queue``'s.

Failing loudly, and repairably: every storage error (a full disk, a damaged, truncated or empty
``store/cache.db``, a lost value file) becomes one ``StoreError`` line that names the file and
the fix (``workbench.storage.failures``). When the disk is full the store opens read-only
(SQLite's immutable mode needs no shared-memory file, ``workbench.storage.guarded_index``), so
listing and showing runs keep working. Each run also keeps a small
manifest beside its checkpoint (``checkpoints/<run_id>.manifest.json``: record, history,
epochs), from which ``workbench.storage.repair`` rebuilds the run index.

Private to the user that runs the workbench: opening a store makes its folders 0700 and sets
the process umask so that every file written in it is 0600 (``workbench.storage.permissions``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diskcache

from workbench.errors import StoreError
from workbench.storage import active_runs, history, locks
from workbench.storage.active_runs import ACTIVE, ACTIVE_INDEX, FINISHED, STATUSES
from workbench.storage.failures import (
    DB_NAME,
    REPAIR,
    STORAGE_ERRORS,
    full_disk_error,
    is_disk_full,
    raise_storage,
    refuse_lost_index,
    storage_error,
)
from workbench.storage.guarded_index import GuardedIndex, ReadOnlyIndex
from workbench.storage.locks import HOST
from workbench.storage.manifests import MANIFEST_FORMAT, read_manifest, write_json_atomic
from workbench.storage.permissions import private_folder, private_umask
from workbench.storage.weights import load_weights_file, write_weights_file

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: pages load faster
    import torch

__all__ = ["ACTIVE", "FINISHED", "REPAIR", "STATUSES", "Store", "default_home"]

RUN_FILE_SUFFIXES = (".pt", ".state.pt", ".manifest.json")  # in checkpoints/, per run
# Fields whose every change rewrites the manifest (a status change does too): what `store
# repair` must give back as it was, privacy above all.
MANIFEST_FIELDS = frozenset(
    {"owner", "private", "name", "tags", "suite", "variant", "probe_saved_at"}
)
log = logging.getLogger("kdwb.store")


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def default_home() -> Path:
    return Path(os.environ.get("KDWB_HOME") or Path.cwd() / "cache")


def new_id(prefix: str = "") -> str:
    """Sortable, unique: ``20261127-181501-3f9a2c``."""
    return prefix + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class Store:
    """Run records and artifacts. Cheap to create; every method is thread- and process-safe."""

    def __init__(self, home: str | Path | None = None, *, rebuilding: bool = False):
        """Open (or create) the store at ``home``. A missing or empty run index next to run
        files raises StoreError (``rebuilding=True`` is for ``store repair``, which refills it);
        on a full disk the store opens read-only (``read_only`` then holds the reason)."""
        self.home = Path(home) if home is not None else default_home()
        self.read_only: StoreError | None = None
        private_umask()
        try:
            for folder in (self.home, self.home / "store", self.home / "checkpoints"):
                private_folder(folder)
        except OSError as exc:
            raise_storage(exc, self.home, "creating the run store")
        if not rebuilding:
            refuse_lost_index(self.home)
        try:
            db: Any = diskcache.Cache(
                str(self.home / "store"), size_limit=2**40, eviction_policy="none"
            )
        except STORAGE_ERRORS as exc:
            error = storage_error(exc, self.home, "opening the run store")
            if error is None:
                raise
            if not is_disk_full(exc, self.home) or not self.db_path.exists():
                raise error from exc
            self.read_only = full_disk_error(self.home, "writing to it")
            db = ReadOnlyIndex(self.home / "store", self.read_only)
            log.info("the run store is open read-only: %s", self.read_only)
        self._db = GuardedIndex(db, self.home)
        self._index_file = _file_identity(self.db_path)

    @property
    def db_path(self) -> Path:
        return self.home / "store" / DB_NAME

    def close(self) -> None:
        self._db.close()

    def index_replaced(self) -> bool:
        """Whether the index file this store opened was moved or replaced since (``store
        repair`` moves a damaged one aside): its writes would then go to a file nobody reads."""
        return self.read_only is None and _file_identity(self.db_path) != self._index_file

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One store transaction (SQLite ``BEGIN IMMEDIATE``): reads and writes in it are
        atomic with respect to every other process; re-entrant in one thread."""
        return self._db.transact()

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
        search: str | None = None,
        trial: int | None = None,
    ) -> str:
        """Record a new run (``owner``: the user it belongs to; ``private``: seen by its owner
        and admins only, see ``workbench.lab.access``; ``search``, ``trial``: the search and
        trial it belongs to, ``workbench.search``); returns its id."""
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
            "host": HOST,
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
            "search": search,
            "trial": trial,
        }
        with self._db.transact():
            self._db.set(f"run:{run_id}", record)
            active_runs.index_status(self._db, run_id, status)
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
                active_runs.index_status(self._db, run_id, record["status"])
        if fields.get("status") in FINISHED or MANIFEST_FIELDS & fields.keys():
            self._write_manifest_quietly(run_id)  # a final state, or what repair must restore
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
                active_runs.index_status(self._db, run_id, record["status"])
        if "status" in fields or MANIFEST_FIELDS & fields.keys():  # keep the manifest current
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
        index = (
            active_runs.active_index(self._db, read_only=self.read_only is not None)
            if wanted and wanted <= set(ACTIVE)
            else None
        )
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

    # ------------------------------------------------------------------ active runs (active_runs.py)
    def rebuild_active_index(self) -> None:
        """Drop the index of active runs; the next listing builds it again (``store repair``
        calls this after writing records itself)."""
        self._db.delete(ACTIVE_INDEX)

    def delete_run(self, run_id: str) -> None:
        with self._db.transact():
            self._db.delete(f"run:{run_id}")
            active_runs.index_status(self._db, run_id, None)
        for prefix in ("epochs", "probe", "cancel"):
            self._db.delete(f"{prefix}:{run_id}")
        history.delete_chunks(self._db, f"history:{run_id}")
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
    def set_history(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Store the whole history of a run, replacing any (``workbench.storage.history``)."""
        history.set_history(self._db, run_id, rows)

    def save_history_tail(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Store a history that only grew since the last call: rewrites its last chunk."""
        history.save_history_tail(self._db, run_id, rows)

    def history(self, run_id: str) -> list[dict[str, Any]]:
        return history.read_history(self._db, self.home, run_id)

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
    def find_teacher(self, key: str) -> str | None:
        """The completed teacher run registered under ``key`` (``training.teachers.teacher_key``:
        the recipe's fingerprint and the split version), if it still has its weights."""
        run_id = self._db.get(f"teacher:{key}")
        if run_id and self.has_run(run_id) and self.weights_path(run_id).exists():
            return run_id
        return None

    def set_teacher(self, key: str, run_id: str) -> None:
        self._db.set(f"teacher:{key}", run_id)

    # ------------------------------------------------------------------ suites
    def save_suite(self, suite: dict[str, Any]) -> None:
        self._db.set(f"suite:{suite['id']}", suite)
        try:  # a copy beside the run manifests, from which `store repair` restores it
            write_json_atomic(self.suite_manifest_path(suite["id"]), suite)
        except OSError as exc:
            raise_storage(exc, self.home, "writing the suite manifest")

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

    # ------------------------------------------------------------------ final weights
    def weights_path(self, run_id: str) -> Path:
        return self.home / "checkpoints" / f"{run_id}.pt"

    def save_weights(self, run_id: str, state_dict: dict[str, torch.Tensor]) -> Path:
        """Save the run's final weights (``workbench.storage.weights``); StoreError on failure."""
        path = self.weights_path(run_id)
        try:
            write_weights_file(path, state_dict)
        except OSError as exc:
            raise_storage(exc, self.home, f"saving the checkpoint of run {run_id}")
        return path

    def load_weights(self, run_id: str) -> dict[str, torch.Tensor]:
        return load_weights_file(self.weights_path(run_id), run_id=run_id)

    # ------------------------------------------------------------------ manifests
    def manifest_path(self, run_id: str) -> Path:
        return self.home / "checkpoints" / f"{run_id}.manifest.json"

    def write_manifest(self, run_id: str) -> Path:
        """Write the run's manifest (record, history, epochs and probe as JSON) atomically
        beside its checkpoint; ``store repair`` rebuilds the index from these. Raises
        StoreError."""
        manifest = {
            "format": MANIFEST_FORMAT,
            "written_at": time.time(),
            "record": self.get_run(run_id),
            "history": self.history(run_id),
            "epochs": self.epochs(run_id),
        }
        probe = self._db.get(f"probe:{run_id}")
        if probe is not None:
            manifest["probe"] = probe
        path = self.manifest_path(run_id)
        try:
            write_json_atomic(path, manifest)
        except OSError as exc:
            raise_storage(exc, self.home, f"writing the manifest of run {run_id}")
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
