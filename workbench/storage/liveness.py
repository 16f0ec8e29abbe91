"""How long ago a holder (of a run's claim, of a lock, a worker) was last heard from, without
comparing wall clocks across processes.

A heartbeat is written as ``beat_fields()``: the wall time (for people: "heartbeat 3 s ago"),
the writer's ``time.monotonic()`` and the clock it belongs to (``CLOCK``: the boot id and the
time namespace, so two processes with the same ``CLOCK`` read one monotonic clock; Linux's
CLOCK_MONOTONIC is system-wide and no ``settimeofday`` moves it). Its age is then:

- exact when the holder shares this process's ``CLOCK``: ``time.monotonic() - beat_mono``. A
  process whose wall clock is two minutes ahead (or behind) ages nobody's heartbeat;
- otherwise (another host, an older record) the time this process has *watched* the same
  heartbeat stay unchanged (``BeatWatch``), on its own monotonic clock. A heartbeat seen for
  the first time is 0 s old: a holder is taken for silent only after its silence was seen.

Lamport ("Time, clocks, and the ordering of events in a distributed system", 1978) is the
reason: elapsed time on one host is meaningful, a difference of two hosts' clocks is not.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

__all__ = ["CLOCK", "BeatWatch", "beat_age", "beat_fields", "silent_after_s"]


def _clock_id() -> str | None:
    """This machine's boot and time namespace: equal for every process reading one monotonic
    clock (None where ``/proc`` cannot tell, e.g. not Linux)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return None
    try:
        namespace = os.readlink("/proc/self/ns/time")
    except OSError:
        namespace = "-"
    return f"{boot}/{namespace}"


CLOCK = _clock_id()
SILENT_AFTER_ENV = "KDWB_SILENT_AFTER_S"


def silent_after_s(default: float) -> float:
    """How long a silent holder keeps its claim: ``KDWB_SILENT_AFTER_S`` when set (a lab on a
    slow network may want more, a test less), else ``default``."""
    text = os.environ.get(SILENT_AFTER_ENV, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if value > 0 and value == value and value != float("inf") else default


def beat_fields() -> dict[str, Any]:
    """The fields a heartbeat writes (merged into a run record, a lock or a worker entry)."""
    return {"heartbeat": time.time(), "beat_mono": time.monotonic(), "beat_clock": CLOCK}


class BeatWatch:
    """What this process has seen of other holders' heartbeats: per holder, the last value and
    when (``time.monotonic()``) it first saw that value. Thread-safe."""

    def __init__(self) -> None:
        self._seen: dict[Any, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def unchanged_for(self, holder: Any, beat: Any, now: float | None = None) -> float:
        """Seconds ``holder``'s heartbeat has been ``beat`` as far as this process saw."""
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen.get(holder)
            if seen is None or seen[0] != beat:
                self._seen[holder] = (beat, now)
                return 0.0
            return now - seen[1]


WATCH = BeatWatch()  # the process's own: every queue, lock and worker listing shares it


def beat_age(record: dict[str, Any], holder: Any, watch: BeatWatch | None = None) -> float | None:
    """Seconds since ``record``'s heartbeat (see the module docstring); None when it has none.
    ``holder``: what identifies the beating party in ``watch`` (a claim, a lock token)."""
    beat = record.get("heartbeat")
    if beat is None:
        return None
    mono = record.get("beat_mono")
    if CLOCK is not None and record.get("beat_clock") == CLOCK and isinstance(mono, int | float):
        return max(0.0, time.monotonic() - float(mono))
    return (watch or WATCH).unchanged_for(holder, (beat, mono))
