"""How a run reports and how it is stopped: the ``on_step`` callback (as in minGPT's trainer),
the stop flag, and the two ways a run ends early.

``on_step`` receives plain dicts with a ``phase`` (``"wait"``, ``"step"``, ``"epoch"``, ``"end"``);
the CLI prints them, the job manager ignores them (the store holds the progress).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Diverged", "OnStep", "StopFlag", "Stopped"]

OnStep = Callable[[dict[str, Any]], None]
StopFlag = threading.Event


class Stopped(Exception):
    """A cancel was asked (the stop flag, or a cancel request in the store): the run ends
    ``cancelled``, resumable from its last training state."""


class Diverged(Exception):
    """The loss became NaN or infinite at ``step``: the run ends ``diverged``."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step
