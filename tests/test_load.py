"""A load test of the shared queue: 3 users x 20 small runs, 2 worker processes, one store.

Everything goes through the library the way the app and the CLI use it: the runs are queued by
``JobManager.submit`` as each user (all of alice's first, then bob's, then carol's: the worst
case for a first-come queue), and two ``python -m workbench worker`` processes execute them
with the real engine under the lab's limits. Asserted: every run completes once, starts come
round-robin across users, no user ever has two runs training at once (``running_runs = 1``),
the queued-runs limit refuses a 21st run, and nothing is lost (history, checkpoint, manifest).
Waits scale with the work; nothing asserts a duration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from workbench.config.run_config import RunConfig
from workbench.errors import ConfigError
from workbench.lab.identity import User
from workbench.lab.settings import load
from workbench.runs.job_manager import JobManager
from workbench.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
USERS = ("alice", "bob", "carol")
PER_USER = 20
DEADLINE = 900.0  # seconds, for hung processes only: never a performance bound
SMALL = RunConfig(
    student="mlp",
    weights={"label": 1.0},
    epochs=1,
    batch_size=64,
    train_fraction=0.25,
    device="cpu",
)
SETTINGS = """
[identity]
mode = "proxy"
[limits]
queued_runs = 20
running_runs = 1
epochs_per_run = 2
"""


def _worker(home: Path, config: Path) -> subprocess.Popen:
    env = dict(os.environ, KDWB_HOME=str(home), KDWB_CONFIG=str(config), PYTHONPATH=str(ROOT))
    log = open(home / f"worker-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (closed at exit)
    return subprocess.Popen(
        [sys.executable, "-m", "workbench", "worker", "--device", "cpu", "--once"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def _queue_everything(home: Path, config: Path) -> list[str]:
    settings = load(config)
    manager = JobManager(Store(home), execute="none", settings=settings)
    try:
        ids = [
            manager.submit(SMALL.replace(seed=i), user=User(name), name=f"{name} {i}")
            for name in USERS
            for i in range(PER_USER)
        ]
        with pytest.raises(ConfigError, match="queued-runs limit: you have 20 runs queued"):
            manager.submit(SMALL, user=User("alice"))
        with pytest.raises(ConfigError, match="epochs limit"):
            manager.submit(SMALL.replace(epochs=3), user=User("dave"))
        return ids
    finally:
        manager.close()


def test_three_users_sixty_runs_two_workers(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "workbench.toml"
    config.write_text(SETTINGS)
    ids = _queue_everything(home, config)
    workers = [_worker(home, config) for _ in range(2)]
    try:
        for worker in workers:
            worker.wait(timeout=DEADLINE)  # --once: each exits when nothing is left to claim
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
    logs = sorted(home.glob("worker-*.log"))
    assert [w.returncode for w in workers] == [0, 0], [p.read_text()[-2000:] for p in logs]

    store = Store(home)
    records = {r["id"]: r for r in store.list_runs()}
    assert set(records) == set(ids), "a run was lost or one appeared"
    statuses = Counter(r["status"] for r in records.values())
    assert statuses == {"completed": 3 * PER_USER}, statuses
    for record in records.values():  # each executed once, nothing lost
        assert record["claims"] == 1 and record["executions"] == 1, record
        assert store.history(record["id"]) and store.epochs(record["id"])
        assert store.weights_path(record["id"]).exists()
        assert store.manifest_path(record["id"]).exists()

    started = sorted(records.values(), key=lambda r: r["claimed_at"])
    _assert_round_robin(started)
    _assert_never_two_at_once(started)


def _assert_round_robin(started: list[dict]) -> None:
    """Between two starts of one user, every other user who waited the whole time with nothing
    running started too. (Counting starts alone would blame the queue for a slow run: while
    bob's run trains, his next one rightly waits, and alice and carol take turns.)"""
    owners = [r["owner"] for r in started]
    assert set(owners[:3]) == set(USERS), owners[:6]  # nobody's second run before a first
    for user in USERS:
        mine = [r for r in started if r["owner"] == user]
        for before, after in zip(mine, mine[1:], strict=False):
            t1, t2 = before["claimed_at"], after["claimed_at"]
            for other in set(USERS) - {user}:
                theirs = [r for r in started if r["owner"] == other]
                waiting = any(r["created_at"] < t1 and r["claimed_at"] > t2 for r in theirs)
                busy = any(r["claimed_at"] < t2 and r["finished_at"] > t1 for r in theirs)
                assert not (waiting and not busy), (
                    f"{user} started twice ({before['id']}, {after['id']}) while {other} "
                    f"waited with nothing running: {owners}"
                )


def _assert_never_two_at_once(started: list[dict]) -> None:
    """``running_runs = 1``: each of a user's runs was claimed after the previous one ended."""
    for user in USERS:
        mine = [r for r in started if r["owner"] == user]
        for before, after in zip(mine, mine[1:], strict=False):
            assert after["claimed_at"] >= before["finished_at"], (user, before["id"], after["id"])
