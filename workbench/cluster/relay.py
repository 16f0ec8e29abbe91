"""The relay: an actor on the head node between the tasks and the executor.

A task pushes its progress here (history rows, epoch rows, record fields, each training state);
the executor asks for what changed since it last looked and writes it into the head's store.
The relay also keeps each run's start (its latest training state and the rows up to it), so a
task that Ray retries on another node after its node died begins from the last state shipped,
not from the one it was first sent with. A push from an attempt that is no longer the run's
latest (a task on a node presumed dead that still talks) is refused.

The actor is pinned to the node of the executor (the head, next to the store) and dies with it:
after an executor is killed, its runs are recovered from the head's store like any dead holder's.
"""

from __future__ import annotations

from typing import Any

from workbench.cluster.payload import trimmed

__all__ = ["Relay", "start_relay"]


class Relay:
    """Per run: the attempt now running, where, its rows (``generation`` counts the times they
    were replaced from the start), its record fields and its latest training state."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, Any]] = {}

    def ready(self) -> bool:
        """True: the actor's process is up (the executor waits for it before it claims)."""
        return True

    def open(self, run_id: str, pack: dict[str, Any]) -> None:
        """A run about to be shipped, starting at ``pack`` (``payload.start_pack``)."""
        self._runs[run_id] = {
            "attempt": 0,
            "where": None,
            "generation": 0,
            "history": list(pack["history"]),
            "epochs": list(pack["epochs"]),
            "fields": {},
            "state": pack["state"],
            "state_version": 0,
        }

    def begin(self, run_id: str, where: dict[str, Any]) -> dict[str, Any]:
        """A task (a first attempt, or Ray's retry) starts on node ``where``: its attempt number
        and its start, the rows after the latest state dropped."""
        run = self._runs[run_id]
        run["attempt"] += 1
        run["where"] = where
        start = trimmed({k: run[k] for k in ("state", "history", "epochs")})
        run["history"], run["epochs"] = start["history"], start["epochs"]
        run["generation"] += 1
        return {"attempt": run["attempt"], **start}

    def push(self, run_id: str, attempt: int, update: dict[str, Any]) -> bool:
        """Progress of ``attempt``: ``from`` (the index its ``rows`` start at), ``epochs`` (all
        of them, or None: unchanged), ``fields`` (changed ones), ``state`` (new bytes or None).
        False for a stale attempt, whose update is dropped."""
        run = self._runs.get(run_id)
        if run is None or attempt != run["attempt"]:
            return False
        start = update["from"]
        if start == 0:
            run["generation"] += 1
        run["history"][start:] = update["rows"]
        if update["epochs"] is not None:
            run["epochs"] = update["epochs"]
        run["fields"].update(update["fields"])
        if update["state"] is not None:
            run["state"] = update["state"]
            run["state_version"] += 1
        return True

    def changes(self, run_id: str, known: dict[str, Any]) -> dict[str, Any]:
        """What changed since ``known`` (the last answer's ``attempt``, ``generation``, ``rows``,
        ``epochs``, ``state_version``): new rows (or all, with ``reset``), epoch rows when they
        changed, the fields, and the state's bytes when a newer one came."""
        run = self._runs[run_id]
        reset = known.get("generation") != run["generation"]
        seen_rows = 0 if reset else known.get("rows", 0)
        newer_state = run["state_version"] != known.get("state_version")
        return {
            "attempt": run["attempt"],
            "where": run["where"],
            "generation": run["generation"],
            "reset": reset,
            "rows": run["history"][seen_rows:],
            "row_count": len(run["history"]),
            "epochs": run["epochs"] if len(run["epochs"]) != known.get("epochs") or reset else None,
            "fields": dict(run["fields"]),
            "state": run["state"] if newer_state and run["state_version"] else None,
            "state_version": run["state_version"],
        }

    def close(self, run_id: str) -> None:
        self._runs.pop(run_id, None)


def start_relay() -> Any:
    """The relay actor, on this process's node (the head), using no CPU of it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_concurrency=1)(Relay).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    )
    return actor.remote()
