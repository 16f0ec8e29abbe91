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
from workbench.search.driver import drive
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
    store: Store, search_id: str, *, user: User, quotas: UserQuotas | None = None
) -> bool:
    """Drive the search in a daemon thread of this process; False when it is driven already
    (here or by another process). Refuses, in one line, a user who may not change it."""
    from workbench.lab.access import check_change
    from workbench.search.searches import get_search

    search = get_search(store, search_id)
    check_change(user, search, "run", what="search")
    with _GUARD:
        running = _DRIVERS.get(search_id)
        if (running and running[0].is_alive()) or driver_of(store, search_id):
            return False
        store.set(f"search:{search_id}", {**search, "error": None})
        stop = threading.Event()
        thread = threading.Thread(
            target=_drive,
            args=(store.home, search_id, user, quotas, stop),
            name=f"kdwb-search {search_id}",
            daemon=True,
        )
        _DRIVERS[search_id] = (thread, stop)
        thread.start()
    return True


def stop_driver(search_id: str) -> bool:
    """Ask this process's driver of the search to stop at its next poll (its runs go on);
    False when this process does not drive it."""
    with _GUARD:
        running = _DRIVERS.get(search_id)
    if running is None or not running[0].is_alive():
        return False
    running[1].set()
    return True


def _drive(
    home: Any, search_id: str, user: User, quotas: UserQuotas | None, stop: threading.Event
) -> None:
    from workbench.search.searches import get_search
    from workbench.storage.store import Store

    store = Store(home)
    try:
        drive(store, search_id, user=user, quotas=quotas, stop=stop)
    except WorkbenchError as exc:
        store.set(f"search:{search_id}", {**get_search(store, search_id), "error": str(exc)})
    finally:
        store.close()
