"""Background runs: a process-wide queue with a concurrency limit per device.

The app holds one ``JobManager`` per process (``st.cache_resource``) and every browser session
shares it. Worker threads call ``engine.run`` and nothing else; they never touch Streamlit. A
run's state lives in the store, not in the manager, so a page reload, a second browser or a new
manager on the same store sees the same runs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from workbench.config import RunConfig
from workbench.store import ACTIVE, Store

__all__ = ["JobManager", "device_key"]

Runner = Callable[..., dict[str, Any]]


def device_key(device: str) -> str:
    """The slot a run occupies: ``cpu`` or ``cuda:N`` (``auto`` resolved here)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return "cuda:0"
    return device


@dataclass
class _Job:
    run_id: str
    config: RunConfig
    stop: threading.Event


class JobManager:
    """Queue runs, run them in background threads, cancel them.

    ``limits`` maps a device key to the number of runs it may train at once (default: one on
    the CPU and one per GPU). ``runner`` is ``engine.run`` unless a test injects another.
    """

    def __init__(
        self, store: Store, limits: dict[str, int] | None = None, runner: Runner | None = None
    ):
        if runner is None:
            from workbench.engine import run as runner
        self.store = store
        self.limits = {"cpu": 1} | {f"cuda:{i}": 1 for i in range(torch.cuda.device_count())}
        self.limits.update(limits or {})
        self._runner = runner
        self._lock = threading.Lock()
        self._queues: dict[str, deque[_Job]] = {}
        self._running: dict[str, _Job] = {}
        self._threads: dict[str, threading.Thread] = {}

    # ------------------------------------------------------------------ submit / cancel
    def submit(
        self,
        config: RunConfig,
        *,
        name: str = "",
        tags: Iterable[str] = (),
        suite: str | None = None,
        variant: str | None = None,
    ) -> str:
        """Queue one run; returns its id at once (status ``queued``)."""
        key = device_key(config.device)
        run_id = self.store.create_run(config, name=name, tags=tags, suite=suite, variant=variant)
        with self._lock:
            self._queues.setdefault(key, deque()).append(_Job(run_id, config, threading.Event()))
        self._pump(key)
        return run_id

    def cancel(self, run_id: str) -> None:
        """Cancel a queued or running run (a run of another process is asked through the store)."""
        with self._lock:
            for queue in self._queues.values():
                for job in list(queue):
                    if job.run_id == run_id:
                        queue.remove(job)
                        self.store.update_run(run_id, status="cancelled", error=None)
                        return
            job = self._running.get(run_id)
            if job is not None:
                job.stop.set()
        self.store.request_cancel(run_id)

    def restart(self, run_id: str) -> str:
        """Queue a fresh run with the config of ``run_id`` (e.g. after an interruption)."""
        record = self.store.get_run(run_id)
        config = RunConfig.from_dict(record["config"])
        return self.submit(
            config,
            name=record.get("name") or "",
            tags=record.get("tags") or [],
            suite=record.get("suite"),
            variant=record.get("variant"),
        )

    # ------------------------------------------------------------------ status
    def queued(self) -> list[str]:
        with self._lock:
            return [job.run_id for queue in self._queues.values() for job in queue]

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def busy(self, records: Iterable[dict[str, Any]] | None = None) -> bool:
        """True while this manager has queued or running work, or the store has active runs.

        ``records``: the store's runs when the caller has just listed them (saves a second
        listing on a page that polls every second).
        """
        with self._lock:
            if self._running or any(self._queues.values()):
                return True
        if records is None:
            return bool(self.store.list_runs(status=ACTIVE))
        return any(r["status"] in ACTIVE for r in records)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued and running job is done (tests, CLI); False on timeout."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._threads.values())
                pending = any(self._queues.values())
            if not threads and not pending:
                return True
            for thread in threads:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(remaining)
                if deadline is not None and time.monotonic() >= deadline:
                    return False

    # ------------------------------------------------------------------ workers
    def _pump(self, key: str) -> None:
        with self._lock:
            limit = self.limits.get(key, 1)
            queue = self._queues.get(key, deque())
            active = sum(
                1 for job in self._running.values() if device_key(job.config.device) == key
            )
            while queue and active < limit:
                job = queue.popleft()
                self._running[job.run_id] = job
                thread = threading.Thread(
                    target=self._work, args=(key, job), name=f"kdwb-{job.run_id}", daemon=True
                )
                self._threads[job.run_id] = thread
                thread.start()
                active += 1

    def _work(self, key: str, job: _Job) -> None:
        try:
            self._runner(job.config, self.store, stop=job.stop, run_id=job.run_id)
        except BaseException as exc:  # the runner records failures itself; this is the last net
            self.store.update_run(job.run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.pop(job.run_id, None)
                self._threads.pop(job.run_id, None)
            self._pump(key)
