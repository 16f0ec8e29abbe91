"""Datasets as in-memory tensors: name -> ``DataBundle`` (train / validation / test splits,
classes, shape).

Every dataset is small enough to hold as one normalized float32 tensor per split, so the engine
indexes tensors directly and never runs a ``DataLoader`` (CIFAR-10's training split is 550 MB
as float32; the largest we load).

Three splits, with distinct jobs: the model trains on ``train``; anything that adapts or selects
(a weighting scheme, a best epoch) looks at ``validation`` only; the headline accuracy is measured
once on ``test``. Every split is drawn by ``stratified_split`` from a fixed split seed, so every
run of a dataset sees the same three sets, and the normalization statistics come from ``train``.

- ``digits``: scikit-learn's bundled 8x8 digits (Alpaydin & Kaynak, UCI 1998), 1,797 images;
  works offline. Stratified 60 / 20 / 20 (1,078 / 360 / 359).
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: the official files under
  ``dataset_root()``. The official test files are ``test``; a stratified tenth of the official
  training files is held out as ``validation`` (CIFAR: 45,000 / 5,000 / 10,000).
- ``image_folder``: your own ``path/class_name/image.png`` tree (torchvision ``ImageFolder``'s
  layout), RGB, resized to 32x32, stratified 60 / 20 / 20. It is listed and checked once by
  ``workbench.data.image_files`` (no link loops, no file twice, regular files only), before the
  data lock is taken, and exactly the files of that listing are read.

No data file is ever unpickled unless verified: ``workbench.data.safe_files`` reads the official
files (CIFAR's pickles only after their md5 matches the official release's).

``load_dataset`` is memoized per process, so repeated runs share one copy: callers must never
modify a bundle's tensors in place (``x = x.to(device)`` and ``x[idx]`` are copies; fine).
"""

from __future__ import annotations

import functools
import os
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from workbench.config.choices import DATASETS, DatasetSpec, list_datasets
from workbench.data.image_files import (
    LAYOUT,
    FolderListing,
    ImageFile,
    list_image_folder,
    open_listed,
)
from workbench.data.roots import check_data_path
from workbench.data.safe_files import (
    OFFICIAL,
    OfficialSplits,
    fetch_official,
    one_line,
    read_official,
)
from workbench.errors import ConfigError, DatasetUnavailableError, UnknownNameError

__all__ = [
    "DATASETS",
    "SPLIT_SEED",
    "SPLIT_VERSION",
    "DataBundle",
    "DatasetSpec",
    "dataset_root",
    "download_dataset",
    "list_datasets",
    "load_dataset",
    "stratified_split",
    "train_subset",
]


@dataclass(frozen=True, eq=False)
class DataBundle:
    """One dataset in memory. ``train_x``/``val_x``/``test_x`` are ``[N, C, H, W]`` float32,
    normalized with ``mean``/``std`` (per channel, from the train split); ``*_y`` are ``[N]``
    int64 in ``0..num_classes-1``. ``val_*`` is the validation split (for anything that adapts
    or selects), ``test_*`` the test split (for the reported accuracy). Shared between runs:
    never modify the tensors in place."""

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    val_x: torch.Tensor = field(repr=False)
    val_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def split_sizes(self) -> dict[str, int]:
        """Images per split: ``{"train": n, "validation": n, "test": n}``."""
        return {"train": len(self.train_y), "validation": len(self.val_y), "test": len(self.test_y)}


def dataset_root() -> Path:
    """``$KDWB_HOME/datasets`` when KDWB_HOME is set, else ``./cache/datasets`` (beside the store)."""
    return Path(os.environ.get("KDWB_HOME") or Path.cwd() / "cache") / "datasets"


# ---------------------------------------------------------------------------- splits
# Every caller uses this seed, so all runs of a dataset share one train / validation / test split
# (comparisons pair runs on the same test images). Changing it changes every dataset's splits.
SPLIT_SEED = 0
# Bumped whenever any dataset's splits or normalization change (2: train / validation / test,
# statistics from train). A model trained under another version may have seen today's test
# images, so whatever reuses trained models by config (the teacher lookup) must key on it too.
SPLIT_VERSION = 2
# One period of a split pattern: sample i of the class-sorted, shuffled order goes to split
# PATTERN[i % len(PATTERN)]. Interleaved so that every class's share of every split is within
# one sample of the exact fraction, whatever the class sizes (see ``stratified_split``).
_THREE_WAY = ("train", "validation", "train", "test", "train")  # 60 / 20 / 20
_HOLD_OUT = ("validation",) + ("train",) * 9  # 90 / 10 of the official training files


def stratified_split(
    labels: np.ndarray | torch.Tensor, pattern: tuple[str, ...], seed: int
) -> dict[str, np.ndarray]:
    """Split sample indices by class: ``{split name: sorted indices}``, one entry per name in
    ``pattern``, each split taking ``pattern.count(name) / len(pattern)`` of every class.

    Systematic stratified sampling: shuffle the indices with ``seed``, sort them by class (stably,
    so each class stays shuffled), then deal position ``i`` to ``pattern[i % len(pattern)]``. A
    class is a run of consecutive positions, so each split receives, of a class of ``n``, the
    exact ``n * fraction`` up to less than one sample (checked for the two patterns here by
    ``tests/test_data.py``), and the split sizes overall are exact too. ``RandomState`` is used
    because numpy freezes its stream, so a numpy upgrade never moves an image between splits.
    """
    y = np.asarray(labels)
    order = np.random.RandomState(seed).permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]
    slot = np.arange(len(y)) % len(pattern)
    return {
        name: np.sort(order[np.isin(slot, [i for i, p in enumerate(pattern) if p == name])])
        for name in dict.fromkeys(pattern)
    }


_IMAGE_SIZE = 32
_LOAD_LOCK = threading.Lock()


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    data_path: str = "",
    download: bool = False,
    seed: int = SPLIT_SEED,
    checksums: Mapping[str, str] | None = None,
) -> DataBundle:
    """Load ``name`` as a ``DataBundle``, from the process-wide memo when it was loaded before.

    ``root`` (default ``dataset_root()``) holds the torchvision datasets; ``data_path`` is the
    ``image_folder``'s folder; ``download`` lets torchvision fetch missing files; ``seed`` draws
    the splits (keep the default: every run should see the same test set).

    ``checksums`` (file name -> md5) replaces torchvision's sums of the official CIFAR files, for
    tests that write their own tiny CIFAR files. It is deliberately not a ``RunConfig`` field nor
    an environment variable: no user of the app or the CLI can make the loader trust a file.

    Raises ``UnknownNameError`` or ``DatasetUnavailableError`` with the fix in the message, and
    ``ConfigError`` for an ``image_folder`` outside the instance's data roots.
    """
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, list_datasets())
    sums = tuple(sorted(checksums.items())) if checksums is not None else None
    # The memo key holds only what changes the result, so that e.g. every run shares one CIFAR.
    if name == "digits":
        key = (name, "", "", False, seed, None, None)
    elif name == "image_folder":
        if not data_path:
            raise ConfigError("dataset image_folder needs data_path: the folder of class folders")
        path = check_data_path(data_path)  # under the data roots (workbench.data.roots)
        # Listed and checked here, outside the lock: a FIFO, a loop or a dead network share in
        # one user's folder must not stall every other user's load.
        key = (name, "", str(path), False, seed, list_image_folder(path), None)
    else:
        base = Path(root).expanduser() if root else dataset_root()
        key = (name, str(base.resolve()), "", bool(download), seed, None, sums)
    with _LOAD_LOCK:  # two jobs starting together load (or download) once, not twice
        return _load_memoized(*key)


def download_dataset(name: str, root: str | Path | None = None) -> Path:
    """Fetch a torchvision dataset's official files into ``root`` (needs internet); returns the
    folder that holds them. Files already there are kept when they are complete (CIFAR: when
    every file verifies; otherwise the archive is fetched again and replaces them).

    ``digits`` ships with scikit-learn: nothing to fetch, and the folder of its bundled file is
    returned. ``image_folder`` is your own folder, so asking to download it is a ``ConfigError``.
    """
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, list_datasets())
    if name == "digits":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "data"
    if name == "image_folder":
        raise ConfigError(
            "image_folder is your own folder of class folders (path/class_name/image.png); "
            "there is nothing to download: set data_path to it"
        )
    base = Path(root).expanduser() if root else dataset_root()
    with _LOAD_LOCK:
        fetch_official(name, base)
    return base / OFFICIAL[name].folder


@functools.lru_cache(maxsize=4)
def _load_memoized(
    name: str,
    root: str,
    data_path: str,
    download: bool,
    seed: int,
    listing: FolderListing | None,
    checksums: tuple[tuple[str, str], ...] | None,
) -> DataBundle:
    # ``listing`` (image folders only) is in the key too: a folder edited since is listed anew.
    if name == "digits":
        return _load_digits(seed)
    if name == "image_folder" and listing is not None:
        return _load_image_folder(listing, seed)
    if download:
        fetch_official(name, Path(root))
    files = read_official(name, Path(root), dict(checksums) if checksums is not None else None)
    return _holdout_bundle(name, files, seed)


def _load_digits(seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(digits.target).long()
    split = stratified_split(y, _THREE_WAY, seed)
    return _bundle("digits", x, y, split, [str(c) for c in digits.target_names])


# ---------------------------------------------------------------------------- image folders
_RESIZE = transforms.Compose(
    [transforms.Resize((_IMAGE_SIZE, _IMAGE_SIZE)), transforms.PILToTensor()]
)


def _load_image_folder(listing: FolderListing, seed: int) -> DataBundle:
    """The images of ``listing`` (checked by ``workbench.data.image_files``), and only them."""
    path, classes = listing.folder, listing.classes
    if len(classes) < 2:
        raise DatasetUnavailableError(
            f"image folder {path} has {len(classes)} class folder(s); "
            f"distillation needs at least 2 ({LAYOUT})"
        )
    counts = Counter(file.label for file in listing.files)
    least = len(_THREE_WAY)  # a class of 5 gives train 3, validation 1, test 1
    if min(counts.values()) < least:
        # Errors name class folders and images only under the data roots (workbench.data.roots):
        # outside them, a message would list any folder the server can read.
        per_class = ", ".join(f"{c}: {counts[i]}" for i, c in enumerate(classes))
        if not listing.named:
            short = sum(n < least for n in counts.values())
            per_class = f"{short} of its {len(classes)} classes have fewer"
        raise DatasetUnavailableError(
            f"image folder {path} has too few images for a stratified 60/20/20 "
            f"train/validation/test split ({per_class}); every class needs at least {least} "
            "images, so that validation and test each hold one of it"
        )
    x = torch.stack([_read_image(listing, i, file) for i, file in enumerate(listing.files)])
    y = torch.as_tensor([file.label for file in listing.files], dtype=torch.int64)
    split = stratified_split(y, _THREE_WAY, seed)
    return _bundle("image_folder", x, y, split, list(classes))


def _read_image(listing: FolderListing, i: int, file: ImageFile) -> torch.Tensor:
    """Image ``i`` of ``listing`` as (3, 32, 32) uint8, converted to RGB as torchvision's
    default loader does."""
    try:
        with open_listed(listing, file) as stream:
            image = Image.open(stream).convert("RGB")
        return _RESIZE(image)
    except (OSError, Image.DecompressionBombError) as exc:  # damaged, or a pixel bomb
        where = os.path.join(listing.folder, file.name)
        what = (
            f"image {where}: {one_line(exc)}"
            if listing.named
            else f"image {i + 1} of {listing.folder}"
        )
        raise DatasetUnavailableError(f"cannot read {what}") from None


# ---------------------------------------------------------------------------- bundles
def _holdout_bundle(name: str, files: OfficialSplits, seed: int) -> DataBundle:
    """Official train and test files: a stratified tenth of train becomes validation."""
    for part, x, y in (
        ("training", files.train_x, files.train_y),
        ("test", files.test_x, files.test_y),
    ):
        if len(x) != len(y):  # else the surplus images or labels would be dropped silently
            raise DatasetUnavailableError(
                f"{name}'s {part} files do not match: {len(x)} images but {len(y)} labels. "
                f"Download the files again with `python -m workbench download {name}`"
            )
    split = stratified_split(files.train_y, _HOLD_OUT, seed)
    split["test"] = np.arange(len(files.test_y))
    x = {"train": files.train_x, "validation": files.train_x, "test": files.test_x}
    y = {"train": files.train_y, "validation": files.train_y, "test": files.test_y}
    return _bundle(name, x, y, split, files.classes)


def _bundle(
    name: str,
    x: torch.Tensor | dict[str, torch.Tensor],
    y: torch.Tensor | dict[str, torch.Tensor],
    split: dict[str, np.ndarray],
    class_names: list[str],
) -> DataBundle:
    """Index each split out of ``x`` (uint8, or float in [0, 1]; ``(N, H, W)`` or
    ``(N, C, H, W)``; one tensor, or one per split name) and normalize it with the train
    split's per-channel statistics."""
    parts = {}
    for part in ("train", "validation", "test"):
        if len(split[part]) == 0:
            raise DatasetUnavailableError(
                f"{name} has too few images to fill a {part} split ({len(split['train'])} "
                f"train, {len(split['validation'])} validation, {len(split['test'])} test)"
            )
        idx = torch.from_numpy(split[part])
        xs = x[part] if isinstance(x, dict) else x
        ys = y[part] if isinstance(y, dict) else y
        parts[part] = (_images_to_float(xs[idx]), ys[idx])  # copies, normalized in place below
    mean, std = _channel_stats(parts["train"][0])
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = parts.values()
    return DataBundle(
        name=name,
        train_x=_normalize_(train_x, mean, std),
        train_y=train_y,
        val_x=_normalize_(val_x, mean, std),
        val_y=val_y,
        test_x=_normalize_(test_x, mean, std),
        test_y=test_y,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        input_shape=(train_x.shape[1], train_x.shape[2], train_x.shape[3]),
        mean=mean,
        std=std,
    )


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of ``x`` (N, C, H, W), summed in float64 chunks so
    that CIFAR's 46M values per channel lose no precision and need no full-size temporary.
    A constant channel (all-black scans, say) keeps std 1 rather than dividing by zero."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for chunk in x.split(1024):
        chunk = chunk.double()
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = x.numel() // x.shape[1]
    mean = total / count
    var = (squares - count * mean.square()).clamp_min(0) / max(1, count - 1)
    std = var.sqrt()
    return (
        tuple(float(m) for m in mean),
        tuple(float(s) if s > 1e-6 else 1.0 for s in std),
    )


def _images_to_float(t: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) (MNIST) or (N, C, H, W) (CIFAR, image folders) -> a new float32
    (N, C, H, W) in [0, 1]; a float tensor is taken as already scaled to [0, 1] (digits)."""
    t = t.unsqueeze(1) if t.dim() == 3 else t
    if t.dtype == torch.uint8:
        return t.contiguous().float().div_(255.0)  # contiguous while uint8: 1/4 of the memory
    return t.float().contiguous()


def _normalize_(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std per channel, in place: ``x`` is always a fresh tensor of ours here, and
    CIFAR's 600 MB train split should not be copied twice more."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def train_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a stratified ``fraction`` of a training split ([M], sorted), drawn with a fixed
    ``seed`` so that every variant and seed of a suite trains on the same images: from each
    class ``c`` with ``n_c`` samples, ``max(1, round(fraction * n_c))`` drawn without
    replacement. ``fraction >= 1`` gives every index. The reduced-data recipe of
    ``RunConfig.train_fraction`` (the teacher keeps the whole split)."""
    n = len(labels)
    if fraction >= 1:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()  # [n_c]
        keep = max(1, round(fraction * len(idx)))
        picked.append(idx[torch.randperm(len(idx), generator=generator)[:keep]])
    return torch.cat(picked).sort().values
