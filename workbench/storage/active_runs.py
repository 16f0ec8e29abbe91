"""Run statuses, and the index of the active ones (queued or running) in the store's index.

``ACTIVE_INDEX`` holds {run id: status} for every queued or running run. It changes in the
transaction that changes a record's status (``Store.create_run``, ``update_run``,
``update_run_if``, ``delete_run`` call ``index_status``), so it is never behind the records; a
store without one (older, or rebuilt by ``store repair``) gets it from a scan of every record,
in one transaction, on first use (``active_index``). The queue's every decision reads it: its
cost follows the queue, not every run the store ever kept.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import StoreError

__all__ = [
    "ACTIVE",
    "ACTIVE_INDEX",
    "FINISHED",
    "STATUSES",
    "active_index",
    "index_status",
    "scan_active",
]

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "diverged", "interrupted")
ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled", "diverged", "interrupted")
ACTIVE_INDEX = "index:active-runs"  # {run id: status} of the queued and running runs


def index_status(db: Any, run_id: str, status: str | None) -> None:
    """Inside the transaction that gave ``run_id`` its ``status`` (None: deleted)."""
    index = db.get(ACTIVE_INDEX)
    if index is None:  # not built yet: the first listing builds it from the records
        return
    if status in ACTIVE:
        if index.get(run_id) == status:
            return
        index[run_id] = status
    elif index.pop(run_id, None) is None:
        return
    db.set(ACTIVE_INDEX, index)


def active_index(db: Any, *, read_only: bool) -> dict[str, str] | None:
    """The index of active runs, built now when missing; None on a read-only store that has
    none (the caller then scans every record)."""
    index = db.get(ACTIVE_INDEX)
    if index is not None:
        return index
    try:
        with db.transact():  # writers wait: no status change slips past the scan
            index = db.get(ACTIVE_INDEX)
            if index is None:
                index = scan_active(db)
                db.set(ACTIVE_INDEX, index)
    except StoreError:
        if not read_only:
            raise
        return None
    return index


def scan_active(db: Any) -> dict[str, str]:
    index = {}
    for key in db.iterkeys():
        if isinstance(key, str) and key.startswith("run:"):
            record = db.get(key)
            if record is not None and record.get("status") in ACTIVE:
                index[record["id"]] = record["status"]
    return index
