"""What a finished run records for the per-image and embedding views (issue 21 item 1): on a
fixed, stratified subset of the test split (at most ``VIEW_SIZE`` images), each model's
penultimate embeddings and its logits, the teacher's beside the student's.

- **The subset** (``view_subset``) takes the test images class by class in turn (the first
  image of each class, then the second, ...) until ``VIEW_SIZE``: every class is within one
  image of an equal share, and every run of a dataset sees the same images (the test split is
  fixed by the dataset's seed).
- **The penultimate embedding** is the input of the model's classifier: the last ``nn.Linear``
  in module order, whose output is checked to be the model's logits (``classifier_path``).
- **What is kept:** the embedding's first ``EMBED_COMPONENTS`` principal components (PCA of the
  model's own centred features, ``workbench.insight.embeddings.pca_scores``) and the logits,
  as float16. The 2-D maps are PCA (the first two columns) or t-SNE of these components, the
  usual recipe (t-SNE on a PCA reduction); the k-NN accuracy and silhouette of the run table
  are measured on the full embedding before the reduction. The store cost is then at most
  ``VIEW_SIZE x (EMBED_COMPONENTS + K) x 2 bytes`` per model, whatever the architecture.
- **The teacher's side** depends only on the teacher and the images, so with a store it is
  computed once per teacher and kept under ``teacher_view:<entry key>`` (like the teacher's
  predictions in ``workbench.training.teacher_cache``), then copied into each run's probe.

Arrays are stored packed (``pack``: dtype, shape and base64 bytes), so the probe, its pickle in
the index and its JSON in the run's manifest hold the same compact value; ``unpack_view`` turns
a probe's view back into numpy arrays. A probe written before these views has no ``test_view``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.insight.embeddings import knn_accuracy, pca_scores, silhouette
from workbench.storage.failures import is_disk_full
from workbench.training.cache_keys import entry_key

__all__ = [
    "EMBED_COMPONENTS",
    "VIEW_SIZE",
    "classifier_path",
    "embeddings_and_logits",
    "model_view",
    "pack",
    "run_view",
    "unpack",
    "unpack_view",
    "view_subset",
]

VIEW_SIZE = 1000
EMBED_COMPONENTS = 64
VIEW_FORMAT = 1  # bump when the view's layout changes; the teacher's key carries it


def view_subset(labels: torch.Tensor, limit: int = VIEW_SIZE) -> torch.Tensor:
    """Positions ([M] int64, ascending) of at most ``limit`` test images, classes in turn."""
    labels = labels.cpu()
    per_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]
    picked: list[int] = []
    depth = 0
    while len(picked) < limit and any(depth < len(p) for p in per_class):
        picked.extend(int(p[depth]) for p in per_class if depth < len(p))
        depth += 1
    return torch.tensor(sorted(picked[:limit]), dtype=torch.long)


def classifier_path(model: nn.Module) -> str:
    """The module path of the model's classifier: its last ``nn.Linear``. ValueError without."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linear[-1]


@torch.inference_mode()
def embeddings_and_logits(
    model: nn.Module, x: torch.Tensor, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings [N, D], logits [N, K])`` (float32, CPU) of ``x`` in eval mode: the
    classifier's flattened input and the model's output. ValueError when the classifier's
    output is not the logits (the embedding would not be the penultimate one)."""
    classifier = model.get_submodule(classifier_path(model))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = classifier.register_forward_hook(lambda _m, args, out: seen.append((args[0], out)))
    was_training = model.training
    model.eval()
    embeddings, logits = [], []
    try:
        for start in range(0, len(x), batch):
            seen.clear()
            out = model(x[start : start + batch])  # [b, K]
            if len(seen) != 1 or seen[0][1].shape != out.shape or not torch.equal(seen[0][1], out):
                raise ValueError(f"the last nn.Linear of {type(model).__name__} is not its output")
            embeddings.append(seen[0][0].flatten(1).float().cpu())  # [b, D]
            logits.append(out.float().cpu())
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(embeddings), torch.cat(logits)


def pack(array: np.ndarray | torch.Tensor, dtype: str = "float16") -> dict[str, Any]:
    """``{"dtype", "shape", "b64"}``: the array's bytes in ``dtype``, base64 (JSON-safe)."""
    values = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    return {"dtype": dtype, "shape": list(values.shape), "b64": base64.b64encode(values).decode()}


def unpack(packed: Mapping[str, Any]) -> np.ndarray:
    """The array ``pack`` packed (read-only), as float32 for floats. ValueError when damaged."""
    dtype = np.dtype(str(packed["dtype"]))
    if dtype.kind not in "fiu":
        raise ValueError(f"unexpected dtype {dtype}")
    values = np.frombuffer(base64.b64decode(packed["b64"]), dtype=dtype)
    values = values.reshape([int(n) for n in packed["shape"]])
    return values.astype(np.float32) if dtype.kind == "f" else values


def model_view(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """One model's part of the view: its packed PCA components and logits, the variance share
    the components keep, and the k-NN accuracy and silhouette of its full embeddings."""
    emb, logits = embeddings_and_logits(model, x)  # [M, D], [M, K]
    features = emb.double().numpy()
    y = labels.cpu().numpy()
    scores, kept = pca_scores(features, EMBED_COMPONENTS)  # [M, c]
    return {
        "embedding": pack(scores),
        "logits": pack(logits),
        "variance_kept": float(kept),
        "dimensions": int(emb.shape[1]),
        "knn_acc": float(knn_accuracy(features, y)),
        "silhouette": float(silhouette(features, y)),
    }


def _teacher_view(
    teacher: nn.Module, teacher_id: str | None, x: torch.Tensor, y: torch.Tensor, store: Any
) -> dict[str, Any]:
    """``model_view`` of the teacher, kept in ``store`` per teacher and images (None: not)."""
    if store is None:
        return model_view(teacher, x, y)
    key = f"teacher_view:{VIEW_FORMAT}:" + entry_key(
        teacher, teacher_id, [classifier_path(teacher)], x, store
    )
    found = store.get(key)
    if isinstance(found, dict) and {"embedding", "logits", "knn_acc"} <= set(found):
        return found
    view = model_view(teacher, x, y)
    try:
        store.set(key, view)
    except Exception as exc:  # only a cache: a full disk costs the teacher's pass next time
        if not is_disk_full(exc, store.home):
            raise
    return view


def run_view(
    *,
    student: nn.Module,
    teacher: nn.Module | None,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    device: torch.device,
    store: Any = None,
    teacher_id: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(probe entry, metrics)`` of a finished student: the view on the test subset, and its
    ``knn_acc`` / ``silhouette`` (and the teacher's) for the run record."""
    index = view_subset(test_y)
    x = test_x[index].to(device)  # [M, C, H, W]
    y = test_y[index].cpu()  # [M]
    view: dict[str, Any] = {
        "format": VIEW_FORMAT,
        "index": index.tolist(),
        "labels": y.tolist(),
        "student": model_view(student, x, y),
        "teacher": _teacher_view(teacher, teacher_id, x, y, store) if teacher is not None else None,
    }
    teacher_view = view["teacher"] or {}
    metrics = {
        "knn_acc": view["student"]["knn_acc"],
        "silhouette": view["student"]["silhouette"],
        "teacher_knn_acc": teacher_view.get("knn_acc"),
        "teacher_silhouette": teacher_view.get("silhouette"),
    }
    return {"test_view": view}, metrics


def unpack_view(probe: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A probe's view with numpy arrays: ``index``, ``labels`` [M] int64 and, per side
    (``student``, ``teacher`` or None), ``embedding`` [M, c] and ``logits`` [M, K] float32
    with its scores. None for a probe without one (written before the views: run it again)
    or with a damaged one."""
    view = (probe or {}).get("test_view")
    if not isinstance(view, Mapping):
        return None
    try:
        out: dict[str, Any] = {
            "index": np.asarray(view["index"], dtype=np.int64),
            "labels": np.asarray(view["labels"], dtype=np.int64),
        }
        for side in ("student", "teacher"):
            part = view.get(side)
            out[side] = None if part is None else _unpack_side(part, len(out["labels"]))
    except (KeyError, TypeError, ValueError):
        return None
    return out if out["student"] is not None else None


def _unpack_side(part: Mapping[str, Any], m: int) -> dict[str, Any]:
    side = dict(part)
    side["embedding"], side["logits"] = unpack(part["embedding"]), unpack(part["logits"])
    if len(side["embedding"]) != m or len(side["logits"]) != m:
        raise ValueError("the view's arrays do not match its labels")
    return side
