"""The run queue, kept in the store: queued runs, claims, heartbeats and recovery.

The queue is not an object in memory: it is the run records whose status is ``queued``, so it
outlives every process. Anything that executes runs (the app's in-process threads, a
``python -m workbench worker`` process, later a cluster) does four things only:

- ``claim_next(store, executor, devices)`` takes the oldest queued run it can execute, in one
  store transaction, so every run is executed exactly once however many executors compete;
- it runs ``loop.run(config, store, stop=..., run_id=...)`` on it;
- ``heartbeat(store, executor, run_ids)`` every few seconds while it runs;
- it honours a cancel (``cancel_requested``, or the stop flag it passed in).

Each claim increments the run's ``claims``, the fencing token every write of the training
checks (``workbench.storage.fencing``): a holder that lost its claim cannot write. Liveness is
elapsed time on one clock (``workbench.storage.liveness``), never two processes' wall clocks
compared: a worker whose clock runs ahead takes nobody's live run.

Crash-only (Candea and Fox, "Crash-Only Software", HotOS 2003): there is no shutdown path to
trust. ``recover`` runs whenever an executor starts or polls: a run claimed by a holder that is
dead (its process is gone from this host) or silent (no heartbeat for ``SILENT_AFTER_S``) is
marked ``interrupted`` and, unless auto-resume is off, queued again once; the engine resumes it
from its last epoch checkpoint. ``KDWB_SILENT_AFTER_S`` changes the silence limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import WorkbenchError
from workbench.runs.queue_plan import Place, queue_plan
from workbench.storage.liveness import beat_age, beat_fields, silent_after_s
from workbench.storage.locks import HOST, process_alive
from workbench.storage.store import Store, new_id

__all__ = [
    "Executor",
    "HEARTBEAT_S",
    "RESUMABLE",
    "SILENT_AFTER_S",
    "auto_resume_enabled",
    "cancel",
    "claim",
    "claim_next",
    "device_key",
    "fair_order",
    "heartbeat",
    "holder_alive",
    "live_workers",
    "plan",
    "recover",
    "register_worker",
    "requeue",
    "served_times",
    "silent_after",
    "unregister_worker",
    "worker_slots",
]

HEARTBEAT_S = 2.0  # executors refresh their claims this often
SILENT_AFTER_S = 60.0  # a holder with no heartbeat for this long is taken for dead (default)
RESUMABLE = ("interrupted", "failed", "cancelled")
AUTO_RESUME_ENV = "KDWB_AUTO_RESUME"


def auto_resume_enabled() -> bool:
    """Whether a run whose process died is queued again once (``KDWB_AUTO_RESUME=0``: no)."""
    return os.environ.get(AUTO_RESUME_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def silent_after() -> float:
    """Seconds of silence after which a holder is taken for dead (``KDWB_SILENT_AFTER_S``)."""
    return silent_after_s(SILENT_AFTER_S)


def device_key(device: str) -> str:
    """The slot a run occupies: ``cpu`` or ``cuda:N`` (``auto`` resolved on this machine)."""
    if device == "auto":
        import torch  # here, not at the top: the pages import the queue and must stay light

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return "cuda:0"
    return device


@dataclass(frozen=True)
class Executor:
    """Who holds a claim: an id, the host and the process (``kind``: app, worker, cli)."""

    kind: str
    id: str = field(default="")
    host: str = field(default=HOST)
    pid: int = field(default_factory=os.getpid)

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", new_id(f"{self.kind}-"))

    def claim_fields(self) -> dict[str, Any]:
        return {"claimed_by": self.id, "host": self.host, "pid": self.pid, **beat_fields()}


def holder_alive(record: dict[str, Any]) -> bool:
    """Whether the process that claimed ``record`` may still be running it: it beat within
    ``silent_after()`` (by the heartbeat's age, ``liveness.beat_age``) and, on this host, its
    process exists (a zombie, killed and not yet reaped, is dead)."""
    holder = (record.get("claimed_by") or record.get("id"), record.get("claims"))
    age = beat_age(record, holder)
    if age is not None and age > silent_after():
        return False
    if record.get("host") == HOST:
        return process_alive(record.get("pid"))
    return age is not None  # another host: alive while it beats


# ------------------------------------------------------------------ claims
def _owner_running(store: Store, owner: str) -> int:
    return sum(1 for r in store.list_runs(status="running") if (r.get("owner") or "") == owner)


def claim(
    store: Store,
    run_id: str,
    executor: Executor,
    *,
    max_running: int | None = None,
    statuses: tuple[str, ...] = ("queued",),
) -> dict[str, Any] | None:
    """Take the queued run ``run_id`` for ``executor``; None when someone else was first, or
    when its owner already has ``max_running`` runs running (checked in the same transaction,
    so competing executors never start one more than the limit). ``statuses``: what the run may
    be taken from (a teacher a dead process left ``interrupted`` is taken back by the next
    student that needs it; ``claim_new`` takes the run it has just created)."""

    def may_start(record: dict[str, Any]) -> bool:
        if record["status"] not in statuses:
            return False
        return max_running is None or _owner_running(store, record.get("owner") or "") < max_running

    claimed = store.update_run_if(
        run_id,
        may_start,
        status="running",
        **executor.claim_fields(),
        claimed_at=time.time(),
        claims=lambda r: (r.get("claims") or 0) + 1,  # the claim's fencing token
    )
    if claimed is not None:
        store.set(f"served:{claimed.get('owner') or ''}", claimed["claimed_at"])
    return claimed


def claim_new(store: Store, config: Any, executor: Executor, **fields: Any) -> str:
    """Create a run already claimed by ``executor``, which trains it itself (the CLI, a
    teacher a student needs): created ``running``, so no other executor ever sees it queued."""
    run_id = store.create_run(config, status="running", **fields)
    claim(store, run_id, executor, statuses=("running",))
    return run_id


def fair_order(
    queued: Iterable[dict[str, Any]],
    running: Iterable[dict[str, Any]],
    served: dict[str, float],
    max_running: int | None = None,
) -> list[dict[str, Any]]:
    """The queued runs in the order they should start: round-robin across owners.

    The next run belongs to the owner with the fewest runs running, then the one served least
    recently (``served``: owner -> when their last run started), then the one who queued
    first; each owner's own runs start oldest first. Owners already at ``max_running`` are
    left out (their runs wait). With A's 60 runs queued, B's one run is next as soon as a slot
    frees: B runs nothing and was served before A (or never).
    """
    served = dict(served)  # changed below as runs are placed; the caller's stays as it was
    busy: dict[str, int] = {}
    for record in running:
        owner = record.get("owner") or ""
        busy[owner] = busy.get(owner, 0) + 1
    mine: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(queued, key=lambda r: r["created_at"]):
        mine.setdefault(record.get("owner") or "", []).append(record)
    order: list[dict[str, Any]] = []
    while mine:
        ready = [o for o in mine if max_running is None or busy.get(o, 0) < max_running]
        if not ready:
            break
        owner = min(
            ready, key=lambda o: (busy.get(o, 0), served.get(o, 0.0), mine[o][0]["created_at"])
        )
        order.append(mine[owner].pop(0))
        busy[owner] = busy.get(owner, 0) + 1  # as if it started now: the next goes elsewhere
        served[owner] = float("inf")
        if not mine[owner]:
            del mine[owner]
    return order


def served_times(store: Store, owners: Iterable[str] | None = None) -> dict[str, float]:
    """owner -> when their last run was claimed (the ``served:`` keys ``claim`` writes);
    ``owners``: only theirs, read key by key instead of scanning every key of the store (an
    owner never served is left out, as ``fair_order`` reads it: 0)."""
    if owners is not None:
        found = {owner: store.get(f"served:{owner}") for owner in set(owners)}
        return {owner: float(t) for owner, t in found.items() if t is not None}
    return {key.split(":", 1)[1]: float(store.get(key) or 0.0) for key in store.keys("served:")}


def claim_next(
    store: Store,
    executor: Executor,
    devices: Iterable[str],
    records: list | None = None,
    *,
    max_running: int | None = None,
) -> dict[str, Any] | None:
    """Claim the next queued run, in ``fair_order``, that runs on one of ``devices`` (device
    keys); ``max_running``: the per-user limit of runs running at once (None: no limit)."""
    devices = set(devices)
    records = records if records is not None else store.list_runs(status=("queued", "running"))
    queued = [r for r in records if r["status"] == "queued"]
    running = [r for r in records if r["status"] == "running"]
    served = served_times(store, {r.get("owner") or "" for r in queued})  # all fair_order reads
    for record in fair_order(queued, running, served, max_running):
        if device_key(record["config"].get("device", "auto")) not in devices:
            continue
        claimed = claim(store, record["id"], executor, max_running=max_running)
        if claimed is not None:
            return claimed
    return None


def heartbeat(store: Store, executor: Executor, run_ids: Iterable[str]) -> None:
    """Refresh the claims ``executor`` holds (a run that moved on is left alone)."""
    beat = beat_fields()
    for run_id in run_ids:
        store.update_run_if(
            run_id,
            lambda r: r["status"] == "running" and r.get("claimed_by") == executor.id,
            **beat,
        )


# ------------------------------------------------------------------ user actions
def cancel(store: Store, run_id: str) -> str:
    """Cancel a run: a queued run at once (returns ``cancelled``); a running one is asked to
    stop through the store, which its executor polls (returns ``requested``)."""
    done = store.update_run_if(run_id, lambda r: r["status"] == "queued", status="cancelled")
    if done is not None:
        return "cancelled"
    record = store.get_run(run_id)
    if record["status"] != "running":
        raise WorkbenchError(
            f"run {run_id} is {record['status']}: only queued or running runs cancel"
        )
    store.request_cancel(run_id)
    return "requested"


def requeue(store: Store, run_id: str) -> dict[str, Any]:
    """Queue an interrupted, failed or cancelled run again; the engine resumes it from its last
    checkpoint (or starts it over when it never finished an epoch)."""
    store.clear_cancel(run_id)
    record = store.update_run_if(
        run_id,
        lambda r: r["status"] in RESUMABLE,
        status="queued",
        error=None,
        claimed_by=None,
    )
    if record is None:
        status = store.get_run(run_id)["status"]
        raise WorkbenchError(
            f"run {run_id} is {status}: only {', '.join(RESUMABLE)} runs can be resumed"
        )
    return record


# ------------------------------------------------------------------ recovery
def recover(store: Store, *, auto_resume: bool | None = None) -> list[str]:
    """Mark runs whose holder is dead or silent as ``interrupted``; queue each again once
    (``auto_resumes`` counts it) unless ``auto_resume`` is off. Returns the ids it touched."""
    auto_resume = auto_resume_enabled() if auto_resume is None else auto_resume
    touched = []
    for record in store.list_runs(status="running"):
        if holder_alive(record):
            continue
        again = auto_resume and (record.get("auto_resumes") or 0) < 1
        message = "the process running this run stopped before it finished"
        claims = record.get("claims")
        changed = store.update_run_if(
            record["id"],
            lambda r, claims=claims: (
                r["status"] == "running"
                and r.get("claims") == claims  # not claimed again meanwhile
                and not holder_alive(r)
            ),
            status="queued" if again else "interrupted",
            error=None if again else message,
            note=f"{message}; resumed automatically from its last checkpoint" if again else None,
            claimed_by=None,
            auto_resumes=(record.get("auto_resumes") or 0) + (1 if again else 0),
        )
        if changed is not None:
            touched.append(record["id"])
    return touched


# ------------------------------------------------------------------ worker registry
def register_worker(store: Store, executor: Executor, devices: dict[str, int]) -> None:
    """Announce (or refresh) a worker process: its devices and slots, with a heartbeat."""
    store.set(
        f"worker:{executor.id}",
        {
            "id": executor.id,
            "host": executor.host,
            "pid": executor.pid,
            "devices": dict(devices),
            **beat_fields(),
        },
    )


def unregister_worker(store: Store, executor: Executor) -> None:
    store.delete(f"worker:{executor.id}")


def worker_slots(store: Store) -> int:
    """Runs the live worker processes train at once, all devices together (0: none alive)."""
    return sum(sum((w.get("devices") or {}).values()) for w in live_workers(store))


def plan(
    store: Store, slots: int, max_running: int | None, records: list | None = None
) -> dict[str, Place]:
    """Each queued run's place in ``fair_order`` and estimated start (``queueplan``), for
    executors with ``slots`` in all; ``records``: the store's runs when just listed."""
    records = records if records is not None else store.list_runs()
    served = served_times(store)
    return queue_plan(records, slots, served, max_running=max_running, now=time.time())


def live_workers(store: Store) -> list[dict[str, Any]]:
    """Worker processes that beat recently (and, on this host, whose process exists)."""
    return [w for w in store.values("worker:") if holder_alive(w)]
