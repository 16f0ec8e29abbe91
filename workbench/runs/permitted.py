"""What a user does to runs and suites, with the access rules checked where the data changes.

The pages, the CLI and ``JobManager`` call these, never the store's raw mutations, so that a
refused action is refused whoever asks (a hidden button is only a courtesy). Each function
reads the record, checks ``workbench.lab.access`` for ``user`` and then acts; a run the user may
not see is answered as if it did not exist (``KeyError: no run ...``), so a private run's id
reveals nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workbench.errors import WorkbenchError
from workbench.lab.access import AccessError, can_change, can_see, check_change, owner_of, visible
from workbench.lab.identity import User
from workbench.runs import queue as runqueue
from workbench.storage.store import ACTIVE, Store

__all__ = [
    "AccessError",
    "can_change",
    "cancel",
    "delete_run",
    "delete_suite",
    "get_run",
    "get_suite",
    "list_runs",
    "list_suites",
    "rename",
    "resume",
    "set_private",
    "set_suite_private",
    "shown",
]


def get_run(store: Store, run_id: str, user: User) -> dict[str, Any]:
    """The record of ``run_id`` if ``user`` may see it; ``KeyError`` otherwise."""
    record = store.get_run(run_id)
    if not can_see(user, record):
        raise KeyError(f"no run {run_id!r} in the store at {store.home}")
    return record


def shown(records: Iterable[dict[str, Any]], user: User, *, mine: bool = False) -> list[dict]:
    """The ``records`` ``user`` may see (``mine``: only theirs), in their order."""
    records = visible(records, user)
    return [r for r in records if owner_of(r) == user.name] if mine else records


def list_runs(store: Store, user: User, *, mine: bool = False, **filters: Any) -> list[dict]:
    """The runs ``user`` may see (``mine``: only theirs), newest first; ``filters`` as in
    ``Store.list_runs``."""
    return shown(store.list_runs(**filters), user, mine=mine)


def cancel(store: Store, run_id: str, user: User) -> str:
    """Cancel a queued run at once (``cancelled``) or ask a running one to stop
    (``requested``), as ``user``."""
    check_change(user, get_run(store, run_id, user), "cancel")
    return runqueue.cancel(store, run_id)


def resume(store: Store, run_id: str, user: User) -> dict[str, Any]:
    """Queue an interrupted, failed or cancelled run again (from its last checkpoint)."""
    check_change(user, get_run(store, run_id, user), "resume")
    return runqueue.requeue(store, run_id)


def delete_run(store: Store, run_id: str, user: User) -> None:
    """Delete a finished run with its checkpoint and files; an active one is cancelled first."""
    record = get_run(store, run_id, user)
    check_change(user, record, "delete")
    if record["status"] in ACTIVE:
        raise WorkbenchError(f"run {run_id} is {record['status']}: cancel it first, then delete it")
    store.delete_run(run_id)


def rename(
    store: Store,
    run_id: str,
    user: User,
    *,
    name: str | None = None,
    tags: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Change a run's name and/or tags."""
    from workbench.config.run_config import check_run_name

    record = get_run(store, run_id, user)
    check_change(user, record, "rename or tag" if name is not None else "tag")
    fields: dict[str, Any] = {}
    if name is not None:
        fields["name"] = check_run_name(name)
    if tags is not None:
        fields["tags"] = [check_run_name(t) for t in tags]
    return store.update_run(run_id, **fields)


def set_private(store: Store, run_id: str, user: User, private: bool) -> dict[str, Any]:
    """Make a run private (its owner and admins see it) or visible to the lab again."""
    check_change(user, get_run(store, run_id, user), "change the visibility of")
    return store.update_run(run_id, private=bool(private))


# ---------------------------------------------------------------------- suites
def get_suite(store: Store, suite_id: str, user: User) -> dict[str, Any]:
    suite = store.get_suite(suite_id)
    if not can_see(user, suite):
        raise KeyError(f"no suite {suite_id!r} in the store at {store.home}")
    return suite


def list_suites(store: Store, user: User, *, mine: bool = False) -> list[dict[str, Any]]:
    return shown(store.list_suites(), user, mine=mine)


def delete_suite(store: Store, suite_id: str, user: User) -> None:
    """Delete a suite's record (its runs stay, each deletable on its own)."""
    check_change(user, get_suite(store, suite_id, user), "delete", "suite")
    store.delete_suite(suite_id)


def set_suite_private(store: Store, suite_id: str, user: User, private: bool) -> dict[str, Any]:
    """Make a suite private (its owner and admins see it) or visible to the lab again; its runs
    follow (those ``user`` may change: a suite's runs are its owner's). Returns the suite."""
    suite = get_suite(store, suite_id, user)
    check_change(user, suite, "change the visibility of", "suite")
    for entry in suite.get("runs", []):
        if store.has_run(entry["run_id"]) and can_change(user, store.get_run(entry["run_id"])):
            store.update_run(entry["run_id"], private=bool(private))
    suite = {**suite, "private": bool(private)}
    store.save_suite(suite)
    return suite
