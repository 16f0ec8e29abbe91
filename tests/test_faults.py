"""Fault injection: processes killed with SIGKILL mid-run, competing executors on one store.

Each case asserts that nothing is lost: a killed run resumes to the numbers of an uninterrupted
one, queued runs survive the server, and every run is executed exactly once. Waits scale with
the work (generous deadlines, polled); nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workbench.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 600.0  # seconds; a deadline for a hung process, never a performance bound
# A scratch small_cnn student logged at every step: long enough to be killed mid-epoch.
SLOW = [
    "--student", "mlp", "--weights", "label=1", "--epochs", "5", "--batch-size", "16",
    "--log-every", "1", "--device", "cpu", "--seed", "3",
]  # fmt: skip


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, KDWB_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("KDWB_AUTO_RESUME", None)
    return env


def _cli(home: Path, *args: str) -> subprocess.Popen:
    """``python -m workbench ARGS`` on the store ``home``; its progress goes to a log file (a
    pipe nobody reads would fill and block it)."""
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / f"cli-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "workbench", *args],
        env=_env(home),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )


def _log(proc: subprocess.Popen) -> str:
    return Path(proc.stderr.name).read_text()[-3000:] if proc.stderr else ""


def _wait(predicate, what: str, deadline: float = DEADLINE, procs=()):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        for proc in procs:
            if proc.poll() is not None and proc.returncode not in (0, -9):
                raise AssertionError(
                    f"{what}: a process exited {proc.returncode}: {proc.stderr.read()}"
                )
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


_STORES: dict[Path, Store] = {}


def _store(home: Path) -> Store:
    """One Store per home for polling (opening one per poll costs more than the poll)."""
    if home not in _STORES:
        _STORES[home] = Store(home)
    return _STORES[home]


def _one_run(home: Path, role: str = "student") -> dict:
    runs = _store(home).list_runs(role=role)
    return runs[0] if runs else {}


def _clean(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_result(tmp_path):
    ref = _cli(tmp_path / "ref", "run", *SLOW, "--json")
    victim = _cli(tmp_path / "home", "run", *SLOW, "--json")
    try:
        home = tmp_path / "home"
        _wait(
            lambda: (r := _one_run(home)) and r["progress"]["epoch"] >= 2
            and _store(home).epochs(r["id"]),
            "the run to reach its second epoch",
            procs=[victim],
        )  # fmt: skip
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        _kill(victim)
    record = _one_run(home)
    assert record["status"] == "running"  # as the dead process left it
    resumed = _cli(home, "resume", record["id"], "--json")
    out, _ = resumed.communicate(timeout=DEADLINE)
    assert resumed.returncode == 0, _log(resumed)
    ref_out, _ = ref.communicate(timeout=DEADLINE)
    assert ref.returncode == 0, _log(ref)
    result, expected = json.loads(out), json.loads(ref_out)
    assert result["status"] == "completed"
    assert result["val_acc"] == expected["val_acc"] and result["losses"] == expected["losses"]
    store, ref_store = Store(home), Store(tmp_path / "ref")
    ref_id = expected["run_id"]
    assert _clean(store.history(record["id"])) == _clean(ref_store.history(ref_id))
    assert _clean(store.epochs(record["id"])) == _clean(ref_store.epochs(ref_id))
    assert store.get_run(record["id"])["metrics"] == ref_store.get_run(ref_id)["metrics"]


def test_kill_9_while_the_teacher_trains_then_the_next_run_finishes(tmp_path):
    home = tmp_path / "home"
    args = [
        "run", "--teacher", "small_cnn", "--student", "mlp", "--epochs", "1",
        "--teacher-epochs", "4", "--batch-size", "8", "--log-every", "1", "--device", "cpu",
        "--json",
    ]  # fmt: skip
    first = _cli(home, *args)
    try:
        _wait(
            lambda: (t := _one_run(home, "teacher")) and _store(home).epochs(t["id"]),
            "the teacher to finish an epoch",
            procs=[first],
        )
        os.kill(first.pid, signal.SIGKILL)
    finally:
        _kill(first)
    second = _cli(home, *args)
    out, _ = second.communicate(timeout=DEADLINE)
    assert second.returncode == 0, _log(second)
    assert json.loads(out)["status"] == "completed"
    teachers = Store(home).list_runs(role="teacher")
    assert len(teachers) == 1 and teachers[0]["status"] == "completed"  # resumed, not retrained
    assert teachers[0]["executions"] == 2
    assert [r["epoch"] for r in Store(home).epochs(teachers[0]["id"])] == [1, 2, 3, 4]


APP = textwrap.dedent(
    """
    import sys, time
    from workbench.config.run_config import LossWeights, RunConfig
    from workbench.runs.job_manager import JobManager
    from workbench.runs.submit import Submission
    from workbench.storage.store import Store

    manager = JobManager(Store())  # what the app creates (st.cache_resource) on its first page
    if sys.argv[1] == "submit":
        config = RunConfig(
            student="mlp", weights=LossWeights(1, 0, 0, 0), epochs=4, batch_size=16,
            log_every=1, device="cpu",
        )
        # one launch of three seeds: queued together, as the Distill page does
        manager.submit_many([Submission(config.replace(seed=seed)) for seed in range(3)])
    while True:
        time.sleep(1)
    """
)


def test_kill_9_of_the_app_with_one_running_and_two_queued(tmp_path):
    home = tmp_path / "home"
    app = subprocess.Popen([sys.executable, "-c", APP, "submit"], env=_env(home), cwd=ROOT)
    try:
        _wait(
            lambda: (rs := _store(home).list_runs(status="running"))
            and _store(home).epochs(rs[0]["id"]),
            "the first run to finish an epoch",
            procs=[app],
        )  # fmt: skip
        os.kill(app.pid, signal.SIGKILL)
    finally:
        _kill(app)
    statuses = sorted(r["status"] for r in Store(home).list_runs())
    assert statuses == ["queued", "queued", "running"]
    restarted = subprocess.Popen([sys.executable, "-c", APP, "serve"], env=_env(home), cwd=ROOT)
    try:
        _wait(
            lambda: [r["status"] for r in _store(home).list_runs()] == ["completed"] * 3,
            "all three runs to complete after the restart",
            procs=[restarted],
        )
    finally:
        _kill(restarted)
    runs = Store(home).list_runs()
    resumed = [r for r in runs if r.get("auto_resumes")]
    assert len(resumed) == 1 and resumed[0]["executions"] == 2
    epochs = Store(home).epochs(resumed[0]["id"])
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    steps = [row["step"] for row in Store(home).history(resumed[0]["id"])]
    assert steps == sorted(set(steps))  # no step logged twice, none lost
    assert all(r["executions"] == 1 for r in runs if r is not resumed[0])


def test_two_workers_and_the_app_execute_each_run_exactly_once(store, home):
    from workbench.config.run_config import LossWeights, RunConfig
    from workbench.runs.job_manager import JobManager

    workers = [_cli(home, "worker", "--device", "cpu") for _ in range(2)]
    app = JobManager(store, execute="threads")  # the app executes too: three executors
    try:
        _wait(lambda: len(store.values("worker:")) == 2, "both workers to start", procs=workers)
        config = RunConfig(
            student="mlp", weights=LossWeights(1, 0, 0, 0), epochs=1, device="cpu", batch_size=64
        )
        ids = [app.submit(config.replace(seed=i)) for i in range(12)]
        _wait(
            lambda: all(store.get_run(i)["status"] == "completed" for i in ids),
            "the 12 runs to complete",
            procs=workers,
        )
    finally:
        app.close()
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _kill(worker)
                pytest.fail("a worker did not stop on SIGTERM")
    records = [store.get_run(i) for i in ids]
    assert all(r["claims"] == 1 and r["executions"] == 1 for r in records)
    assert [w.returncode for w in workers] == [0, 0], [_log(w) for w in workers]
    assert store.values("worker:") == []  # they unregistered


def test_runs_shows_a_killed_run_queued_to_resume_not_running(tmp_path):
    home = tmp_path / "home"
    victim = _cli(home, "run", *SLOW, "--json")
    try:
        _wait(
            lambda: (r := _one_run(home)) and _store(home).epochs(r["id"]),
            "the run to finish an epoch",
            procs=[victim],
        )
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        _kill(victim)
    listing = _cli(home, "runs", "--json")
    out, _ = listing.communicate(timeout=DEADLINE)
    assert listing.returncode == 0, _log(listing)
    assert [r["status"] for r in json.loads(out)] == ["queued"]
    note = _store(home).list_runs()[0]["note"]
    assert "resumed automatically from its last checkpoint" in note
