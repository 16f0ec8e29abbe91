"""The run store: run records, metric history, probes, suites and checkpoints on disk.

Everything lives under one home folder: ``$KDWB_HOME`` when set, else ``./cache``.
Records, histories and probes are kept in a diskcache ``Cache`` (SQLite underneath), which is
safe to share between threads and processes; checkpoints are plain ``.pt`` files beside it,
written to a temporary name and renamed so that a reader never sees half a file.

The queue of runs lives here too (the records whose status is ``queued``); claiming, heartbeats
and the recovery of runs whose process died are ``workbench.runqueue``'s.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import torch

from workbench.errors import CheckpointError

__all__ = ["ACTIVE", "FINISHED", "STATUSES", "Store", "default_home"]

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "diverged", "interrupted")
ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled", "diverged", "interrupted")
_HOST = socket.gethostname()
HISTORY_CHUNK = 256


def default_home() -> Path:
    return Path(os.environ.get("KDWB_HOME") or Path.cwd() / "cache")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def new_id(prefix: str = "") -> str:
    """Sortable, unique: ``20261127-181501-3f9a2c``."""
    return prefix + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class Store:
    """Run records and artifacts. Cheap to create; every method is thread- and process-safe."""

    def __init__(self, home: str | Path | None = None):
        self.home = Path(home) if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "checkpoints").mkdir(exist_ok=True)
        self._db = diskcache.Cache(
            str(self.home / "store"), size_limit=2**40, eviction_policy="none"
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
    ) -> str:
        run_id = new_id()
        record = {
            "id": run_id,
            "name": name,
            "tags": list(tags),
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
        self._db.set(f"run:{run_id}", record)
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
        return record

    def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        role: str | None = None,
        suite: str | None = None,
    ) -> list[dict[str, Any]]:
        """All matching records, newest first."""
        wanted = {status} if isinstance(status, str) else set(status) if status else None
        records = []
        for key in self._db.iterkeys():
            if not (isinstance(key, str) and key.startswith("run:")):
                continue
            record = self._db.get(key)
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

    def delete_run(self, run_id: str) -> None:
        for prefix in ("run", "epochs", "probe", "cancel"):
            self._db.delete(f"{prefix}:{run_id}")
        self._delete_chunks(f"history:{run_id}")
        self.checkpoint_path(run_id).unlink(missing_ok=True)

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
        """Store the whole history of a run (replacing any)."""
        self._delete_chunks(f"history:{run_id}")
        for start in range(0, len(rows), HISTORY_CHUNK):
            self._db.set(
                f"history:{run_id}:{start // HISTORY_CHUNK}", rows[start : start + HISTORY_CHUNK]
            )

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

    def probe(self, run_id: str) -> dict[str, Any] | None:
        return self._db.get(f"probe:{run_id}")

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

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, run_id: str) -> Path:
        return self.home / "checkpoints" / f"{run_id}.pt"

    def save_checkpoint(self, run_id: str, state_dict: dict[str, torch.Tensor]) -> Path:
        path = self.checkpoint_path(run_id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, run_id: str) -> dict[str, torch.Tensor]:
        return load_state_dict(self.checkpoint_path(run_id))

    # ------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def lock(self, name: str, *, expire: float = 6 * 3600, poll: float = 0.2) -> Iterator[None]:
        """A lock shared by every thread and process using this store.

        ``expire`` frees a lock whose holder died; ``poll`` keeps waiting cheap (diskcache's own
        Lock spins every millisecond, which would steal a core from a training run).
        """
        key = f"lock:{name}"
        token = f"{_HOST}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex}"
        while not self._db.add(key, token, expire=expire):
            time.sleep(poll)
        try:
            yield
        finally:
            if self._db.get(key) == token:
                self._db.delete(key)

    # ------------------------------------------------------------------ key/value extras
    def get(self, key: str, default: Any = None) -> Any:
        return self._db.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._db.set(key, value)

    def delete(self, key: str) -> None:
        self._db.delete(key)

    def values(self, prefix: str) -> list[Any]:
        """The values of every key that starts with ``prefix``."""
        found = (
            self._db.get(k)
            for k in self._db.iterkeys()
            if isinstance(k, str) and k.startswith(prefix)
        )
        return [v for v in found if v is not None]


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; a clear CheckpointError otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, non-tensor payloads
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
