"""What travels between the head's store and a node's scratch store, both ways.

To a node, once per node and teacher (through Ray's object store: the executor puts a teacher's
bundle once and every task that needs it gets the same object, fetched to a node once):

- the teacher: its run record, its checkpoint's bytes and mtime (kept, so that the cache keys
  of ``workbench.training.cache_keys``, which name the file's size and mtime, match the head's),
  and the teacher-output cache entries built for it on the head (``teacher_outputs/<key>/``);
- per run, with the task: the run's record and claim, and its start (the latest training state
  with the history and epoch rows up to it; ``workbench.cluster.relay`` keeps it current).

Back to the head: progress while it trains (``workbench.cluster.task``), and at the end the
record's fields, history, epoch rows, probe, final weights (or the training state of a run that
did not complete), which the executor imports under the run's claim.

A node's scratch store is ``$KDWB_SCRATCH`` (default the temporary folder) ``/kdwb-node-<id>``:
tasks on one node share it, so a teacher lands there once; a run's own files are removed when
its task ends.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from workbench.storage import training_state as checkpoints
from workbench.storage.store import Store
from workbench.training.teacher_cache import cache_root, complete_entries

__all__ = [
    "HEAD_FIELDS",
    "bundle_key",
    "install_teacher",
    "node_fields",
    "node_store",
    "outcome",
    "place_run",
    "start_pack",
    "state_position",
    "teacher_bundle",
    "trimmed",
    "write_bytes_file",
]

SCRATCH_ENV = "KDWB_SCRATCH"
# Fields of a run record the head owns (who the run is, its claim, where and how often it ran):
# a node's copy of them is never taken back.
HEAD_FIELDS = frozenset(
    {
        "id", "name", "tags", "owner", "private", "role", "config", "fingerprint", "created_at",
        "suite", "variant", "search", "trial", "claims", "claimed_by", "claimed_at", "pid",
        "host", "heartbeat", "beat_mono", "beat_clock", "executions", "started_at",
        "finished_at", "seconds", "auto_resumes", "note", "executed_on", "status",
    }
)  # fmt: skip


# ---------------------------------------------------------------------------- on the head
def bundle_key(store: Store, teacher_id: str) -> tuple:
    """What a teacher's bundle depends on: the run, its checkpoint file and its cache entries
    (a new entry or a replaced checkpoint is a new bundle)."""
    stat = store.weights_path(teacher_id).stat()
    return (
        teacher_id,
        stat.st_size,
        stat.st_mtime_ns,
        tuple(e.key for e in _entries_of(store, teacher_id)),
    )


def teacher_bundle(store: Store, teacher_id: str) -> dict[str, Any]:
    """A teacher as it travels: record, checkpoint bytes and mtime, its cache entries' files."""
    path = store.weights_path(teacher_id)
    entries = {
        entry.key: {f.name: f.read_bytes() for f in entry.path.iterdir() if f.is_file()}
        for entry in _entries_of(store, teacher_id)
    }
    return {
        "id": teacher_id,
        "record": store.get_run(teacher_id),
        "weights": path.read_bytes(),
        "mtime_ns": path.stat().st_mtime_ns,
        "entries": entries,
    }


def _entries_of(store: Store, teacher_id: str) -> list[Any]:
    found = []
    for entry in complete_entries(cache_root(store)):
        try:
            meta = json.loads((entry.path / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("teacher_id") == teacher_id:
            found.append(entry)
    return found


def start_pack(store: Store, run_id: str) -> dict[str, Any]:
    """Where a run starts: its training state's bytes (None: from scratch) and its history and
    epoch rows (``Relay.begin`` drops the rows after the state, at every attempt)."""
    path = checkpoints.state_path(store.home, run_id)
    state = path.read_bytes() if path.exists() else None
    return {"state": state, "history": store.history(run_id), "epochs": store.epochs(run_id)}


def state_position(state: bytes | None) -> tuple[int, int]:
    """(step, epoch) of a training state's bytes; (0, 0) for none."""
    if state is None:
        return 0, 0
    loaded = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True)
    return int(loaded["step"]), int(loaded["epoch"])


def trimmed(pack: dict[str, Any]) -> dict[str, Any]:
    """``pack`` with the rows logged after its state dropped (as ``steps.restore`` does): a run
    that goes on from the state logs them again, and no step is logged twice."""
    step, epoch = state_position(pack["state"])
    return {
        **pack,
        "history": [r for r in pack["history"] if r["step"] <= step],
        "epochs": [r for r in pack["epochs"] if r["epoch"] <= epoch],
    }


def node_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a node's copy of a run record that the head takes (not ``HEAD_FIELDS``)."""
    return {k: v for k, v in record.items() if k not in HEAD_FIELDS}


# ---------------------------------------------------------------------------- on a node
def node_store(node_id: str) -> Store:
    """This node's scratch store (shared by the tasks on the node)."""
    root = Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())
    return Store(root / f"kdwb-node-{node_id[:16]}")


def install_teacher(scratch: Store, bundle: dict[str, Any]) -> None:
    """Put the teacher of ``bundle`` into the scratch store, unless it is there already (the
    same checkpoint file), with its cache entries; once per node, even with tasks in parallel."""
    teacher_id = bundle["id"]
    path = scratch.weights_path(teacher_id)
    with scratch.lock(f"install-teacher:{teacher_id}", description="a task installing a teacher"):
        if not _same_file(path, len(bundle["weights"]), bundle["mtime_ns"]):
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            tmp.write_bytes(bundle["weights"])
            os.utime(tmp, ns=(bundle["mtime_ns"], bundle["mtime_ns"]))
            os.replace(tmp, path)
            scratch.set(f"run:{teacher_id}", bundle["record"])
            scratch.update_run(teacher_id, status=bundle["record"]["status"])
        for key, files in bundle["entries"].items():
            _install_entry(cache_root(scratch), key, files)


def _same_file(path: Path, size: int, mtime_ns: int) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    return stat.st_size == size and stat.st_mtime_ns == mtime_ns


def _install_entry(root: Path, key: str, files: dict[str, bytes]) -> None:
    folder = root / key
    if folder.is_dir():
        return
    tmp = root / f".{key}.{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    for name, content in files.items():
        (tmp / name).write_bytes(content)
    try:
        os.replace(tmp, folder)
    except OSError:  # another task put it there first
        shutil.rmtree(tmp, ignore_errors=True)


def place_run(
    scratch: Store,
    record: dict[str, Any],
    token: int | None,
    teacher_id: str | None,
    pack: dict[str, Any],
) -> None:
    """The run in the scratch store as the head holds it, running under claim ``token`` and
    with its teacher named, at the start ``pack`` gives (its rows, its training state)."""
    run_id = record["id"]
    scratch.delete_run(run_id)  # what an earlier attempt on this node left
    scratch.set(f"run:{run_id}", {**record, "claims": token, "teacher_run": teacher_id})
    scratch.update_run(run_id, status="running")
    scratch.set_history(run_id, pack["history"])
    scratch.set_epochs(run_id, pack["epochs"])
    if pack["state"] is not None:
        checkpoints.state_path(scratch.home, run_id).write_bytes(pack["state"])


def outcome(scratch: Store, run_id: str) -> dict[str, Any]:
    """Everything the head imports of a finished task, then the run's files on the node gone."""
    record = scratch.get_run(run_id)
    weights = scratch.weights_path(run_id)
    state = checkpoints.state_path(scratch.home, run_id)
    result = {
        "record": record,
        "history": scratch.history(run_id),
        "epochs": scratch.epochs(run_id),
        "probe": scratch.probe(run_id) if scratch.probe_state(run_id) == "saved" else None,
        "weights": weights.read_bytes() if weights.exists() else None,
        "state": state.read_bytes() if state.exists() else None,
    }
    scratch.delete_run(run_id)
    return result


def write_bytes_file(content: bytes) -> Any:
    """A ``FencedRun.replace_file`` writer of ``content`` (a checkpoint's bytes as shipped)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())

    return write
