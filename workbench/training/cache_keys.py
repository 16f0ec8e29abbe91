"""Keys and sizes of the teacher-output cache's entries (``workbench.training.teacher_cache``).

A key hashes everything that changes a teacher's outputs: the entry format, the teacher (its run
id and weights file, or a digest of its weights), the input tensor (shape and a digest of its
values, so dataset, split, transform and normalization), the hooked layer paths and the dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import torch
from torch import nn

from workbench.distill.taps import FeatureTaps

__all__ = ["CACHE_DTYPE", "FORMAT", "entry_key", "per_sample_bytes"]

FORMAT = 1  # bump when the entry layout changes: old entries then miss and age out
CACHE_DTYPE = torch.float32


def entry_key(
    teacher: nn.Module,
    teacher_id: str | None,
    paths: list[str],
    train_x: torch.Tensor,
    store: Any,
) -> str:
    parts: dict[str, Any] = {
        "format": FORMAT,
        "teacher_class": type(teacher).__name__,
        "teacher": _teacher_identity(teacher, teacher_id, store),
        "data": _tensor_digest(train_x),
        "paths": paths,
        "dtype": str(CACHE_DTYPE),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _teacher_identity(teacher: nn.Module, teacher_id: str | None, store: Any) -> Any:
    """The run id and its checkpoint file's size and mtime; the weights' digest without one."""
    if teacher_id and hasattr(store, "weights_path"):
        with contextlib.suppress(OSError):
            stat = store.weights_path(teacher_id).stat()
            return [teacher_id, stat.st_size, stat.st_mtime_ns]
    digest = hashlib.sha256()
    for name, value in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _tensor_digest(x: torch.Tensor, rows: int = 1024) -> list[Any]:
    """Shape, dtype, a hash of up to ``rows`` evenly spaced samples and an integer checksum of
    the bits of all of them: cheap for CIFAR-sized tensors, exact (the same on every device and
    memory layout), and any change of dataset, split, transform or normalization changes it."""
    stride = max(1, len(x) // rows)
    sample = x[::stride].detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    checksum = int(x.detach().view(ints).sum(dtype=torch.int64))  # integer sums: order-free
    return [list(x.shape), str(x.dtype), hashlib.sha256(sample.numpy()).hexdigest(), checksum]


@torch.inference_mode()
def per_sample_bytes(teacher: nn.Module, paths: list[str], train_x: torch.Tensor) -> int:
    """Bytes of one sample's cached logits and features, from a forward pass on 2 samples."""
    was_training = teacher.training
    teacher.eval()
    try:
        with FeatureTaps(teacher, paths) as taps:
            logits = teacher(train_x[:2])
            numel = logits[0].numel() + sum(f[0].numel() for f in taps.features)
    finally:
        teacher.train(was_training)
    return numel * CACHE_DTYPE.itemsize
