"""What a student learned from its teacher, measured on a fixed probe set after a run.

The probe set is the first ``PROBE_SIZE`` validation samples (the validation split is fixed by
the dataset's own seed, so every run of a dataset is probed on the same samples). It records:

- the linear-CKA matrix of every student candidate layer against every teacher candidate layer
  (Kornblith et al. 2019);
- for each distilled layer pair, the mean cosine between the adapted student feature and the
  teacher feature (only when the run trained adapters);
- for each pair, the SP Gram matrices (Tung & Mori 2019) of student and teacher on a small
  class-sorted subset, so a heatmap shows the class blocks;
- validation accuracy per class and teacher-student agreement.

The teacher's features on the probe set are the same for every run against one teacher, so when
the engine passes its store (and the teacher's run id) they are computed once and kept as an
entry of the teacher-output cache (``workbench.training.teacher_cache``): key over (teacher, probe
samples, layer paths, dtype), built under the store lock into a temporary folder that is
renamed into place, read back memory-mapped, and counted in the cache's LRU size limit with the
training outputs. A suite of runs against one teacher then pays the teacher's probe pass once.

The CKA matrix is taken from each side's centred Gram matrices (``analysis.centred_grams``; the
probe has at most ``PROBE_SIZE`` samples, so an N x N matrix is at most 2 MB). The teacher's
side, most of the work when the teacher is the larger network, depends only on the cache
entry, so it is kept twice: in the entry's folder (``cka_grams.pt``, written by the first run
that computes it, counted in the cache's size like the rest of the entry) for runs in other
processes, and in this process (``workbench.training.teacher_pool.Memo``, by the entry's folder). The next run
against the same teacher computes only its student's side. Without a store nothing is kept
(there is no entry that names the teacher's features).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.distill.similarity import centred_grams, cka_of_grams, gram, pair_cosine
from workbench.distill.taps import FeatureTaps
from workbench.storage.failures import is_disk_full
from workbench.training import teacher_pool as warm
from workbench.training.cache_keys import CACHE_DTYPE, entry_key, per_sample_bytes
from workbench.training.teacher_cache import (
    build_entry,
    cache_limit,
    cache_root,
    complete_entries,
    open_entry,
)

__all__ = [
    "PROBE_SIZE",
    "GRAM_PER_CLASS",
    "gram_subset",
    "per_class_accuracy",
    "run_probe",
    "teacher_probe_features",
]

PROBE_SIZE = 500
GRAM_PER_CLASS = 6
GRAM_MAX = 120
# The teacher side of the probe's CKA, by probe-entry folder: [T, N, N] float64 per teacher.
_TEACHER_GRAMS = warm.Memo(entries=4, max_bytes=512 * 2**20, size=lambda grams: grams.nbytes)
_GRAMS_FILE = "cka_grams.pt"


def gram_subset(labels: torch.Tensor, per_class: int = GRAM_PER_CLASS) -> torch.Tensor:
    """Indices of up to ``per_class`` samples of each class, sorted by class ([M])."""
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    per_class = max(1, min(per_class, GRAM_MAX // max(num_classes, 1)))
    picked = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)]
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy on each class; NaN for a class absent from ``labels``."""
    out = []
    for c in range(num_classes):
        mask = labels == c
        out.append(float((pred[mask] == c).float().mean()) if mask.any() else float("nan"))
    return out


@torch.inference_mode()
def _features(
    model: nn.Module, paths: Sequence[str], x: torch.Tensor, batch: int = 256
) -> list[torch.Tensor]:
    """Hooked features of ``model`` at ``paths`` for all of ``x``: list of [N, *layer shape]."""
    chunks: list[list[torch.Tensor]] = [[] for _ in paths]
    with FeatureTaps(model, list(paths)) as taps:
        for start in range(0, len(x), batch):
            model(x[start : start + batch])
            for i, feat in enumerate(taps.features):
                chunks[i].append(feat.float().cpu())
    return [torch.cat(c) for c in chunks]


def teacher_probe_features(
    teacher: nn.Module,
    paths: Sequence[str],
    x: torch.Tensor,
    *,
    store: Any = None,
    teacher_id: str | None = None,
) -> tuple[list[torch.Tensor], str]:
    """The teacher's features at ``paths`` for the probe samples ``x`` ([N, *layer shape] each,
    float32, CPU) and a note on where they came from. With a ``store`` they are read from the
    teacher-output cache, built there by the first run that needs them; without one, or when
    they would not fit under the cache limit, the teacher runs now."""
    feats, note, _key = _teacher_probe_features(teacher, paths, x, store, teacher_id)
    return feats, note


def _teacher_probe_features(
    teacher: nn.Module, paths: Sequence[str], x: torch.Tensor, store: Any, teacher_id: str | None
) -> tuple[list[torch.Tensor], str, Path | None]:
    """``teacher_probe_features``, and the entry's folder when the features were read from
    the cache: it names them, so it keys what is derived from them. None for features the
    teacher computed now (their batches differ from the entry's build, so they may differ from
    it in the last bit)."""
    paths = list(paths)
    if store is None:
        return _features(teacher, paths, x), "live: no store given", None
    key = entry_key(teacher, teacher_id, paths, x, store)
    folder = cache_root(store) / key
    outputs = open_entry(folder, len(x), len(paths))
    how = "cache: built by an earlier run"
    if outputs is None:
        limit = cache_limit()
        size = len(x) * per_sample_bytes(teacher, paths, x)
        if size > limit:
            return _features(teacher, paths, x), "live: over the teacher cache limit", None
        try:
            with store.lock(f"teacher_outputs:{key}", description="a run caching probe features"):
                outputs = open_entry(folder, len(x), len(paths))  # another run may have built it
                if outputs is None:
                    meta = {"kind": "probe", "teacher_id": teacher_id, "split": "probe"}
                    meta.update(paths=paths, dtype=str(CACHE_DTYPE))
                    build_entry(folder, teacher, paths, x, store, limit, meta=meta)
                    how = "cache: built now"
                    outputs = open_entry(folder, len(x), len(paths))
        except Exception as exc:
            if not is_disk_full(exc, folder.parent):
                raise
            note = "live: the disk holding the teacher cache is full"
            return _features(teacher, paths, x), note, None
        if outputs is None:  # evicted at once by a concurrent builder
            return _features(teacher, paths, x), "live: the cache entry was evicted", None
    return list(outputs.features), how, folder


@torch.inference_mode()
def run_probe(
    *,
    student: nn.Module,
    student_layers: Sequence[str],
    teacher: nn.Module | None,
    teacher_layers: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    adapters: nn.ModuleList | None,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    class_names: Sequence[str],
    device: torch.device,
    store: Any = None,
    teacher_id: str | None = None,
) -> dict[str, Any]:
    """Probe a trained student (and its teacher, when there is one); plain data out. With a
    ``store`` (and the teacher's run id ``teacher_id``), the teacher's probe features come from
    the teacher-output cache (``teacher_probe_features``); the result is the same."""
    was_training = student.training
    student.eval()
    x = val_x[:PROBE_SIZE].to(device)  # [P, C, H, W]
    y = val_y[:PROBE_SIZE]
    s_feats = _features(student, student_layers, x)
    result: dict[str, Any] = {
        "student_layers": list(student_layers),
        "teacher_layers": list(teacher_layers) if teacher is not None else [],
        "pairs": [list(p) for p in pairs],
        "class_names": list(class_names),
        "probe_size": len(x),
        "cka": None,
        "pair_cosine": None,
        "grams": [],
    }
    subset = gram_subset(y)
    result["gram_labels"] = y[subset].numpy()
    if teacher is not None:
        t_feats, result["teacher_features"], key = _teacher_probe_features(
            teacher, teacher_layers, x, store, teacher_id
        )
        result["cka"] = _cka(s_feats, t_feats, key).float().numpy()  # [S, T]
        s_index = {p: i for i, p in enumerate(student_layers)}
        t_index = {p: i for i, p in enumerate(teacher_layers)}
        cosines = []
        for k, (s_path, t_path) in enumerate(pairs):
            s_flat, t_flat = s_feats[s_index[s_path]], t_feats[t_index[t_path]]
            result["grams"].append(
                {
                    "pair": [s_path, t_path],
                    "student": gram(s_flat[subset]).numpy(),  # [M, M]
                    "teacher": gram(t_flat[subset]).numpy(),  # [M, M]
                }
            )
            if adapters is not None:
                cosines.append(_adapted_cosine(adapters[k], s_flat, t_flat, device))
        if adapters is not None:
            result["pair_cosine"] = cosines
    student.train(was_training)
    return result


def _cka(
    s_feats: list[torch.Tensor], t_feats: list[torch.Tensor], entry: Path | None
) -> torch.Tensor:
    """Linear CKA [S, T] of the student's probe features against the teacher's, the teacher's
    centred Gram matrices kept with the features' cache ``entry`` (in this process, and in the
    entry's folder)."""
    if entry is None:
        t_grams = centred_grams(t_feats)
    else:
        t_grams = _TEACHER_GRAMS.get_or_make(str(entry), lambda: _stored_grams(entry, t_feats))
    return cka_of_grams(centred_grams(s_feats), t_grams)


def _stored_grams(entry: Path, t_feats: list[torch.Tensor]) -> torch.Tensor:
    """``centred_grams(t_feats)`` read from the entry's folder, or computed and written there
    (best effort: an entry evicted meanwhile, a full disk or a file that would pass the cache
    limit leaves it unwritten; a damaged file is computed again). The file holds the exact
    float64 values, so a run that reads it gets what one that computes them gets."""
    n = len(t_feats[0]) if t_feats else 0
    path = entry / _GRAMS_FILE
    grams = _read_grams(path)
    if grams is not None and grams.shape == (len(t_feats), n, n):
        return grams
    grams = centred_grams(t_feats)
    if sum(e.bytes for e in complete_entries(entry.parent)) + grams.nbytes > cache_limit():
        return grams
    tmp = entry / f".{_GRAMS_FILE}.{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            torch.save(grams, f)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
    return grams


def _read_grams(path: Path) -> torch.Tensor | None:
    """The float64 tensor in ``path``; None when it is missing, damaged or something else."""
    try:
        grams = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # missing, or a damaged file: computed again by the caller
        return None
    ok = isinstance(grams, torch.Tensor) and grams.dtype == torch.float64
    return grams if ok else None


def _adapted_cosine(
    adapter: nn.Module, s_feat: torch.Tensor, t_feat: torch.Tensor, device: torch.device
) -> float:
    """Mean cosine between adapter(student feature) and the teacher feature, from the features
    already collected for CKA (no second forward pass of either model)."""
    total = 0.0
    for start in range(0, len(s_feat), 256):
        adapted = adapter(s_feat[start : start + 256].to(device)).float().cpu()  # [b, *t_shape]
        total += pair_cosine(adapted, t_feat[start : start + 256]) * len(adapted)
    return total / max(len(s_feat), 1)
