"""Final-weights files: a run's ``checkpoints/<run_id>.pt`` and the checkpoints users upload,
read with ``weights_only=True`` (no pickle runs code) into a state dict of tensors. The
per-epoch resumable state is ``workbench.storage.training_state``'s.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import CheckpointError
from workbench.storage.failures import CHECK, write_errno

if TYPE_CHECKING:  # torch is imported where a file is read: pages load faster
    import torch

__all__ = ["load_weights_file", "write_weights_file"]


def write_weights_file(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Save ``state_dict`` (on the CPU) to a temporary name and rename it over ``path``: a
    reader never sees half a file. A full disk is an OSError (the caller names it)."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:  # a file object: a full disk is an OSError, mostly
            try:
                torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, f)
            except RuntimeError as exc:  # torch's own "file write failed": the same error
                raise OSError(write_errno(path), f"writing {path} failed ({exc})") from exc
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load_weights_file(path: str | Path, *, run_id: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; a clear CheckpointError otherwise.

    ``run_id`` marks a checkpoint the workbench wrote itself (the advice is then to retrain or
    restore it, not how to save one, which is for uploaded files)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, non-tensor payloads
        if run_id is not None:
            raise CheckpointError(
                f"the checkpoint of run {run_id} ({path}) is damaged ({type(exc).__name__}): "
                "the workbench wrote it whole, so the file was truncated or overwritten on "
                f"disk; restore it from a backup or train the run again (`{CHECK}` lists "
                "every damaged file)"
            ) from None
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch state dict ({type(exc).__name__}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path.name} does not hold a state dict (a mapping of names to tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return state
