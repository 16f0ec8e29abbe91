"""Opening a Ray cluster from the head: ray is an optional extra, and an address nobody answers
on is one line that names it (``ray.init`` alone would retry for minutes)."""

from __future__ import annotations

import logging
import socket
from typing import Any

from workbench.errors import WorkbenchError, first_line

__all__ = ["RAY_MISSING", "connect", "require_ray"]

RAY_MISSING = "the Ray executor needs ray, an optional extra: pip install -e '.[ray]'"
PROBE_S = 5.0


def require_ray() -> Any:
    """The ``ray`` module, or a WorkbenchError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise WorkbenchError(RAY_MISSING) from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise WorkbenchError(
            f"--ray-address must be host:port (e.g. 10.0.0.5:6379) or auto, got {address!r}"
        )
    return host.strip("[]"), int(port)


def connect(address: str) -> None:
    """Join the cluster whose head is ``address`` (``host:port``, or ``auto``: the one this
    machine started with ``ray start --head``) as a driver; nothing when already joined."""
    ray = require_ray()
    where = None if address == "auto" else _host_port(address)
    if ray.is_initialized():
        return
    unreachable = (
        f"cannot reach the Ray cluster at {address}: {{why}}; start it there with "
        "`ray start --head` or fix --ray-address ([workers] ray_address); the queued runs stay "
        "queued for other executors"
    )
    if where is not None:
        try:
            socket.create_connection(where, timeout=PROBE_S).close()
        except OSError as exc:
            raise WorkbenchError(unreachable.format(why=exc.strerror or exc)) from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # ConnectionError, or ray's own on a wrong port
        raise WorkbenchError(unreachable.format(why=first_line(exc))) from None
