"""A run as a Ray task: trained on its node against the node's scratch store.

``train_on_node`` asks the relay where to start (``Relay.begin``), installs the teacher and
places the run in the scratch store (``workbench.cluster.payload``), trains it with the one
training loop (``loop.run``: the same numbers as on the head), and returns what the head
imports. Meanwhile a ``Pump`` thread reads the scratch store every ``PUSH_S`` seconds and
pushes what is new to the relay: training state first, then rows, so that the rows up to a
shipped state are always shipped with it. The task never opens the head's store.

``ray.cancel`` raises KeyboardInterrupt in the task's main thread, which the loop ends as
``cancelled``; the task then returns that record like any other.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from workbench.cluster.payload import install_teacher, node_fields, node_store, outcome, place_run
from workbench.config.run_config import RunConfig
from workbench.storage import training_state as checkpoints
from workbench.storage.store import Store

__all__ = ["PUSH_S", "Pump", "train_on_node"]

log = logging.getLogger("kdwb.cluster")
PUSH_S = 0.25


class Pump:
    """Pushes a run's progress from the scratch store to the relay until stopped."""

    def __init__(self, scratch: Store, run_id: str, relay: Any, attempt: int):
        self.scratch, self.run_id, self.relay, self.attempt = scratch, run_id, relay, attempt
        self._rows = 0
        self._epochs = -1
        self._fields: dict[str, Any] = {}
        self._state_seen: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._forever, name="kdwb-pump", daemon=True)

    def __enter__(self) -> Pump:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _forever(self) -> None:
        while not self._stop.wait(PUSH_S):
            try:
                self.push()
            except Exception:  # a missed push is caught up by the next one, or by the result
                log.exception("pushing the progress of run %s failed", self.run_id)

    def push(self) -> None:
        import ray

        state = self._new_state()  # first: the rows read after it include all those up to it
        history = self.scratch.history(self.run_id)
        epochs = self.scratch.epochs(self.run_id)
        fields = node_fields(self.scratch.get_run(self.run_id))
        start = self._rows if len(history) >= self._rows else 0
        changed = {k: v for k, v in fields.items() if self._fields.get(k) != v}
        if start == len(history) and state is None and not changed and len(epochs) == self._epochs:
            return
        update = {
            "from": start,
            "rows": history[start:],
            "epochs": epochs if len(epochs) != self._epochs else None,
            "fields": changed,
            "state": state,
        }
        ray.get(self.relay.push.remote(self.run_id, self.attempt, update))
        self._rows, self._epochs = len(history), len(epochs)
        self._fields.update(changed)

    def _new_state(self) -> bytes | None:
        path = checkpoints.state_path(self.scratch.home, self.run_id)
        try:
            stat = path.stat()
            seen = (stat.st_mtime_ns, stat.st_size)
            if seen == self._state_seen:
                return None
            content = path.read_bytes()  # replaced whole by the loop: the old file or the new
        except OSError:
            return None
        self._state_seen = seen
        return content


def train_on_node(
    record: dict[str, Any], token: int | None, teacher: dict[str, Any] | None, relay: Any
) -> dict[str, Any]:
    """Train the run ``record`` (claim ``token``) here; ``teacher``: its bundle, or None."""
    import ray

    from workbench.training import loop

    node_id = ray.get_runtime_context().get_node_id()
    where = {"node_id": node_id, "host": socket.gethostname()}
    start = ray.get(relay.begin.remote(record["id"], where))
    scratch = node_store(node_id)
    try:
        if teacher is not None:
            install_teacher(scratch, teacher)
        place_run(scratch, record, token, teacher["id"] if teacher else None, start)
        config = RunConfig.from_dict(record["config"])
        with Pump(scratch, record["id"], relay, start["attempt"]):
            loop.run(config, scratch, run_id=record["id"], fence=token)
        return {**outcome(scratch, record["id"]), "where": where, "attempt": start["attempt"]}
    finally:
        scratch.close()
