"""A run's metric history in the store's index, kept in chunks of ``HISTORY_CHUNK`` rows
(keys ``history:<run_id>:<n>``), so that a logged step rewrites one chunk instead of the whole
(growing) history: a long run costs O(steps), not O(steps^2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.errors import StoreError
from workbench.storage.failures import REPAIR

__all__ = ["HISTORY_CHUNK", "delete_chunks", "read_history", "save_history_tail", "set_history"]

HISTORY_CHUNK = 256


def set_history(db: Any, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Store the whole history of a run (replacing any). The new chunks are written
    before the old ones beyond them are dropped: a failed write loses no rows."""
    for start in range(0, len(rows), HISTORY_CHUNK):
        db.set(f"history:{run_id}:{start // HISTORY_CHUNK}", rows[start : start + HISTORY_CHUNK])
    index = -(-len(rows) // HISTORY_CHUNK)
    while db.delete(f"history:{run_id}:{index}"):
        index += 1


def save_history_tail(db: Any, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Store a history that only grew since the last call: rewrites its last chunk."""
    if rows:
        last = (len(rows) - 1) // HISTORY_CHUNK
        chunk = rows[last * HISTORY_CHUNK : (last + 1) * HISTORY_CHUNK]
        db.set(f"history:{run_id}:{last}", chunk)


def read_history(db: Any, home: Path, run_id: str) -> list[dict[str, Any]]:
    """Every row of the run's history; StoreError when a chunk is listed but its file is gone."""
    rows: list[dict[str, Any]] = []
    index = 0
    while (chunk := db.get(f"history:{run_id}:{index}")) is not None:
        rows.extend(chunk)
        index += 1
    if f"history:{run_id}:{index}" in db:  # listed, but its value file is gone
        raise StoreError(
            f"the metric history of run {run_id} is damaged: the file of rows from "
            f"{index * HISTORY_CHUNK} on is missing under {home / 'store'}; run "
            f"`{REPAIR}` to restore it from the run's manifest"
        )
    return rows


def delete_chunks(db: Any, prefix: str) -> None:
    index = 0
    while db.delete(f"{prefix}:{index}"):
        index += 1
