"""Training-state checkpoints: everything a run needs to continue after its last full epoch.

At the end of every epoch the engine writes ``<home>/checkpoints/<run_id>.state.pt``: the
student (or teacher) weights, the loss's own parameters and buffers (adapters, learned
weighting), the optimizer, the learning-rate schedule, the AMP scaler, the run's random
generators, and the epoch and step counters. Resuming from it continues the run with exactly
the numbers of an uninterrupted run (on the CPU; GPU kernels may differ in the last bits).

The file is written to a temporary name, flushed to disk and renamed, so a reader sees the old
file or the new one, never half of one; it is read with ``torch.load(weights_only=True)``, so a
planted file cannot run code. The state file is removed when a run completes (its final weights
are the plain ``<run_id>.pt``), and kept when it fails, is cancelled or is interrupted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from workbench.errors import CheckpointError
from workbench.storage.failures import write_errno

__all__ = ["FORMAT", "delete_state", "load_state", "save_state", "state_path", "write_state"]

FORMAT = 1  # bump when the layout of the state changes; an older file is then not resumed


def state_path(home: str | Path, run_id: str) -> Path:
    return Path(home) / "checkpoints" / f"{run_id}.state.pt"


def save_state(home: str | Path, run_id: str, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file, fsync, rename); the engine's writes go
    through ``FencedRun.replace_file`` with ``write_state`` instead."""
    path = state_path(home, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        write_state(tmp, state)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` and flush it to disk. A failed write (torch reports a full
    disk as ``RuntimeError: [enforce fail at inline_container.cc]``) is an OSError."""
    try:
        with open(path, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except RuntimeError as exc:
        raise OSError(write_errno(path), f"writing {path} failed ({exc})") from exc


def load_state(home: str | Path, run_id: str) -> dict[str, Any] | None:
    """The run's latest training state, or None when it has none (it never finished an epoch).

    Raises CheckpointError when the file exists but cannot be used; the run can then only be
    restarted from scratch.
    """
    path = state_path(home, run_id)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(
            f"the training checkpoint {path} is damaged ({type(exc).__name__}); "
            "restart the run instead of resuming it"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"the training checkpoint {path} was written by another version of the workbench; "
            "restart the run instead of resuming it"
        )
    return state


def delete_state(home: str | Path, run_id: str) -> None:
    state_path(home, run_id).unlink(missing_ok=True)
