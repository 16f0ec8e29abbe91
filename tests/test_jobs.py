"""Job manager: queue order, concurrency limit, cancel, failure capture, recovery."""

from __future__ import annotations

import threading
import time

from workbench.config.run_config import LossWeights, RunConfig
from workbench.runs import queue as runqueue
from workbench.runs.job_manager import JobManager, device_key
from workbench.storage.liveness import CLOCK, beat_fields
from workbench.storage.store import Store

SCRATCH = RunConfig(weights=LossWeights(1, 0, 0, 0), device="cpu")


class FakeRunner:
    """Records the order and overlap of runs; each run waits until released or stopped."""

    def __init__(self, store: Store, hold: bool = True):
        self.store = store
        self.order: list[str] = []
        self.active = 0
        self.max_active = 0
        self.release = threading.Event()
        self.hold = hold
        self._lock = threading.Lock()

    def __call__(self, config, store, stop=None, run_id=None, fence=None):
        with self._lock:
            self.order.append(run_id)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        store.update_run(run_id, status="running")
        try:
            if config.seed == 99:
                raise RuntimeError("CUDA out of memory (simulated)")
            while self.hold and not self.release.is_set():
                if stop is not None and stop.is_set():
                    return store.update_run(run_id, status="cancelled")
                time.sleep(0.01)
            return store.update_run(run_id, status="completed")
        finally:
            with self._lock:
                self.active -= 1


def _wait_for(predicate, timeout=60.0):  # a deadline for a hang, never a speed bound
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_device_key():
    assert device_key("cpu") == "cpu"
    assert device_key("cuda") == "cuda:0"
    assert device_key("cuda:1") == "cuda:1"


def test_queue_order_and_concurrency_limit(store):
    runner = FakeRunner(store)
    manager = JobManager(store, runner=runner)
    ids = [manager.submit(SCRATCH.replace(seed=i)) for i in range(3)]
    assert _wait_for(lambda: len(runner.order) == 1)
    time.sleep(0.1)
    assert runner.order == ids[:1]  # one at a time on the CPU
    assert store.get_run(ids[1])["status"] == "queued"
    runner.release.set()
    assert manager.wait(timeout=60)
    assert runner.order == ids
    assert runner.max_active == 1
    assert [store.get_run(i)["status"] for i in ids] == ["completed"] * 3


def test_limit_of_two_runs_two_at_once(store):
    runner = FakeRunner(store)
    manager = JobManager(store, device_slots={"cpu": 2}, runner=runner)
    for i in range(4):
        manager.submit(SCRATCH.replace(seed=i))
    assert _wait_for(lambda: runner.max_active == 2)
    runner.release.set()
    assert manager.wait(timeout=60)
    assert runner.max_active == 2


def test_cancel_queued_and_running(store):
    runner = FakeRunner(store)
    manager = JobManager(store, runner=runner)
    first = manager.submit(SCRATCH)
    second = manager.submit(SCRATCH.replace(seed=1))
    assert _wait_for(lambda: store.get_run(first)["status"] == "running")
    manager.cancel(second)
    assert store.get_run(second)["status"] == "cancelled"
    manager.cancel(first)
    assert manager.wait(timeout=60)
    assert store.get_run(first)["status"] == "cancelled"
    assert runner.order == [first]  # the cancelled queued run never started


def test_failure_is_captured_and_others_go_on(store):
    runner = FakeRunner(store, hold=False)
    manager = JobManager(store, runner=runner)
    bad = manager.submit(SCRATCH.replace(seed=99))
    good = manager.submit(SCRATCH.replace(seed=1))
    assert manager.wait(timeout=60)
    assert store.get_run(bad)["status"] == "failed"
    assert "out of memory" in store.get_run(bad)["error"]
    assert store.get_run(good)["status"] == "completed"


def test_a_new_manager_sees_the_same_runs(store, home):
    runner = FakeRunner(store)
    manager = JobManager(store, runner=runner)
    run_id = manager.submit(SCRATCH)
    assert _wait_for(lambda: store.get_run(run_id)["status"] == "running")
    other = JobManager(Store(home), runner=runner)  # a second session / a reloaded page
    assert other.busy()
    assert [r["id"] for r in other.store.list_runs(status="running")] == [run_id]
    runner.release.set()
    assert manager.wait(timeout=60)
    assert _wait_for(lambda: not other.busy())
    restarted = other.restart(run_id)
    assert other.wait(timeout=60)
    assert store.get_run(restarted)["config"] == store.get_run(run_id)["config"]


def _dead(store, run_id, **fields):
    """Make ``run_id`` look claimed by a process that no longer exists."""
    store.update_run(run_id, status="running", pid=2**22 + 12345, host=runqueue.HOST, **fields)


def test_a_run_left_by_a_dead_process_is_resumed_once(store):
    run_id = store.create_run(SCRATCH)
    _dead(store, run_id)
    assert runqueue.recover(store) == [run_id]
    record = store.get_run(run_id)
    assert record["status"] == "queued" and record["auto_resumes"] == 1
    _dead(store, run_id)  # it died again: now it stays interrupted
    runqueue.recover(store)
    assert store.get_run(run_id)["status"] == "interrupted"


def test_auto_resume_can_be_turned_off(store, monkeypatch):
    run_id = store.create_run(SCRATCH)
    _dead(store, run_id)
    monkeypatch.setenv("KDWB_AUTO_RESUME", "0")
    runqueue.recover(store)
    assert store.get_run(run_id)["status"] == "interrupted"


def test_a_silent_holder_is_taken_for_dead_and_a_live_one_is_not(store):
    alive = store.create_run(SCRATCH)
    silent = store.create_run(SCRATCH)
    store.update_run(alive, status="running", **beat_fields())
    long_ago = 10 * runqueue.SILENT_AFTER_S  # on the one monotonic clock of this machine
    store.update_run(
        silent,
        status="running",
        heartbeat=time.time() - long_ago,
        beat_mono=time.monotonic() - long_ago,
        beat_clock=CLOCK,
    )
    assert runqueue.recover(store) == [silent]
    assert store.get_run(alive)["status"] == "running"


def test_queued_runs_outlive_the_process_that_queued_them(store, home):
    runner = FakeRunner(store, hold=False)
    front = JobManager(store, runner=runner, execute="none")  # queues, never executes
    ids = [front.submit(SCRATCH.replace(seed=i)) for i in range(2)]
    time.sleep(0.2)
    assert runner.order == [] and {store.get_run(i)["status"] for i in ids} == {"queued"}
    front.close()
    later = JobManager(Store(home), runner=runner)  # the restarted app
    assert later.wait(timeout=10)
    assert runner.order == ids
    later.close()


def test_each_run_is_claimed_once_by_competing_executors(store):
    executors = [runqueue.Executor("worker") for _ in range(4)]
    ids = [store.create_run(SCRATCH.replace(seed=i)) for i in range(20)]
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(executor):
        while (record := runqueue.claim_next(Store(store.home), executor, {"cpu"})) is not None:
            with lock:
                claimed.append(record["id"])

    threads = [threading.Thread(target=drain, args=(e,)) for e in executors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)
    assert all(store.get_run(i)["claims"] == 1 for i in ids)


def test_the_app_leaves_execution_to_live_workers(store):
    runner = FakeRunner(store, hold=False)
    worker = runqueue.Executor("worker")
    runqueue.register_worker(store, worker, {"cpu": 1})
    app = JobManager(store, runner=runner)
    assert not app.executing()
    run_id = app.submit(SCRATCH)
    time.sleep(0.3)
    assert store.get_run(run_id)["status"] == "queued" and runner.order == []
    runqueue.unregister_worker(store, worker)
    assert app.executing()
    assert _wait_for(lambda: store.get_run(run_id)["status"] == "completed")
    app.close()


def test_a_cancel_from_another_process_stops_the_run(store, home):
    runner = FakeRunner(store)
    manager = JobManager(store, runner=runner, poll=0.05)
    run_id = manager.submit(SCRATCH)
    assert _wait_for(lambda: store.get_run(run_id)["status"] == "running")
    assert runqueue.cancel(Store(home), run_id) == "requested"  # e.g. the CLI
    assert _wait_for(lambda: store.get_run(run_id)["status"] == "cancelled")
    manager.close()


def test_resume_queues_the_same_run_again(store):
    runner = FakeRunner(store, hold=False)
    manager = JobManager(store, runner=runner)
    run_id = store.create_run(SCRATCH, status="cancelled")
    store.request_cancel(run_id)
    assert manager.resume(run_id) == run_id
    assert manager.wait(timeout=10)
    assert store.get_run(run_id)["status"] == "completed"
    assert not store.cancel_requested(run_id)
    import pytest

    from workbench.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="only interrupted, failed, cancelled"):
        manager.resume(run_id)
    manager.close()
