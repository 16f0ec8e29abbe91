"""JSON files written whole: ``write_json_atomic`` (the run and suite manifests beside the
checkpoints, from which ``store repair`` rebuilds the index) and ``read_manifest``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from workbench.errors import StoreError

__all__ = ["MANIFEST_FORMAT", "read_manifest", "write_json_atomic"]

MANIFEST_FORMAT = 1


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        return value.tolist()
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file, fsync it and rename it over ``path``: a
    reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, default=_jsonable, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A run manifest; StoreError when it cannot be read."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"the run manifest {path} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("record"), dict):
        raise StoreError(f"the run manifest {path} does not hold a run record")
    return manifest
