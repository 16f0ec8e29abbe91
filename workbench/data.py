"""Datasets as in-memory tensors: name -> ``DataBundle`` (train/validation, classes, shape).

Every dataset is small enough to hold as one normalized float32 tensor per split, so the engine
indexes tensors directly and never runs a ``DataLoader`` (CIFAR-10's training split is 600 MB
as float32; the largest we load).

- ``digits``: scikit-learn's bundled 8x8 digits (Alpaydin & Kaynak, UCI 1998), 1,797 images;
  works offline. A fixed stratified 80/20 split drawn from ``seed``.
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: torchvision's own dataset classes
  under ``dataset_root()``; train = the official train split, validation = the official test
  split, normalized with each dataset's standard per-channel mean/std.
- ``image_folder``: your own ``path/class_name/image.png`` tree (torchvision ``ImageFolder``),
  RGB, resized to 32x32, stratified 80/20 split from ``seed``, normalized with train statistics.

``load_dataset`` is memoized per process, so repeated runs share one copy: callers must never
modify a bundle's tensors in place (``x = x.to(device)`` and ``x[idx]`` are copies; fine).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from pickle import UnpicklingError

import numpy as np
import torch
from torchvision import datasets as tv_datasets
from torchvision import transforms

from workbench.errors import ConfigError, DatasetUnavailableError, UnknownNameError

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetSpec",
    "dataset_root",
    "download_dataset",
    "list_datasets",
    "load_dataset",
    "train_subset",
]


@dataclass(frozen=True, eq=False)
class DataBundle:
    """One dataset in memory. ``train_x``/``val_x`` are ``[N, C, H, W]`` float32, normalized
    with ``mean``/``std`` (per channel); ``train_y``/``val_y`` are ``[N]`` int64 in
    ``0..num_classes-1``. Shared between runs: never modify the tensors in place."""

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    val_x: torch.Tensor = field(repr=False)
    val_y: torch.Tensor = field(repr=False)
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    bundled: bool = False  # True when it needs neither files on disk nor a download


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", "8x8 grey digits, 1,797 images, 10 classes (in scikit-learn)", True),
        DatasetSpec("mnist", "28x28 grey digits, 60k train / 10k test, 10 classes"),
        DatasetSpec("fashion_mnist", "28x28 grey clothing, 60k train / 10k test, 10 classes"),
        DatasetSpec("cifar10", "32x32 colour photos, 50k train / 10k test, 10 classes"),
        DatasetSpec("cifar100", "32x32 colour photos, 50k train / 10k test, 100 classes"),
        DatasetSpec("image_folder", "your own path/class_name/image.png folders, 32x32 RGB"),
    )
}


def list_datasets() -> list[str]:
    return list(DATASETS)


def dataset_root() -> Path:
    """``$KDWB_HOME/datasets`` when KDWB_HOME is set, else ``./cache/datasets`` (beside the store)."""
    return Path(os.environ.get("KDWB_HOME") or Path.cwd() / "cache") / "datasets"


class _FilesPresentCIFAR10(tv_datasets.CIFAR10):
    """torchvision's CIFAR-10 that checks its batch files exist instead of their md5 sums.

    The md5 sums pin the exact bytes of the 2009 pickles, so a copy a user brings (re-pickled,
    or another mirror) is refused although it holds the same arrays. Everything else, reading
    included, is torchvision's code; a damaged file still fails when it is unpickled, and a
    download is still md5-checked, as the archive, before it is extracted.
    """

    meta = {**tv_datasets.CIFAR10.meta, "md5": None}

    def _check_integrity(self) -> bool:
        folder = Path(self.root, self.base_folder)
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)


class _FilesPresentCIFAR100(tv_datasets.CIFAR100):
    __doc__ = _FilesPresentCIFAR10.__doc__
    meta = {**tv_datasets.CIFAR100.meta, "md5": None}
    _check_integrity = _FilesPresentCIFAR10._check_integrity


@dataclass(frozen=True)
class _Torchvision:
    cls: type
    folder: str  # under the root, with the files torchvision reads
    files: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


_IDX_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
# Standard statistics of each training split (pixels scaled to [0, 1]). For CIFAR-10 the std of
# all training pixels (0.247, 0.243, 0.261), not the (0.2023, 0.1994, 0.2010) of many repos.
_TORCHVISION: dict[str, _Torchvision] = {
    "mnist": _Torchvision(tv_datasets.MNIST, "MNIST/raw", _IDX_FILES, (0.1307,), (0.3081,)),
    "fashion_mnist": _Torchvision(
        tv_datasets.FashionMNIST, "FashionMNIST/raw", _IDX_FILES, (0.2860,), (0.3530,)
    ),
    "cifar10": _Torchvision(
        _FilesPresentCIFAR10,
        "cifar-10-batches-py",
        "data_batch_1 .. data_batch_5, test_batch, batches.meta",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _Torchvision(
        _FilesPresentCIFAR100,
        "cifar-100-python",
        "train, test, meta",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}
_IMAGE_SIZE = 32
_VAL_FRACTION = 0.2
# What reading damaged or missing files raises inside torchvision (a download may fail with more).
_READ_ERRORS = (RuntimeError, OSError, ValueError, TypeError, KeyError, EOFError, UnpicklingError)
_LOAD_LOCK = threading.Lock()


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    data_path: str = "",
    download: bool = False,
    seed: int = 0,
) -> DataBundle:
    """Load ``name`` as a ``DataBundle``, from the process-wide memo when it was loaded before.

    ``root`` (default ``dataset_root()``) holds the torchvision datasets; ``data_path`` is the
    ``image_folder``'s folder; ``download`` lets torchvision fetch missing files; ``seed`` draws
    the digits and image_folder splits (the torchvision datasets use their official split).
    Raises ``UnknownNameError`` or ``DatasetUnavailableError`` with the fix in the message.
    """
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, list_datasets())
    # The memo key holds only what changes the result, so that e.g. every seed shares one CIFAR.
    if name == "digits":
        key = (name, "", "", False, seed, ())
    elif name == "image_folder":
        if not data_path:
            raise ConfigError("dataset image_folder needs data_path: the folder of class folders")
        path = Path(data_path).expanduser().resolve()
        key = (name, "", str(path), False, seed, _folder_stamp(path))
    else:
        base = Path(root).expanduser() if root else dataset_root()
        key = (name, str(base.resolve()), "", bool(download), 0, ())
    with _LOAD_LOCK:  # two jobs starting together load (or download) once, not twice
        return _load_memoized(*key)


def download_dataset(name: str, root: str | Path | None = None) -> Path:
    """Fetch both splits of a torchvision dataset into ``root`` (needs internet); returns the
    folder that holds its files. Files already there are kept and nothing is fetched.

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
        for train in (True, False):
            _torchvision_split(name, base, train=train, download=True)
    return base / _TORCHVISION[name].folder


@functools.lru_cache(maxsize=4)
def _load_memoized(
    name: str, root: str, data_path: str, download: bool, seed: int, stamp: tuple
) -> DataBundle:
    # ``stamp`` is only part of the memo key (see ``_folder_stamp``).
    if name == "digits":
        return _load_digits(seed)
    if name == "image_folder":
        return _load_image_folder(Path(data_path), seed)
    return _load_torchvision(name, Path(root), download)


def _load_digits(seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(digits.target).long()
    return _split_and_normalize("digits", x, y, [str(c) for c in digits.target_names], seed)


def _load_torchvision(name: str, root: Path, download: bool) -> DataBundle:
    spec = _TORCHVISION[name]
    train = _torchvision_split(name, root, train=True, download=download)
    val = _torchvision_split(name, root, train=False, download=False)  # fetched with train
    train_x = _normalize_(_images_to_float(train.data), spec.mean, spec.std)
    return DataBundle(
        name=name,
        train_x=train_x,
        train_y=torch.as_tensor(train.targets, dtype=torch.int64),
        val_x=_normalize_(_images_to_float(val.data), spec.mean, spec.std),
        val_y=torch.as_tensor(val.targets, dtype=torch.int64),
        num_classes=len(train.classes),
        class_names=tuple(str(c) for c in train.classes),
        input_shape=(train_x.shape[1], train_x.shape[2], train_x.shape[3]),
        mean=spec.mean,
        std=spec.std,
    )


def _torchvision_split(name: str, root: Path, *, train: bool, download: bool):
    """The torchvision dataset object; its errors become messages that say how to get the files."""
    spec = _TORCHVISION[name]
    where = root / spec.folder
    # A download can fail in many ways (network, md5, tar): each one means "not downloaded".
    try:
        return spec.cls(str(root), train=train, download=download)
    except Exception as exc:
        if download:
            raise DatasetUnavailableError(
                f"could not download {name} into {root} ({_brief(exc)}). Check the internet "
                f"connection and try again, or copy the files ({spec.files}) into {where}"
            ) from None
        if not isinstance(exc, _READ_ERRORS):
            raise
        if isinstance(exc, RuntimeError) and "not found" in str(exc):  # torchvision's wording
            problem = f"{name} is not in {root}"
        else:
            problem = f"{name} could not be read from {where} ({_brief(exc)})"
        raise DatasetUnavailableError(
            f"{problem}. Download it once with `python -m workbench download {name}` (needs "
            f"internet), or tick 'download' in the app, or copy the files ({spec.files}) into {where}"
        ) from None


def _load_image_folder(path: Path, seed: int) -> DataBundle:
    layout = "path/class_name/image.png, one sub-folder per class"
    if not path.is_dir():
        raise DatasetUnavailableError(f"image folder {path} does not exist; expected {layout}")
    resize = transforms.Compose(
        [transforms.Resize((_IMAGE_SIZE, _IMAGE_SIZE)), transforms.PILToTensor()]
    )
    try:  # the default loader converts every image to RGB
        folder = tv_datasets.ImageFolder(str(path), transform=resize)
    except OSError as exc:  # no class folders, or class folders without images
        raise DatasetUnavailableError(
            f"image folder {path} has no images in class folders ({_brief(exc)}); expected {layout}"
        ) from None
    counts = Counter(folder.targets)
    if len(folder.classes) < 2:
        raise DatasetUnavailableError(
            f"image folder {path} has {len(folder.classes)} class folder(s); "
            f"distillation needs at least 2 ({layout})"
        )
    n, k = len(folder.targets), len(folder.classes)
    n_val = math.ceil(_VAL_FRACTION * n)  # as scikit-learn's train_test_split rounds
    if min(counts.values()) < 2 or n_val < k or n - n_val < k:
        per_class = ", ".join(f"{c}: {counts[i]}" for i, c in enumerate(folder.classes))
        raise DatasetUnavailableError(
            f"image folder {path} has too few images for a stratified 80/20 split ({per_class}); "
            f"every class needs at least 2 images, and the folder about {5 * k} images in all "
            "so that the validation fifth holds one image of each class"
        )
    images = []
    for i, (file, _) in enumerate(folder.samples):
        try:
            images.append(folder[i][0])  # (3, 32, 32) uint8
        except OSError as exc:
            raise DatasetUnavailableError(f"cannot read image {file}: {_brief(exc)}") from None
    x = torch.stack(images).float().div_(255.0)
    y = torch.as_tensor(folder.targets, dtype=torch.int64)
    return _split_and_normalize("image_folder", x, y, list(folder.classes), seed)


def _split_and_normalize(
    name: str, x: torch.Tensor, y: torch.Tensor, class_names: list[str], seed: int
) -> DataBundle:
    """Stratified 80/20 split of ``x`` (N, C, H, W) in [0, 1]; statistics from the train part."""
    from sklearn.model_selection import train_test_split

    train_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=_VAL_FRACTION, stratify=y.numpy(), random_state=seed
    )
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    train_x, val_x = x[train_idx], x[val_idx]  # copies, normalized in place below
    mean = tuple(float(m) for m in train_x.mean(dim=(0, 2, 3)))
    # A constant channel (all-black scans, say) keeps std 1 rather than dividing by zero.
    std = tuple(float(s) if s > 1e-6 else 1.0 for s in train_x.std(dim=(0, 2, 3)))
    return DataBundle(
        name=name,
        train_x=_normalize_(train_x, mean, std),
        train_y=y[train_idx],
        val_x=_normalize_(val_x, mean, std),
        val_y=y[val_idx],
        num_classes=len(class_names),
        class_names=tuple(class_names),
        input_shape=(x.shape[1], x.shape[2], x.shape[3]),
        mean=mean,
        std=std,
    )


def _images_to_float(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) (MNIST) or (N, H, W, C) (CIFAR) -> a new float32 (N, C, H, W) in [0, 1]."""
    t = torch.as_tensor(data)
    t = t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2)
    return t.contiguous().float().div_(255.0)  # contiguous while uint8: 1/4 of the memory


def _normalize_(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std per channel, in place: ``x`` is always a fresh tensor of ours here, and
    CIFAR's 600 MB train split should not be copied twice more."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _folder_stamp(path: Path) -> tuple:
    """Modification times of the folder and its class folders: adding or removing an image
    changes them, so the memo reloads an edited folder (an image overwritten in place does not)."""
    try:
        entries = [path, *(p for p in path.iterdir() if p.is_dir())]
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in entries))
    except OSError:
        return ()


def _brief(exc: BaseException, limit: int = 300) -> str:
    """The exception's text on one line (torchvision's download errors span several lines and
    name the cause on the last ones), cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
