"""Where a distillation run gets its teacher's outputs from: live, or from a shared cache.

Without random augmentation a frozen teacher gives the same logits and features for a training
sample in every epoch of every run, so computing them once and reading them back by index turns
the teacher's forward pass (usually the most expensive part of a distillation step) into one
``index_select`` per tensor. The runs of an ablation suite, its seeds and any later run against
the same teacher share one entry.

- ``LiveTeacher`` runs the frozen teacher on each batch under ``torch.inference_mode()``.
- ``CachedTeacher`` reads a batch's rows of the teacher's outputs for every training sample,
  held on the run's device.

An entry lives in ``<store.home>/teacher_outputs/<key>/`` (``outputs.pt``, read back with
``torch.load(mmap=True, weights_only=True)``, and ``meta.json``). ``key`` hashes everything that
changes the outputs: the teacher (run id and checkpoint file, or its weights), the training
tensor (shape and a digest of its values, so dataset, split, transform and normalization), the
hooked layer paths and the dtype. An entry is built once under ``store.lock`` into a temporary
folder that is renamed into place, so concurrent runs (threads or processes) never see half of
one. The entries together stay under ``KDWB_TEACHER_CACHE_BYTES`` (default 2 GiB); the least
recently used ones are removed to make room. A full disk while an entry is built falls back
to the live teacher, with a note that says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.distill.taps import FeatureTaps
from workbench.errors import ConfigError
from workbench.storage.failures import is_disk_full
from workbench.training.cache_keys import CACHE_DTYPE, FORMAT, entry_key, per_sample_bytes

__all__ = [
    "CachedTeacher",
    "DEFAULT_LIMIT_BYTES",
    "EntryInfo",
    "LiveTeacher",
    "cache_limit",
    "cache_root",
    "build_entry",
    "complete_entries",
    "open_entry",
    "teacher_predictions",
    "teacher_source",
]

DEFAULT_LIMIT_BYTES = 2 * 2**30
LIMIT_ENV = "KDWB_TEACHER_CACHE_BYTES"
BUILD_BATCH = 512
_OUTPUTS, _META = "outputs.pt", "meta.json"
_STALE_TMP_S = 6 * 3600  # a temporary folder this old belongs to a builder that died


class LiveTeacher:
    """The frozen teacher, run on every batch."""

    kind = "live"

    def __init__(self, teacher: nn.Module, paths: Sequence[str], note: str = ""):
        self.teacher, self.paths, self.note = teacher, list(paths), note

    def __call__(
        self, idx: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.inference_mode(), FeatureTaps(self.teacher, self.paths) as taps:
            logits = self.teacher(x)  # [B, K]
            feats = list(taps.features)
        # Inference tensors cannot be saved for backward; a clone is an ordinary constant.
        return logits.clone(), [f.clone() for f in feats]


class CachedTeacher:
    """The teacher's outputs for every training sample, on the run's device; a batch is rows
    ``idx`` of each (``x`` is not read: the outputs are those of the unaugmented samples)."""

    kind = "cache"

    def __init__(self, outputs: _Outputs, note: str):
        self.outputs, self.note = outputs, note

    def __call__(
        self, idx: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.outputs
        logits = out.logits.index_select(0, idx)  # [B, K]
        return logits, [f.index_select(0, idx) for f in out.features]  # [B, ...] each


@dataclass(frozen=True)
class EntryInfo:
    """One cache entry on disk: its key, folder, size and last use (``time.time()``)."""

    key: str
    path: Path
    bytes: int
    last_used: float


class _Outputs:
    """Logits [N, K] and features [N, ...] per path, on one device (shared between the runs of
    a process through ``_LOADED``, so two runs on one GPU hold one copy)."""

    def __init__(self, logits: torch.Tensor, features: list[torch.Tensor]):
        self.logits, self.features = logits, features

    @property
    def nbytes(self) -> int:
        return self.logits.nbytes + sum(f.nbytes for f in self.features)


_LOADED: weakref.WeakValueDictionary[tuple[str, str], _Outputs] = weakref.WeakValueDictionary()
_LOADED_LOCK = threading.Lock()


# ------------------------------------------------------------------------------ the source
def teacher_source(
    config: Any,
    teacher: nn.Module,
    teacher_id: str | None,
    paths: Sequence[str],
    train_x: torch.Tensor,
    store: Any,
    device: torch.device,
) -> LiveTeacher | CachedTeacher:
    """The cached outputs when the run allows it and they fit, else the live teacher; the
    source's ``note`` says which and why (the engine stores it in the run record).

    Long because it is a chain of fallbacks, each with the note it leaves in the run record: read
    top to bottom, it is the decision table.
    """
    paths = list(paths)
    if not config.teacher_cache:
        return LiveTeacher(
            teacher, paths, note="teacher run live on every batch: the teacher cache is off"
        )
    if config.augment:
        return LiveTeacher(
            teacher,
            paths,
            note="teacher run live on every batch: random augmentation changes every batch, "
            "so its outputs cannot be cached",
        )
    limit = cache_limit()
    n = len(train_x)
    key = entry_key(teacher, teacher_id, paths, train_x, store)
    folder = cache_root(store) / key
    started = time.perf_counter()
    built = False
    outputs = open_entry(folder, n, len(paths))
    if outputs is None:
        size = n * per_sample_bytes(teacher, paths, train_x)
        if size > limit:
            return LiveTeacher(
                teacher,
                paths,
                note=f"teacher run live on every batch: its outputs for the {n:,} training "
                f"samples need {_mib(size)}, over the teacher cache limit of {_mib(limit)} "
                f"(raise {LIMIT_ENV} to cache them)",
            )
        try:
            with store.lock(
                f"teacher_outputs:{key}",
                description=f"a run building the teacher-output cache of {config.teacher} "
                f"({n:,} samples, {_mib(size)})",
            ):
                outputs = open_entry(
                    folder, n, len(paths)
                )  # another run may have built it meanwhile
                if outputs is None:
                    build_entry(
                        folder,
                        teacher,
                        paths,
                        train_x,
                        store,
                        limit,
                        meta=_meta(config, paths, teacher_id),
                    )
                    built = True
                    outputs = open_entry(folder, n, len(paths))
        except Exception as exc:
            if not is_disk_full(exc, folder.parent):
                raise
            return LiveTeacher(
                teacher,
                paths,
                note=f"teacher run live on every batch: the disk holding the teacher cache "
                f"({folder.parent}) is full, so its outputs ({_mib(size)}) could not be cached; "
                "free space there to cache them",
            )
        if outputs is None:  # evicted between the build and now by a concurrent builder
            return LiveTeacher(
                teacher,
                paths,
                note="teacher run live on every batch: the cache entry was evicted while it "
                "was opened (the cache is too small for the runs sharing it)",
            )
    size = outputs.nbytes
    if size > limit:
        return LiveTeacher(
            teacher,
            paths,
            note=f"teacher run live on every batch: its cached outputs take {_mib(size)}, over "
            f"the teacher cache limit of {_mib(limit)} (raise {LIMIT_ENV} to use them)",
        )
    on_device = _to_device(key, outputs, device, size)
    if on_device is None:
        return LiveTeacher(
            teacher,
            paths,
            note=f"teacher run live on every batch: its cached outputs ({_mib(size)}) do not "
            f"fit in the free memory of {device}",
        )
    seconds = time.perf_counter() - started
    how = f"built now in {seconds:.1f} s" if built else "built by an earlier run"
    return CachedTeacher(
        on_device,
        note=f"teacher outputs read from the cache ({_mib(size)} for {n:,} samples, {how})",
    )


@torch.inference_mode()
def teacher_predictions(
    config: Any,
    teacher: nn.Module,
    teacher_id: str | None,
    val_x: torch.Tensor,
    store: Any,
    batch: int = 512,
) -> torch.Tensor:
    """The teacher's predicted class of every validation sample ([N] int64, CPU), computed once
    per teacher and validation tensor and kept in the store (a few KB), unless the run's teacher
    cache is off. Every run against a teacher needs them for its agreement metric."""
    key = None
    if config.teacher_cache:
        key = "teacher_pred:" + entry_key(teacher, teacher_id, [], val_x, store)
        found = store.get(key)
        if isinstance(found, torch.Tensor) and found.shape == (len(val_x),):
            return found
    was_training = teacher.training
    teacher.eval()
    try:
        parts = [
            teacher(val_x[i : i + batch]).argmax(dim=1).cpu() for i in range(0, len(val_x), batch)
        ]
    finally:
        teacher.train(was_training)
    pred = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    if key is not None:
        try:
            store.set(key, pred)
        except Exception as exc:  # only a cache: a full disk costs a recomputation next time
            if not is_disk_full(exc, Path(store.home)):
                raise
    return pred


# ------------------------------------------------------------------------------ the entries
def cache_root(store: Any) -> Path:
    """The folder of all entries: ``<store.home>/teacher_outputs``."""
    return Path(store.home) / "teacher_outputs"


def cache_limit() -> int:
    """The size limit of all entries together, in bytes: ``$KDWB_TEACHER_CACHE_BYTES`` or 2 GiB."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_LIMIT_BYTES
    try:
        value = int(float(raw))
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{LIMIT_ENV} must be a number of bytes >= 0 (e.g. 2e9), got {raw!r}")
    return value


def complete_entries(root: Path) -> list[EntryInfo]:
    """The complete entries under ``root`` (``cache_root(store)``), least recently used first."""
    if not root.is_dir():
        return []
    entries = []
    for folder in root.iterdir():
        if folder.name.startswith("."):  # temporary or being deleted
            continue
        with contextlib.suppress(OSError):  # removed meanwhile
            used = (folder / _META).stat().st_mtime
            entries.append(EntryInfo(folder.name, folder, _entry_bytes(folder), used))
    return sorted(entries, key=lambda e: e.last_used)


def _entry_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def open_entry(folder: Path, n: int, num_features: int) -> _Outputs | None:
    """The entry's tensors (memory-mapped), marking it used; None when missing or unreadable."""
    if not (folder / _META).exists():
        return None
    try:
        data = torch.load(folder / _OUTPUTS, mmap=True, weights_only=True, map_location="cpu")
        logits, features = data["logits"], list(data["features"])
    except FileNotFoundError:
        return None
    except Exception:  # a damaged entry: move it out of the way, the caller rebuilds
        _remove(folder)
        return None
    if len(logits) != n or len(features) != num_features or any(len(f) != n for f in features):
        _remove(folder)
        return None
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):
        os.utime(folder / _META, ns=(now, now))  # the LRU clock
    return _Outputs(logits, features)


@torch.inference_mode()
def build_entry(
    folder: Path,
    teacher: nn.Module,
    paths: list[str],
    train_x: torch.Tensor,
    store: Any,
    limit: int,
    meta: dict[str, Any],
) -> None:
    """Run the teacher over ``train_x`` once, write the entry to a temporary folder, make room
    (LRU) and rename it into place. The caller holds the entry's lock."""
    was_training = teacher.training
    teacher.eval()  # BatchNorm statistics, not batch ones: a sample's outputs do not depend on its batch
    logits_parts: list[torch.Tensor] = []
    feature_parts: list[list[torch.Tensor]] = [[] for _ in paths]
    try:
        with FeatureTaps(teacher, paths) as taps:
            for start in range(0, len(train_x), BUILD_BATCH):
                logits = teacher(train_x[start : start + BUILD_BATCH])  # [b, K]
                logits_parts.append(logits.to("cpu", CACHE_DTYPE))
                for part, feat in zip(feature_parts, taps.features, strict=True):
                    part.append(feat.to("cpu", CACHE_DTYPE, memory_format=torch.contiguous_format))
    finally:
        teacher.train(was_training)
    outputs = {
        "logits": torch.cat(logits_parts),  # [N, K]
        "features": [torch.cat(part) for part in feature_parts],  # [N, ...] per path
    }
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with open(tmp / _OUTPUTS, "wb") as f:  # a file object: a full disk is an OSError
            torch.save(outputs, f)
        meta = {
            **meta,
            "format": FORMAT,
            "samples": len(train_x),
            "logits": list(outputs["logits"].shape[1:]),
            "features": [list(f.shape[1:]) for f in outputs["features"]],
            "created_at": time.time(),
        }
        (tmp / _META).write_text(json.dumps(meta, indent=1))
        size = _entry_bytes(tmp)
        # one evictor at a time, and the rename inside it
        with store.lock("teacher_outputs", description="a run making room in the teacher cache"):
            _make_room(root, size, limit, keep=folder.name)
            _remove(folder)  # a damaged leftover under the same key, if any
            os.rename(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make_room(root: Path, size: int, limit: int, keep: str) -> None:
    """Remove least recently used entries until ``size`` more bytes fit under ``limit``."""
    now = time.time()
    for folder in root.iterdir():  # temporary folders of builders that died
        if folder.name.startswith(".") and now - _mtime(folder) > _STALE_TMP_S:
            shutil.rmtree(folder, ignore_errors=True)
    entries = [e for e in complete_entries(root) if e.key != keep]
    total = sum(e.bytes for e in entries)
    for entry in entries:  # least recently used first
        if total + size <= limit:
            break
        _remove(entry.path)
        total -= entry.bytes


def _remove(folder: Path) -> None:
    """Delete an entry: rename it out of sight first, so no reader sees a half-deleted one.
    A process that has it memory-mapped keeps reading its pages (POSIX unlink semantics)."""
    trash = folder.parent / f".del-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _to_device(key: str, outputs: _Outputs, device: torch.device, size: int) -> _Outputs | None:
    """``outputs`` on ``device``, once per process and device; None when it does not fit."""
    device = torch.device(device)
    if device.type == "cpu":
        return outputs  # the memory map: pages are shared with every process reading the entry
    with _LOADED_LOCK:
        found = _LOADED.get((key, str(device)))
        if found is not None:
            return found
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            if size > free // 2:  # leave the other half to the run itself
                return None
        moved = _Outputs(outputs.logits.to(device), [f.to(device) for f in outputs.features])
        _LOADED[(key, str(device))] = moved
        return moved


def _meta(config: Any, paths: list[str], teacher_id: str | None) -> dict[str, Any]:
    """What an entry was built from; ``teacher_id`` (the teacher's run) is how the cluster
    executor finds the entries to ship with a teacher (``workbench.cluster.payload``)."""
    return {
        "teacher_id": teacher_id,
        "teacher": getattr(config, "teacher", None),
        "teacher_run": getattr(config, "teacher_run", None) or None,
        "dataset": getattr(config, "dataset", None),
        "data_path": getattr(config, "data_path", None),
        "split": "train",
        "paths": paths,
        "dtype": str(CACHE_DTYPE),
    }


def _mib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
