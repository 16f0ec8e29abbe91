"""Locks shared by every thread and process of one store, that cannot strand anyone.

A lock is one key of the store's database, ``lock:<name>``, whose value names its holder: host,
pid (with the process's start time, so that a reused pid is not taken for the holder), thread,
a description written for people ("run X, which is training teacher resnet18") and a heartbeat
that a background thread refreshes while the lock is held (its age is read on one monotonic
clock, ``workbench.storage.liveness``, so a process whose wall clock is off takes no live lock). A waiter takes the lock over at once
when its holder is dead (same host and pid namespace, process gone) or silent (no heartbeat for ``stale_after``
seconds: another host, a hung or stopped process).

Nothing waits silently: a wait longer than ``report_after`` seconds is logged (logger
``kdwb.store``: WARNING, which the CLI prints, or INFO when ``on_wait`` is given) and passed to
``on_wait(message)``, again when the holder changes and every ``report_every`` seconds; so is a
takeover. Waiting costs one indexed SQLite read per poll (every ``poll`` seconds,
every second after the first report).

There is no fencing (Kleppmann, "How to do distributed locking", 2016): a holder that was only
stopped (SIGSTOP, a suspended machine) and resumes after its lock was taken over learns it from
its heartbeat (``LockHandle.lost`` and an error in the log) but is not stopped from acting.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from workbench.errors import StoreError
from workbench.storage.liveness import beat_age, beat_fields

__all__ = ["HOST", "LockHandle", "acquire", "describe_holder", "live_holder", "process_alive"]

log = logging.getLogger("kdwb.store")
HOST = socket.gethostname()  # the one host name of the store: locks, run records, the queue
try:  # containers may share a host name but not their process ids
    _PID_NAMESPACE: str | None = os.readlink("/proc/self/ns/pid")
except OSError:
    _PID_NAMESPACE = None

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
REPORT_AFTER_S = 3.0
REPORT_EVERY_S = 30.0


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of ``pid`` from ``/proc`` (Linux), None when unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()  # the command name may hold spaces and ')'
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def process_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not) and, when ``started`` is
    given, is the process that started then (not a later one that reused the pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        return state not in ("Z", "X") and (started is None or start == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


def describe_holder(holder: Any, now: float | None = None) -> str:
    """A holder for people: its description, then who and how recently it was heard from."""
    if not isinstance(holder, dict):  # a lock of the old format: "host:pid:thread:token"
        return f"an older version's lock ({holder!r})"
    now = time.time() if now is None else now
    what = holder.get("description") or "an unnamed holder"
    return (
        f"{what} (pid {holder.get('pid')} on {holder.get('host')}, thread "
        f"{holder.get('thread')}, held for {now - holder.get('acquired_at', now):.0f} s, "
        f"heartbeat {now - holder.get('heartbeat', now):.0f} s ago)"
    )


def _why_stale(holder: Any, stale_after: float) -> str | None:
    """Why ``holder`` no longer holds its lock, or None while it does."""
    if not isinstance(holder, dict):
        host, _, rest = str(holder).partition(":")
        pid = rest.partition(":")[0]
        if host == HOST and pid.isdigit() and not process_alive(int(pid)):
            return "its process is gone"
        return None  # another host: the old format expires by itself
    same_host = holder.get("host") == HOST and holder.get("pid_namespace") == _PID_NAMESPACE
    if same_host and not process_alive(holder.get("pid", -1), holder.get("pid_started")):
        return "its process is gone"
    silent_for = beat_age(holder, holder.get("token")) or 0.0  # not two wall clocks compared
    limit = max(stale_after, 4 * float(holder.get("heartbeat_s", 0.0)))
    if silent_for > limit:
        return f"its heartbeat stopped {silent_for:.0f} s ago (limit {limit:.0f} s)"
    return None


def live_holder(get: Callable[[str], Any], name: str, stale_after: float = STALE_AFTER_S) -> Any:
    """The holder of lock ``name`` read with ``get`` (``Store.get``) while it holds it; None
    when the lock is free or its holder is dead or silent (the next ``acquire`` takes it)."""
    holder = get(f"lock:{name}")
    if holder is None or _why_stale(holder, stale_after):
        return None
    return holder


class LockHandle:
    """A held lock: its heartbeat thread runs until ``release()``. ``describe(text)`` changes
    what waiters are told (e.g. once the run that trains under the lock has an id)."""

    def __init__(self, db: Any, name: str, holder: dict[str, Any], heartbeat: float):
        self.db, self.name, self.key = db, name, f"lock:{name}"
        self.token = holder["token"]
        self.heartbeat = heartbeat
        self.lost = False  # set when another process took the lock over
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(
            target=self._beat, name=f"kdwb-lock-heartbeat {name}", daemon=True
        )
        self._thread.start()

    def _update(self, **fields: Any) -> bool:
        """Change our record; False (and ``lost``) when the lock is no longer ours."""
        with self.db.transact():
            current = self.db.get(self.key)
            if not isinstance(current, dict) or current.get("token") != self.token:
                self.lost = True
                return False
            current.update(fields)
            self.db.set(self.key, current)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not self._update(**beat_fields()):
                    log.error(
                        "lock %s was taken over by another process while this one held it "
                        "(its heartbeat was late by more than the limit); the work done under "
                        "it may be done twice",
                        self.name,
                    )
                    return
                self._warned = False
            except Exception as exc:  # a full disk, a busy database: keep trying
                if not self._warned:
                    log.warning("could not refresh the heartbeat of lock %s: %s", self.name, exc)
                    self._warned = True

    def describe(self, description: str) -> None:
        self._update(description=description)

    def release(self) -> None:
        """Stop the heartbeat and free the lock if it is still ours; never raises."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            with self.db.transact():
                current = self.db.get(self.key)
                if isinstance(current, dict) and current.get("token") == self.token:
                    self.db.delete(self.key)
        except Exception as exc:  # the holder record then looks dead or silent to waiters
            log.warning("could not release lock %s (%s); waiters will take it over", self.name, exc)

    def __enter__(self) -> LockHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_acquire(
    db: Any, key: str, mine: dict[str, Any], stale_after: float
) -> tuple[bool, Any, str | None]:
    """``(acquired, previous holder, why it was taken over)``."""
    now = time.time()
    mine.update(acquired_at=now, **beat_fields())  # fresh: a long wait must not look silent
    if db.add(key, mine):  # free: one INSERT
        return True, None, None
    with db.transact():
        current = db.get(key)
        why = None if current is None else _why_stale(current, stale_after)
        if current is None or why:
            db.set(key, mine)
            return True, current, why
    return False, current, None


def acquire(
    db: Any,
    name: str,
    *,
    description: str = "",
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.2,
    heartbeat: float = HEARTBEAT_S,
    stale_after: float = STALE_AFTER_S,
    report_after: float = REPORT_AFTER_S,
    report_every: float = REPORT_EVERY_S,
) -> LockHandle:
    """Take lock ``name`` in ``db`` (a ``diskcache.Cache``), waiting as long as a live holder
    holds it; see the module docstring. Release the handle (or use it in ``with``)."""
    key = f"lock:{name}"
    now = time.time()
    mine = {
        "token": uuid.uuid4().hex,
        "host": HOST,
        "pid": os.getpid(),
        "pid_started": process_start(os.getpid()),
        "pid_namespace": _PID_NAMESPACE,
        "thread": threading.current_thread().name,
        "thread_id": threading.get_ident(),
        "description": description,
        "acquired_at": now,
        **beat_fields(),
        "heartbeat_s": heartbeat,
    }
    level = logging.INFO if on_wait else logging.WARNING  # on_wait shows it: no echo on stderr
    started = time.monotonic()
    reported_at: float | None = None
    reported_token = None
    while True:
        acquired, current, why = _try_acquire(db, key, mine, stale_after)
        if acquired:
            if current is not None:
                message = f"took over lock {name} from {describe_holder(current)}: {why}"
                log.log(level, message)
                if on_wait:
                    on_wait(message)
            return LockHandle(db, name, mine, heartbeat)
        if (
            isinstance(current, dict)
            and current.get("host") == HOST
            and current.get("pid") == os.getpid()
            and current.get("thread_id") == threading.get_ident()
        ):
            raise StoreError(
                f"lock {name} is already held by this thread ({describe_holder(current)}); "
                "it is not re-entrant"
            )
        waited = time.monotonic() - started
        token = current.get("token") if isinstance(current, dict) else current
        if waited >= report_after and (
            reported_at is None
            or token != reported_token
            or time.monotonic() - reported_at >= report_every
        ):
            message = f"waiting {waited:.0f} s for lock {name}, held by {describe_holder(current)}"
            log.log(level, message)
            if on_wait:
                on_wait(message)
            reported_at, reported_token = time.monotonic(), token
        time.sleep(poll if waited < report_after else max(poll, 1.0))
