"""Searches driven from the app: one daemon thread per search in this process.

``python -m workbench search`` drives a search in its own process; the Search page starts one
here instead (the app's job manager trains the queued trials). Whoever drives a search holds
its store lock, so ``driver_of`` sees a driver in any process, and a search is never driven
twice. A driver that stops on an error stores the error in the search's record (``error``),
for the page to show; starting it again clears it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.search.driver import Submit, drive
from workbench.storage.locks import describe_holder, live_holder

if TYPE_CHECKING:
    from workbench.lab.identity import User
    from workbench.lab.settings import UserQuotas
    from workbench.storage.store import Store

__all__ = ["driver_of", "start_driver", "stop_driver"]

_DRIVERS: dict[str, tuple[threading.Thread, threading.Event]] = {}
_GUARD = threading.Lock()


def driver_of(store: Store, search_id: str) -> str | None:
    """Who drives the search now, in words (``host pid ...``), or None."""
    holder = live_holder(store.get, f"search:{search_id}")
    return None if holder is None else describe_holder(holder)


def start_driver(
    store: Store,
    search_id: str,
    *,
    user: User,
    quotas: UserQuotas | None = None,
    submit: Submit | None = None,
) -> bool:
    """Drive the search in a daemon thread of this process, and return once that driver holds
    the search's lock (so ``driver_of`` names it) or has stopped; False when it is driven
    already (here or by another process). ``submit``: how the trials' runs are queued (the app's job
    manager's ``submit_many`` for ``user``, which starts them at once; default: the submit
    gate with ``quotas``). Refuses, in one line, a user who may not change it."""
    from workbench.lab.access import check_change
    from workbench.search.searches import get_search, save_search

    search = get_search(store, search_id)
    check_change(user, search, "run", what="search")
    with _GUARD:
        running = _DRIVERS.get(search_id)
        if (running and running[0].is_alive()) or driver_of(store, search_id):
            return False
        save_search(store, {**search, "error": None})
        stop, held = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=_drive,
            args=(store.home, search_id, user, quotas, stop, submit, held),
            name=f"kdwb-search {search_id}",
            daemon=True,
        )
        _DRIVERS[search_id] = (thread, stop)
        thread.start()
    while not held.wait(0.05) and thread.is_alive():
        pass
    return True


def stop_driver(store: Store, search_id: str, *, user: User) -> bool:
    """Ask this process's driver of the search to stop at its next poll (its runs go on);
    False when this process does not drive it. Refuses, in one line, a user who may not
    change the search."""
    from workbench.lab.access import check_change
    from workbench.search.searches import get_search

    check_change(user, get_search(store, search_id), "stop", what="search")
    with _GUARD:
        running = _DRIVERS.get(search_id)
    if running is None or not running[0].is_alive():
        return False
    running[1].set()
    return True


def _drive(
    home: Any,
    search_id: str,
    user: User,
    quotas: UserQuotas | None,
    stop: threading.Event,
    submit: Submit | None,
    held: threading.Event,
) -> None:
    from workbench.search.searches import get_search, save_search
    from workbench.storage.store import Store

    store = Store(home)
    try:
        drive(store, search_id, user=user, quotas=quotas, stop=stop, submit=submit, held=held)
    except WorkbenchError as exc:
        save_search(store, {**get_search(store, search_id), "error": str(exc)})
    finally:
        store.close()
