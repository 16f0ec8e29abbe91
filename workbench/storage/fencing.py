"""Writes to a run that hold only while the writer's claim does: fencing tokens.

Every claim of a run increments its ``claims`` counter (``workbench.runs.queue.claim``); the
executor that claimed it trains it with that number as its token. Each write the training
makes (history, epoch rows, training state, final weights, probe, record and status) goes
through ``FencedRun``, which checks in the same store transaction that the run is still
``running`` under that token. A holder that lost its claim (it was stopped past its silence
limit and another executor took the run over, or the index was replaced by ``store repair``)
cannot write; ``LostClaim`` stops its training, and it says so.

Kleppmann, "How to do distributed locking" (2016): a lock (here, a claim) is safe only if
the resource it protects rejects the writes of a holder whose lease expired.

Files written beside the index (training state, weights) are written to a temporary name
first; only their rename runs inside the checking transaction, so a stale holder's file never
replaces the new holder's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.storage.failures import raise_storage

if TYPE_CHECKING:
    from workbench.storage.store import Store

__all__ = ["FencedRun", "LostClaim"]


class LostClaim(Exception):
    """This process no longer holds the run it was training (not a ``WorkbenchError``: the run
    did not fail, it moved to another executor, whose record must not be touched)."""

    def __init__(self, run_id: str, token: int | None, why: str):
        self.run_id, self.token = run_id, token
        super().__init__(
            f"run {run_id}: this process lost its claim (claim {token}) because {why}; it "
            "stopped without writing, and the run's record is left to its current holder"
        )


def _why_lost(
    record: dict[str, Any] | None, token: int | None, statuses: tuple[str, ...]
) -> str | None:
    if record is None:
        return "the run was deleted"
    if record.get("claims") != token:
        return f"another executor claimed it since (claim {record.get('claims')})"
    if record.get("status") not in statuses:
        return f"it is {record.get('status')} now"
    return None


class FencedRun:
    """The writes of one claimed run, each checked against ``token`` (the run's ``claims``
    when it was claimed; None for a run created running and never claimed). ``unclaimed``: the
    caller trains a run it never claimed (a test, a notebook): queued counts as held too."""

    def __init__(self, store: Store, run_id: str, token: int | None, *, unclaimed: bool = False):
        self.store, self.run_id, self.token = store, run_id, token
        self.statuses = ("running", "queued") if unclaimed else ("running",)

    @classmethod
    def as_it_is(cls, store: Store, run_id: str) -> FencedRun:
        """For a run trained without a claim (a test, a benchmark): its claim as it is now,
        queued counting as held."""
        return cls(store, run_id, store.get_run(run_id).get("claims"), unclaimed=True)

    @contextlib.contextmanager
    def held(self) -> Iterator[dict[str, Any]]:
        """A store transaction in which the claim is checked: the record, or ``LostClaim``."""
        if self.store.index_replaced():
            raise LostClaim(self.run_id, self.token, "the run index was replaced under it")
        with self.store.transaction():
            record = self.store.get(f"run:{self.run_id}")
            why = _why_lost(record, self.token, self.statuses)
            if why is not None:
                raise LostClaim(self.run_id, self.token, why)
            yield record

    def check(self) -> None:
        with self.held():
            pass

    def update(self, **fields: Any) -> dict[str, Any]:
        """``Store.update_run`` while the claim holds (a final status included)."""
        with self.held():
            return self.store.update_run(self.run_id, **fields)

    def history_tail(self, rows: list[dict[str, Any]]) -> None:
        with self.held():
            self.store.save_history_tail(self.run_id, rows)

    def set_history(self, rows: list[dict[str, Any]]) -> None:
        with self.held():
            self.store.set_history(self.run_id, rows)

    def set_epochs(self, rows: list[dict[str, Any]]) -> None:
        with self.held():
            self.store.set_epochs(self.run_id, rows)

    def write_manifest(self) -> None:
        with self.held():
            self.store.write_manifest(self.run_id)

    def save_probe(self, probe: dict[str, Any]) -> None:
        with self.held():
            self.store.save_probe(self.run_id, probe)

    def replace_file(self, write: Callable[[Path], None], path: Path) -> None:
        """Write ``path`` through a temporary file (``write(tmp)``), renamed while the claim
        holds; the temporary file is removed whatever happens."""
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
        try:
            write(tmp)
            with self.held():
                os.replace(tmp, path)
        except OSError as exc:  # a full disk above all: the store's one line for it
            raise_storage(exc, self.store.home, f"writing {path.name} of run {self.run_id}")
        finally:
            tmp.unlink(missing_ok=True)
