"""Fencing and liveness (issue 18, items 7 and 8): a holder that lost its claim cannot write,
and no worker judges another's heartbeat by its own wall clock.

The faults are real: a worker process frozen with SIGSTOP past the silence limit and thawed
with SIGCONT while another worker trains its run; workers whose wall clocks run two minutes
ahead or behind. Every run must be executed to the end once, with a consistent record. Waits
scale with the work (generous deadlines, polled); nothing asserts a duration.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from workbench.config.run_config import LossWeights, RunConfig
from workbench.runs import queue as runqueue
from workbench.storage.fencing import FencedRun, LostClaim
from workbench.storage.liveness import CLOCK, BeatWatch, beat_age, beat_fields
from workbench.storage.store import Store
from workbench.storage.training_state import state_path

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 600.0  # a deadline for a hung process, never a performance bound
SILENT_S = "5"  # the workers' silence limit here (60 s by default)
CONFIG = RunConfig(
    student="mlp",
    weights=LossWeights(1, 0, 0, 0),
    epochs=10,
    batch_size=16,
    log_every=1,
    device="cpu",
)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, KDWB_HOME=str(home), PYTHONPATH=str(ROOT), KDWB_SILENT_AFTER_S=SILENT_S)
    env.pop("KDWB_AUTO_RESUME", None)
    return env


def _worker(home: Path, name: str, skew_s: float = 0.0) -> subprocess.Popen:
    """``python -m workbench worker`` whose ``time.time()`` is off by ``skew_s`` seconds (its
    monotonic clock, which no ``settimeofday`` moves either, is the machine's)."""
    code = (
        "import runpy, sys, time\n"
        f"real = time.time\ntime.time = lambda: real() + {skew_s!r}\n"
        "sys.argv = ['workbench', 'worker', '--slots', '1']\n"
        "runpy.run_module('workbench', run_name='__main__')\n"
    )
    log = open(home / f"worker-{name}.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=_env(home), cwd=ROOT, stdout=log, stderr=log
    )
    proc.log_path = home / f"worker-{name}.log"  # shown when it exits early
    return proc


def _proc_log(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()[-3000:]


def _log(home: Path, name: str) -> str:
    return (home / f"worker-{name}.log").read_text()


def _wait(predicate, what: str, procs=()) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if predicate():
            return
        for proc in procs:
            if proc.poll() is not None:
                log = _proc_log(proc)
                raise AssertionError(f"{what}: a worker exited {proc.returncode}:\n{log}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _freeze_outside_a_write(proc: subprocess.Popen, db: Path) -> None:
    """SIGSTOP ``proc`` at a moment it holds no write transaction on the index. A process
    frozen inside one blocks every writer until it is thawed (SQLite's lock is the file's):
    a different fault, which workers sit out by retrying (``test_worker_retries...``)."""
    for _ in range(1000):
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            with sqlite3.connect(db, timeout=1.0) as con:
                con.execute("BEGIN IMMEDIATE")  # free now, and the frozen process holds nothing
                con.rollback()
            return
        except sqlite3.OperationalError:
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
    raise AssertionError("the first worker never left its write transactions")


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)


def _assert_consistent(store: Store, run_id: str, epochs: int) -> dict:
    """A run trained to the end once: every epoch once and in order, steps strictly rising."""
    record = store.get_run(run_id)
    assert record["status"] == "completed" and record["error"] is None, record
    assert record["progress"]["epoch"] == epochs
    assert [row["epoch"] for row in store.epochs(run_id)] == list(range(1, epochs + 1))
    steps = [row["step"] for row in store.history(run_id)]
    assert steps == sorted(set(steps)) and steps[-1] == record["progress"]["total_steps"]
    assert record["metrics"]["test_acc"] > 0
    return record


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_a_frozen_worker_that_comes_back_cannot_write_to_the_run_it_lost(home):
    store = Store(home)
    run_id = store.create_run(CONFIG)
    first = _worker(home, "first")
    second = None
    try:
        _wait(lambda: store.epochs(run_id), "the first worker to finish an epoch", [first])
        # Alive and silent: past the silence limit it is taken over.
        _freeze_outside_a_write(first, store.db_path)
        second = _worker(home, "second")
        _wait(
            lambda: (r := store.get_run(run_id))["claims"] == 2 and r["status"] == "running",
            "the second worker to take the run over",
            [second],
        )
        os.kill(first.pid, signal.SIGCONT)  # back, mid-step, sure it still holds the run
        _wait(
            lambda: store.get_run(run_id)["status"] in runqueue.RESUMABLE + ("completed",),
            "the run to end",
            [first, second],
        )
        _wait(lambda: "lost its claim" in _log(home, "first"), "the first worker to say so")
    finally:
        _stop(first, *([second] if second else []))
    record = _assert_consistent(store, run_id, CONFIG.epochs)
    assert record["claims"] == 2 and record["executions"] == 2  # started twice, trained once
    assert f"run {run_id}: this process lost its claim (claim 1)" in _log(home, "first")


def test_workers_whose_clocks_are_skewed_take_no_live_run(home):
    """Three workers on one store: one with the right time, one 120 s ahead, one 120 s
    behind (each would take the others' runs, or lose its own, by comparing wall clocks)."""
    store = Store(home)
    run_ids = [store.create_run(CONFIG.replace(epochs=4, seed=seed)) for seed in range(6)]
    workers = [
        _worker(home, "plain"),
        _worker(home, "ahead", 120.0),
        _worker(home, "behind", -120.0),
    ]
    try:
        _wait(
            lambda: all(store.get_run(i)["status"] == "completed" for i in run_ids),
            "every run to complete",
            workers,
        )
    finally:
        _stop(*workers)
    for run_id in run_ids:
        record = _assert_consistent(store, run_id, 4)
        assert record["claims"] == 1 and record["executions"] == 1, record
        assert not record.get("auto_resumes"), record


# ---------------------------------------------------------------------------- in one process
def test_a_stale_holder_writes_nothing_after_the_run_is_claimed_again(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run(CONFIG)
    old = runqueue.claim(store, run_id, runqueue.Executor("worker"))
    stale = FencedRun(store, run_id, old["claims"])
    stale.history_tail([{"step": 1, "epoch": 1, "total": 1.0}])
    path = state_path(store.home, run_id)
    stale.replace_file(lambda tmp: torch.save({"by": "stale"}, tmp), path)

    store.update_run(run_id, status="queued")  # recovered as silent ...
    new = runqueue.claim(store, run_id, runqueue.Executor("worker"))  # ... and claimed again
    fresh = FencedRun(store, run_id, new["claims"])
    fresh.history_tail([{"step": 7, "epoch": 1, "total": 0.5}])
    fresh.replace_file(lambda tmp: torch.save({"by": "fresh"}, tmp), path)
    before = (store.get_run(run_id), store.history(run_id), path.read_bytes())

    writes = [
        lambda: stale.history_tail([{"step": 2, "epoch": 1, "total": 9.0}]),
        lambda: stale.set_epochs([{"epoch": 1}]),
        lambda: stale.update(status="completed", progress={"epoch": 99}),
        lambda: stale.replace_file(lambda tmp: torch.save({"by": "stale"}, tmp), path),
        lambda: stale.save_probe({"cka": None}),
        lambda: stale.write_manifest(),
    ]
    for write in writes:
        with pytest.raises(LostClaim, match="another executor claimed it since"):
            write()
    assert (store.get_run(run_id), store.history(run_id), path.read_bytes()) == before
    assert store.probe(run_id) is None and store.epochs(run_id) == []
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # no debris either


def test_a_heartbeat_of_this_machine_is_aged_on_its_monotonic_clock(monkeypatch):
    beat = {"heartbeat": time.time() + 120, "beat_mono": time.monotonic() - 3, "beat_clock": CLOCK}
    if CLOCK is None:
        pytest.skip("no boot id here: every heartbeat is watched instead")
    assert 3 <= beat_age(beat, "h", BeatWatch()) < 3 + DEADLINE  # not -120 s, not 123 s
    elsewhere = dict(beat, beat_clock="another-machine")
    watch = BeatWatch()
    assert beat_age(elsewhere, "h", watch) == 0.0  # first seen: as fresh as can be told
    assert (
        watch.unchanged_for(
            "h", (elsewhere["heartbeat"], elsewhere["beat_mono"]), now=time.monotonic() + 30
        )
        >= 30
    )


def test_a_run_given_a_stale_token_does_not_start(tmp_path):
    from workbench.training.loop import run

    store = Store(tmp_path)
    run_id = store.create_run(CONFIG.replace(epochs=1))
    runqueue.claim(store, run_id, runqueue.Executor("worker"))
    events = []
    record = run(CONFIG.replace(epochs=1), store, on_step=events.append, run_id=run_id, fence=0)
    assert record["status"] == "lost" and "lost its claim" in record["error"]
    assert store.get_run(run_id)["status"] == "running" and "executions" not in store.get_run(
        run_id
    )
    assert events[-1]["status"] == "lost"


def test_a_lock_holder_whose_wall_clock_is_behind_is_waited_for_not_taken_over(tmp_path):
    """The holder beats (on this machine's monotonic clock) but writes wall times 1,000 s
    old: a waiter with a 1 s silence limit waits for it instead of taking the lock over."""
    store = Store(tmp_path)
    beats = {"token": "skewed", "host": "another-host", "description": "a skewed holder"}
    beats |= {"acquired_at": time.time() - 1000, "heartbeat_s": 0.1}

    def beat() -> None:
        store.set("lock:x", beats | beat_fields() | {"heartbeat": time.time() - 1000})

    beat()
    messages: list[str] = []
    waiter = threading.Thread(
        target=lambda: (
            store.lock("x", stale_after=1.0, report_after=0.1, on_wait=messages.append)
            .__enter__()
            .release()
        )
    )
    waiter.start()
    deadline = time.monotonic() + 3.0  # three silence limits of beating, however slowly
    while time.monotonic() < deadline or not messages:
        beat()
        time.sleep(0.05)
    store.delete("lock:x")  # released
    waiter.join(timeout=DEADLINE)
    assert not waiter.is_alive()
    assert messages and all("took over" not in m for m in messages), messages


def test_worker_retries_when_the_index_is_locked_and_does_not_exit(tmp_path, monkeypatch, capsys):
    """A writer frozen inside a transaction makes every other write time out ("database is
    locked"). The worker says so and tries again on its next beat; it used to exit 2."""
    from workbench.errors import StoreError
    from workbench.runs import worker

    store = Store(tmp_path)
    run_id = store.create_run(CONFIG.replace(epochs=1))
    real, failures = runqueue.register_worker, []

    def locked_twice(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise StoreError("the store's transaction failed: the run index is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(runqueue, "register_worker", locked_twice)
    monkeypatch.setattr(runqueue, "HEARTBEAT_S", 0.2)
    worker.serve(store, once=True)
    assert len(failures) == 2
    assert store.get_run(run_id)["status"] == "completed"
    assert capsys.readouterr().err.count("is locked; retrying") == 2
