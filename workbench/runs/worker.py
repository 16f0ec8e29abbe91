"""``python -m workbench worker``: a process that executes queued runs from the store.

It is a ``JobManager`` that always executes (``execute="threads"``) on the devices it is
given, announced in the store's worker registry with a heartbeat, so that the app stops
executing in-process while a worker is alive. Any number of workers and app processes can
share one store: each run is claimed by exactly one of them (``workbench.runs.queue``). Stopping
a worker (Ctrl-C, SIGTERM, kill -9) leaves its runs to be recovered and resumed by the next
executor that polls.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from workbench.errors import ConfigError, StoreError, WorkbenchError, quoted
from workbench.runs import queue as runqueue
from workbench.runs.job_manager import JobManager
from workbench.runs.submit import check_device
from workbench.storage.store import Store

if TYPE_CHECKING:  # ray is an optional extra: imported only for a cluster
    from workbench.cluster.executor import ClusterOptions

__all__ = ["serve", "worker_thread"]


def _device_slots(device: str, slots: int) -> dict[str, int]:
    key = runqueue.device_key(device)
    if key != "cpu" and not (key.startswith("cuda:") and key[5:].isdigit()):
        raise ConfigError(f"--device must be cpu or cuda:N, got {quoted(device)}")
    check_device(key)  # the same check as a run's device: CUDA present, N below the count
    return {key: slots}


def _announce(manager: JobManager, device_slots: dict[str, int]) -> None:
    """Refresh this worker's entry in the registry. A store that is locked (another process
    frozen inside a write: SIGSTOP, a suspended machine) or briefly unavailable is said and
    retried on the next beat; the worker does not exit over it."""
    try:
        runqueue.register_worker(manager.store, manager.executor, device_slots)
    except StoreError as exc:
        print(f"[worker {manager.executor.id}] {exc}; retrying", file=sys.stderr)


def _manager(
    store: Store, device: str, slots: int, cluster: ClusterOptions | None
) -> tuple[JobManager, dict[str, int], Callable[[], None], str]:
    """The job manager that executes (on this machine's ``device``, or on the cluster), the
    slots it announces, how to close what it holds, and what it executes, in words."""
    if cluster is None:
        device_slots = _device_slots(device, slots)
        manager = JobManager(store, device_slots=device_slots, execute="threads", kind="worker")
        return manager, device_slots, lambda: None, f"{device} runs"
    from workbench.cluster.executor import cluster_manager

    manager, runner = cluster_manager(store, cluster)
    gpus = f", {runner.gpus_per_run:g} GPU" if runner.gpus_per_run else ""
    where = f"runs on the Ray cluster at {cluster.address} ({cluster.cpus_per_run} CPU{gpus} each)"
    return manager, {"ray": slots}, runner.close, where


def serve(
    store: Store,
    *,
    device: str = "cpu",
    slots: int = 1,
    once: bool = False,
    stop: threading.Event | None = None,
    started: Callable[[JobManager], None] | None = None,
    cluster: ClusterOptions | None = None,
) -> None:
    """Execute queued runs for ``device`` with ``slots`` at once until ``stop`` is set, the
    process is signalled, or (``once``) nothing is left to do. ``started`` is given the job
    manager once it runs (``python -m workbench search`` queues through it, which wakes it).
    ``cluster``: execute them as tasks on a Ray cluster instead (``workbench.cluster``)."""
    manager, device_slots, close_cluster, what = _manager(store, device, slots, cluster)
    stop = stop or threading.Event()
    if started is not None:
        started(manager)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"[worker {manager.executor.id}] executing {what}, {slots} at once, store {store.home}",
        file=sys.stderr,
    )
    try:
        while not stop.is_set():
            _announce(manager, device_slots)
            if once and manager.wait(timeout=runqueue.HEARTBEAT_S):
                break
            stop.wait(runqueue.HEARTBEAT_S)
    except KeyboardInterrupt:
        pass
    finally:
        runqueue.unregister_worker(manager.store, manager.executor)
        manager.close()
        close_cluster()
        for run_id in manager.running():  # leave them to recovery, resumable
            print(f"[worker] run {run_id} left running; it will be resumed", file=sys.stderr)


@contextlib.contextmanager
def worker_thread(
    store: Store, *, slots: int = 1, device: str = "cpu", cluster: ClusterOptions | None = None
) -> Iterator[JobManager]:
    """``serve`` in a daemon thread of this process while the block runs; yields its job
    manager (queueing through its ``submit_many`` wakes it at once). At the end the worker
    stops and its runs in progress are left to recovery, as when a worker process stops."""
    stop, ready, managers = threading.Event(), threading.Event(), []

    def started(manager: JobManager) -> None:
        managers.append(manager)
        ready.set()

    kwargs = {
        "device": device,
        "slots": slots,
        "stop": stop,
        "started": started,
        "cluster": cluster,
    }
    thread = threading.Thread(
        target=serve, args=(store,), kwargs=kwargs, name="kdwb-worker", daemon=True
    )
    thread.start()
    try:
        while not ready.wait(0.05):
            if not thread.is_alive():  # it failed before its manager ran: it said why
                raise WorkbenchError("the worker could not start; see the lines above")
        yield managers[0]
    finally:
        stop.set()
        thread.join()
