"""Background runs: submit to the durable queue, and execute queued runs in threads.

``JobManager`` is what the pages, the CLI and worker processes hold:

- **the queue side** (``submit``, ``cancel``, ``resume``, ``restart``) writes to the store
  (``workbench.runs.queue``), so a queued run survives the process that queued it;
- **the executor side** claims queued runs from the store and trains each in a background
  thread with ``loop.run``, up to ``device_slots`` runs per device at once, heartbeating its claims
  and recovering runs whose process died.

``execute`` says whether this process executes: ``"threads"`` always (a worker process),
``"none"`` never (a front end of workers), ``"auto"`` (the app's default) only while no worker
process is alive on the store, so that ``streamlit run app.py`` alone works with no setup and
a lab with workers keeps training in them when the server restarts. Another executor (a Ray
cluster, say) only has to claim, run, heartbeat and honour cancel in the same way: the pages
talk to the queue side and never see who executes.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from workbench.config.run_config import RunConfig
from workbench.errors import StoreError, WorkbenchError
from workbench.lab import settings as lab_settings
from workbench.lab.access import can_change
from workbench.lab.identity import User, local_user
from workbench.lab.settings import LabSettings
from workbench.runs import permitted as actions
from workbench.runs import queue as runqueue
from workbench.runs.queue import Executor, device_key
from workbench.runs.queue_plan import Place
from workbench.runs.submit import Submission, submit_runs
from workbench.storage.store import ACTIVE, Store

__all__ = ["EXECUTE_MODES", "JobManager", "device_key"]

log = logging.getLogger("kdwb.jobs")
Runner = Callable[..., dict[str, Any]]
EXECUTE_MODES = ("auto", "threads", "none")


class JobManager:
    """Queue runs in the store; execute queued runs in background threads.

    ``device_slots`` maps a device key to the number of runs it may train at once (default: one on
    the CPU and one per GPU); only those devices are executed here. ``runner`` is
    ``loop.run`` unless a test injects another. ``poll`` is how often (seconds) the
    dispatcher looks for work, recovers dead runs and heartbeats its claims. ``settings``: the
    instance's (``workbench.lab.settings.current()`` by default): its per-user quotas are checked
    when runs are queued and when they start. ``total_slots``: at most this many runs at once
    over all devices (the cluster executor, whose runs go wherever Ray places them).

    Every action takes the ``user`` who asks (default: the local user) and is checked by
    ``workbench.runs.permitted`` / ``workbench.lab.access``: only a run's owner or an admin may cancel,
    resume, delete, rename, tag or hide it.
    """

    _live: weakref.WeakSet[JobManager] = weakref.WeakSet()

    def __init__(
        self,
        store: Store,
        device_slots: dict[str, int] | None = None,
        runner: Runner | None = None,
        *,
        execute: str = "auto",
        kind: str = "app",
        poll: float = runqueue.HEARTBEAT_S,
        auto_resume: bool | None = None,
        settings: LabSettings | None = None,
        total_slots: int | None = None,
    ):
        if execute not in EXECUTE_MODES:
            raise WorkbenchError(
                f"execute must be one of {', '.join(EXECUTE_MODES)}, got {execute!r}"
            )
        if runner is None:
            from workbench.training.loop import run as runner
        self.store = store
        self.settings = settings or lab_settings.current()
        self.device_slots = {"cpu": 1} | {f"cuda:{i}": 1 for i in range(torch.cuda.device_count())}
        self.device_slots.update(device_slots or {})
        self.execute = execute
        self.total_slots = total_slots
        self.executor = Executor(kind)
        self.auto_resume = auto_resume
        self._runner = runner
        self._poll = poll
        self._lock = threading.Lock()
        self._running: dict[str, tuple[str, threading.Event]] = {}  # run id -> (device, stop)
        self._threads: dict[str, threading.Thread] = {}
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._waiting_for = ""  # the last reason the index could not be opened, said once
        runqueue.recover(store, auto_resume=auto_resume)
        self._dispatcher = threading.Thread(
            target=self._dispatch_forever, name=f"kdwb-dispatch-{self.executor.id}", daemon=True
        )
        self._dispatcher.start()
        JobManager._live.add(self)

    # ------------------------------------------------------------------ the queue side
    def user(self, user: User | None) -> User:
        """``user``, or the local user when none is given (the CLI, tests, local mode)."""
        return user if user is not None else local_user(self.settings)

    def submit(
        self,
        config: RunConfig,
        *,
        name: str = "",
        tags: Iterable[str] = (),
        suite: str | None = None,
        variant: str | None = None,
        user: User | None = None,
        private: bool = False,
    ) -> str:
        """Queue one run owned by ``user``; returns its id at once (status ``queued``). A run
        that cannot run (no such device here, an unknown teacher run, a per-user limit reached)
        is refused before a record exists."""
        one = Submission(config, name, tuple(tags), suite, variant, private)
        return self.submit_many([one], user)[0]

    def submit_many(self, submissions: Sequence[Submission], user: User | None = None) -> list[str]:
        """Queue runs owned by ``user`` through the submit gate (``workbench.runs.submit``):
        all of them or, when one cannot run or a quota would be passed, none."""
        here = self.execute != "none" and self.executing()
        run_ids = submit_runs(
            self.store,
            submissions,
            user=self.user(user),
            quotas=self.settings.user_quotas(),
            check_device_here=here,
        )
        self._wake.set()
        return run_ids

    def cancel(self, run_id: str, user: User | None = None) -> None:
        """Cancel a queued run at once; ask a running one to stop (wherever it runs)."""
        user = self.user(user)
        record = actions.get_run(self.store, run_id, user)
        if record["status"] not in ACTIVE:
            return
        actions.cancel(self.store, run_id, user)  # checks the owner first
        with self._lock:
            local = self._running.get(run_id)
        if local is not None:
            local[1].set()

    def resume(self, run_id: str, user: User | None = None) -> str:
        """Queue an interrupted, failed or cancelled run again to continue from its last
        checkpoint; returns its id (the same run)."""
        actions.resume(self.store, run_id, self.user(user))
        self._wake.set()
        return run_id

    def restart(self, run_id: str, user: User | None = None) -> str:
        """Queue a fresh run with the config of ``run_id`` (from scratch, a new id), owned by
        ``user`` (anyone who sees a run may start a copy of it)."""
        user = self.user(user)
        record = actions.get_run(self.store, run_id, user)
        config = RunConfig.from_dict(record["config"])
        return self.submit(
            config,
            name=record.get("name") or "",
            tags=record.get("tags") or [],
            suite=record.get("suite") if can_change(user, record) else None,
            variant=record.get("variant"),
            user=user,
        )

    def delete(self, run_id: str, user: User | None = None) -> None:
        actions.delete_run(self.store, run_id, self.user(user))

    def rename(
        self,
        run_id: str,
        user: User | None = None,
        *,
        name: str | None = None,
        tags: Iterable[str] | None = None,
    ) -> None:
        actions.rename(self.store, run_id, self.user(user), name=name, tags=tags)

    def set_private(self, run_id: str, private: bool, user: User | None = None) -> None:
        actions.set_private(self.store, run_id, self.user(user), private)

    def slots(self) -> int:
        """Runs the executors of this store train at once: the live workers' slots, else this
        process's own."""
        workers = runqueue.worker_slots(self.store)
        if workers:
            return workers
        own = self.total_slots or sum(self.device_slots.values())
        return own if self.executing() else 0

    def queue_plan(self, records: list[dict[str, Any]] | None = None) -> dict[str, Place]:
        """run id -> position in the fair order and estimated start, for every queued run."""
        return runqueue.plan(self.store, self.slots(), self.settings.max_running(), records)

    # ------------------------------------------------------------------ status
    def running(self) -> list[str]:
        """Runs this process is executing now."""
        with self._lock:
            return list(self._running)

    def executing(self) -> bool:
        """Whether this process executes queued runs now (see ``execute``)."""
        if self.execute == "auto":
            return not runqueue.live_workers(self.store)
        return self.execute == "threads"

    def busy(self, records: Iterable[dict[str, Any]] | None = None) -> bool:
        """True while the store has queued or running runs (or this process runs one).

        ``records``: the store's runs when the caller has just listed them (saves a second
        listing on a page that polls every second).
        """
        with self._lock:
            if self._running:
                return True
        if records is None:
            return bool(self.store.list_runs(status=ACTIVE))
        return any(r["status"] in ACTIVE for r in records)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no run this process could execute is queued or running here (tests,
        CLI); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._wake.set()
            with self._lock:
                threads = list(self._threads.values())
            if not threads and not self._claimable():
                time.sleep(0.05)  # a claim may be on its way from the dispatcher
                with self._lock:
                    if not self._threads and not self._claimable():
                        return True
                continue
            for thread in threads:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(remaining)
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if not threads:
                time.sleep(0.05)

    def close(self) -> None:
        """Stop dispatching (running threads finish their runs)."""
        self._closed.set()
        self._wake.set()
        self._dispatcher.join(timeout=5)

    def stop_running(self, timeout: float = 60.0) -> None:
        """Close, stop this process's runs (they end ``cancelled``, resumable) and join them."""
        self.close()
        with self._lock:
            running = list(self._running.values())
            threads = list(self._threads.values())
        for _, stop in running:
            stop.set()
        for thread in threads:
            thread.join(timeout)

    @classmethod
    def stop_all(cls, timeout: float = 60.0) -> None:
        """``stop_running`` on every manager of this process: a test session's end, so that no
        run is left training in a daemon thread while the interpreter shuts down (torch aborts
        the process then)."""
        for manager in list(cls._live):
            manager.stop_running(timeout)

    # ------------------------------------------------------------------ the executor side
    def _claimable(self) -> bool:
        if not self.executing():
            return False
        return any(
            device_key(r["config"].get("device", "auto")) in self.device_slots
            for r in self.store.list_runs(status="queued")
        )

    def _dispatch_forever(self) -> None:
        last_beat = 0.0
        while not self._closed.is_set():
            try:
                if not self._follow_index():
                    self._wake.wait(self._poll)
                    continue
                if time.monotonic() - last_beat >= self._poll:
                    self._beat()
                    last_beat = time.monotonic()
                self._fill_slots()
            except Exception:  # a store error must not kill the dispatcher; it retries
                log.exception("the dispatcher of %s failed; retrying", self.executor.id)
            self._wake.wait(self._poll)
            self._wake.clear()

    def _beat(self) -> None:
        with self._lock:
            mine = dict(self._running)
        runqueue.heartbeat(self.store, self.executor, mine)
        for run_id, (_, stop) in mine.items():  # a cancel asked from another process
            if self.store.cancel_requested(run_id):
                stop.set()
        runqueue.recover(self.store, auto_resume=self.auto_resume)

    def _follow_index(self) -> bool:
        """When ``store repair`` replaced the index under this process, say so and open the
        new one. The runs training here stop at their next write (their old store sees the
        index replaced, ``FencedRun``); those the new index shows as ours are queued again, to
        resume from their checkpoints. False while the new index cannot be opened (a repair
        still running): nothing is claimed until it can."""
        if not self.store.index_replaced():
            return True
        try:
            new = Store(self.store.home)
        except StoreError as exc:
            if str(exc) != self._waiting_for:
                log.warning("waiting for the run index of %s: %s", self.store.home, exc)
                self._waiting_for = str(exc)
            return False
        log.warning(
            "the run index of %s was replaced (by `store repair`?) while %s had it open; "
            "opened the new one, and queued the runs it was training again",
            self.store.home,
            self.executor.id,
        )
        self.store, self._waiting_for = new, ""
        with self._lock:
            for _, stop in self._running.values():
                stop.set()
        for record in new.list_runs(status="running"):
            new.update_run_if(
                record["id"],
                lambda r: r["status"] == "running" and r.get("claimed_by") == self.executor.id,
                status="queued",
                claimed_by=None,
                note="queued again: the run index was repaired while it trained",
            )
        return True

    def _free_devices(self) -> set[str]:
        with self._lock:
            busy: dict[str, int] = {}
            for device, _ in self._running.values():
                busy[device] = busy.get(device, 0) + 1
        if self.total_slots is not None and sum(busy.values()) >= self.total_slots:
            return set()
        return {d for d, limit in self.device_slots.items() if busy.get(d, 0) < limit}

    def _fill_slots(self) -> None:
        if not self.executing():
            return
        while free := self._free_devices():
            record = runqueue.claim_next(
                self.store, self.executor, free, max_running=self.settings.max_running()
            )
            if record is None:
                return
            self._start(record)

    def _start(self, record: dict[str, Any]) -> None:
        run_id = record["id"]
        stop = threading.Event()
        device = device_key(record["config"].get("device", "auto"))
        thread = threading.Thread(
            target=self._work, args=(record, stop), name=f"kdwb-{run_id}", daemon=True
        )
        with self._lock:  # registered and started at once: `wait` never sees it unstarted
            self._running[run_id] = (device, stop)
            self._threads[run_id] = thread
            thread.start()

    def _work(self, record: dict[str, Any], stop: threading.Event) -> None:
        run_id = record["id"]
        try:
            config = RunConfig.from_dict(record["config"])
            if self.store.cancel_requested(run_id):
                stop.set()
            self._runner(config, self.store, stop=stop, run_id=run_id, fence=record.get("claims"))
        except BaseException as exc:  # the runner records failures itself; this is the last net
            self.store.update_run(run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.pop(run_id, None)
                self._threads.pop(run_id, None)
            self._wake.set()
