"""The browser harness's waits: they follow the work, so a busy machine slows them, never fails
them; only a run that stops moving does."""

from __future__ import annotations

import threading
import time

import pytest

from tests.browser_harness import boxes_overlap, wait_for_runs
from workbench.config.run_config import LossWeights, RunConfig


def _run(store) -> str:
    return store.create_run(RunConfig(weights=LossWeights(1, 0, 0, 0)), status="running")


def test_a_slow_run_that_keeps_moving_is_waited_for_past_the_stall_limit(store, home):
    run_id = _run(store)

    def slow_training() -> None:  # 12 steps, 0.2 s apart: 2.4 s in all, each gap under 1 s
        for step in range(1, 13):
            time.sleep(0.2)
            store.update_run(run_id, progress={"step": step})
        store.update_run(run_id, status="completed")

    worker = threading.Thread(target=slow_training)
    started = time.monotonic()
    worker.start()
    (record,) = wait_for_runs(home, [run_id], stall_s=1.0, poll_s=0.05)
    worker.join()
    assert record["status"] == "completed"
    assert time.monotonic() - started > 2.0  # longer than the stall limit: it followed the work


def test_a_run_that_stops_moving_fails_the_wait(store, home):
    run_id = _run(store)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no progress"):
        wait_for_runs(home, [run_id], stall_s=0.5, poll_s=0.05)
    assert time.monotonic() - started < 5


def test_boxes_overlap():
    a = {"x": 0, "y": 0, "width": 10, "height": 10}
    assert boxes_overlap(a, {"x": 5, "y": 5, "width": 10, "height": 10})
    assert not boxes_overlap(a, {"x": 10, "y": 0, "width": 10, "height": 10})  # touching
    assert not boxes_overlap(a, {"x": 0, "y": 30, "width": 10, "height": 10})
