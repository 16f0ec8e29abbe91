"""Faults around `store repair` and a full disk (issue 18, items 11, 12 and 14): a repair killed
half way, an index replaced under a running worker, a disk that fills during `resume`.

Each case injects the real fault (SIGKILL of the repairing process, a repair while a job
manager trains, a small tmpfs filled up) and asserts that nothing was lost and that nothing
reports a partial index as whole.
"""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
import threading
import time

import pytest
import torch

from tests.test_faults_store import (
    CONFIG,
    ROOT,
    assert_one_line_error,
    cli,
    fabricate,
    fill,
    small_disk,  # noqa: F401 (a fixture)
    snapshot,
)
from workbench.config.run_config import LossWeights, RunConfig
from workbench.errors import StoreError
from workbench.runs.job_manager import JobManager
from workbench.storage.fencing import FencedRun, LostClaim
from workbench.storage.repair import check_store, repair_store
from workbench.storage.store import Store
from workbench.storage.training_state import state_path, write_state

DEADLINE = 300.0  # a deadline for a hung wait, never a performance bound

KILLED_MID_REPAIR = """
import os, signal, sys
from workbench.storage import repair

real = repair.Store.set_history  # once per run the repair restores
restored = []

def set_history(self, run_id, rows):
    restored.append(run_id)
    if len(restored) == 3:  # the third run: its record is written, its history is not
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, run_id, rows)

repair.Store.set_history = set_history
repair.repair_store(sys.argv[1])
"""


def test_a_repair_killed_half_way_is_detected_and_finished_by_the_next(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    fabricate(store, n=5)
    before = snapshot(store)
    store.close()
    for path in (home / "store").glob("cache.db*"):
        path.unlink()  # the index is lost: repair rebuilds it from the manifests

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_REPAIR, str(home)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert killed.returncode == -9, killed.stderr
    report = check_store(home)
    assert not report.ok and report.index == "incomplete", report.lines()
    assert "a repair was interrupted" in "\n".join(report.lines())
    with pytest.raises(
        StoreError, match="was interrupted .* run `python -m workbench store repair` again"
    ):
        Store(home)
    assert_one_line_error(cli(home, "runs"), "was interrupted", "store repair")

    finished = cli(home, "store", "repair")  # the next repair finishes the work, exit 0
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert check_store(home).ok
    after = Store(home)
    assert snapshot(after) == before  # every run back whole, the half-written one too
    assert not (home / "store.repairing.json").exists()


def test_a_job_manager_follows_an_index_replaced_under_it(tmp_path, caplog):
    home = tmp_path / "home"
    store = Store(home)
    outcomes: list[str] = []

    def runner(config, run_store, *, stop=None, run_id=None, fence=None, on_step=None):
        fenced = FencedRun(run_store, run_id, fence)
        rows: list[dict] = []
        try:
            while time.monotonic() < deadline:
                rows.append({"step": len(rows) + 1, "epoch": 1, "total": 1.0})
                fenced.history_tail(rows)
                if run_store is not store and len(rows) >= 3:  # the new index: finish
                    fenced.update(status="completed")
                    outcomes.append("completed in the new index")
                    return run_store.get_run(run_id)
                time.sleep(0.02)
        except LostClaim as exc:
            outcomes.append(str(exc))
        return {}

    deadline = time.monotonic() + DEADLINE
    manager = JobManager(store, runner=runner, execute="threads", poll=0.1)
    try:
        run_id = manager.submit(CONFIG.replace(epochs=1))
        while not store.history(run_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        with caplog.at_level(logging.WARNING, logger="kdwb.jobs"):
            for path in (home / "store").glob("cache.db*"):
                path.unlink()  # `rm store/cache.db*` and `store repair`, the worker running
            repair_store(home)
            while len(outcomes) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        manager.close()
    assert "the run index was replaced under it" in outcomes[0]
    assert outcomes[1:] == ["completed in the new index"]
    assert any("was replaced" in r.getMessage() for r in caplog.records)
    new = Store(home)
    record = new.get_run(run_id)
    assert record["status"] == "completed" and record["claims"] == 2
    assert record["note"] == "queued again: the run index was repaired while it trained"


def test_a_full_disk_while_writing_a_training_state_is_the_disk_full_error(small_disk):  # noqa: F811
    fill(small_disk, leave=100_000)  # room for a part: torch's writer fails half way
    state = {"model": {"w": torch.zeros(200_000)}}  # 800 kB
    with pytest.raises(OSError) as caught:
        write_state(small_disk / "state.pt", state)
    assert caught.value.errno == errno.ENOSPC  # not torch's "enforce fail" RuntimeError


def test_resume_on_a_disk_that_fills_says_the_disk_is_full(small_disk):  # noqa: F811
    home = small_disk / "home"
    stop = threading.Event()

    def stop_after_epoch_one(event):
        if event.get("phase") == "epoch":
            stop.set()

    from workbench.training.loop import run

    store = Store(home)
    config = RunConfig(student="mlp", weights=LossWeights(1, 0, 0, 0), epochs=3, device="cpu")
    run_id = run(config, store, on_step=stop_after_epoch_one, stop=stop)["id"]
    assert store.get_run(run_id)["status"] == "cancelled" and store.epochs(run_id)
    store.close()
    assert state_path(home, run_id).stat().st_size > 400_000
    filler = fill(small_disk, leave=200_000)  # room for the index's writes, not for a state
    resumed = cli(home, "resume", run_id)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode in (1, 2), output
    assert "is full" in output and "enforce fail" not in output and "Traceback" not in output
    filler.unlink()
    again = Store(home).get_run(run_id)
    assert again["status"] in ("failed", "queued", "running", "cancelled"), again
