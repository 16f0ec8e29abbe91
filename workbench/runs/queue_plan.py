"""Where each queued run stands: its place in the fair order and an estimated start time.

The estimate replays the scheduler (``runqueue.fair_order``'s rule: fewest running, then
least recently served) on a clock: each slot frees when the run in it is expected to end,
and the next run by the rule takes it. A run's expected length is its epochs times the
median seconds per epoch of the finished runs most like it (same role, model and dataset;
else same role; else any); with no finished run to learn from there is no estimate, only a
position. Slots are the executors' (live workers' ``--slots``, else the app's own).
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Place", "queue_plan", "seconds_per_epoch"]


@dataclass(frozen=True)
class Place:
    """A queued run's ``position`` (1: next to start) and ``eta_s`` (seconds from now until
    it is expected to start; None when unknown)."""

    position: int
    eta_s: float | None


def _kind(record: dict[str, Any]) -> tuple[str, str, str]:
    config = record["config"]
    model = config.get("teacher") if record.get("role") == "teacher" else config.get("student")
    return (record.get("role") or "", str(model), str(config.get("dataset")))


def seconds_per_epoch(records: Iterable[dict[str, Any]]) -> dict[Any, float]:
    """Median seconds per epoch of completed runs, by (role, model, dataset), by role, and
    overall (key ``None``)."""
    samples: dict[Any, list[float]] = {}
    for record in records:
        epochs = (record.get("progress") or {}).get("epochs") or record["config"].get("epochs")
        if record.get("status") != "completed" or not record.get("seconds") or not epochs:
            continue
        per_epoch = float(record["seconds"]) / float(epochs)
        kind = _kind(record)
        for key in (kind, kind[0], None):
            samples.setdefault(key, []).append(per_epoch)
    return {key: statistics.median(values) for key, values in samples.items()}


def _expected_s(record: dict[str, Any], rates: dict[Any, float]) -> float | None:
    kind = _kind(record)
    rate = rates.get(kind, rates.get(kind[0], rates.get(None)))
    return None if rate is None else rate * float(record["config"].get("epochs") or 1)


def _remaining_s(record: dict[str, Any], rates: dict[Any, float], now: float) -> float | None:
    eta = (record.get("progress") or {}).get("eta_s")
    if eta is not None:
        return max(0.0, float(eta))
    expected = _expected_s(record, rates)
    started = record.get("claimed_at") or record.get("started_at") or now
    return None if expected is None else max(0.0, expected - (now - started))


def queue_plan(
    records: list[dict[str, Any]],
    slots: int,
    served: dict[str, float],
    *,
    max_running: int | None = None,
    now: float,
) -> dict[str, Place]:
    """run id -> ``Place`` for every queued run in ``records`` (which should also hold the
    running and recently finished runs, from which lengths are learned)."""
    rates = seconds_per_epoch(records)
    pending: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: r["created_at"]):
        if record["status"] == "queued":
            pending.setdefault(record.get("owner") or "", []).append(record)
    ends: list[tuple[float, str]] = []  # (expected end in s from now, owner): runs in slots
    unknown = slots < 1  # no executor: positions only
    for record in (r for r in records if r["status"] == "running"):
        left = _remaining_s(record, rates, now)
        unknown |= left is None
        heapq.heappush(ends, (left or 0.0, record.get("owner") or ""))
    idle = max(1, slots) - len(ends)
    served, plan, t = dict(served), {}, 0.0
    while pending:
        while ends and ends[0][0] <= t:  # runs that ended by now free their slots
            heapq.heappop(ends)
            idle += 1
        if idle <= 0:  # every slot is taken: the clock moves to the next end
            t = ends[0][0]
            continue
        busy = _busy(ends)
        ready = [o for o in pending if max_running is None or busy.get(o, 0) < max_running]
        if not ready:  # each waiting owner is at their limit: wait for a run to end
            t = ends[0][0]
            continue
        owner = min(
            ready,
            key=lambda o: (busy.get(o, 0), served.get(o, 0.0), pending[o][0]["created_at"]),
        )
        record = pending[owner].pop(0)
        if not pending[owner]:
            del pending[owner]
        plan[record["id"]] = Place(len(plan) + 1, None if unknown else t)
        length = _expected_s(record, rates)
        unknown |= length is None
        served[owner] = now + t
        idle -= 1
        heapq.heappush(ends, (t + (length or 0.0), owner))
    return plan


def _busy(ends: list[tuple[float, str]]) -> dict[str, int]:
    busy: dict[str, int] = {}
    for _, owner in ends:
        busy[owner] = busy.get(owner, 0) + 1
    return busy
