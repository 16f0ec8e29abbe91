"""The official files of the torchvision datasets, read without running code from them.

The CIFAR-10/100 "python version" batches (Krizhevsky 2009) are Python pickles, and unpickling
runs whatever code a pickle names: a file planted in the dataset folder of a shared server would
run as the workbench's user. So each CIFAR file is read once, its bytes are checked against the
md5 sum torchvision publishes for the official release (``tv_datasets.CIFAR10.train_list`` etc.),
and only those checked bytes are unpickled; a file swapped between the check and the read is never
run. Any other file (planted, damaged, or a re-pickled copy of the same arrays) is refused with
the fix. Only a test can pass other sums (``read_official(..., checksums=...)``), for the tiny
files it writes; nothing a user sets (config, CLI flag, environment) reaches that argument.

The other formats hold no code. MNIST and Fashion-MNIST idx files (LeCun et al. 1998) are parsed
as raw bytes by torchvision's reader; its fallback to an old ``processed/training.pt`` (read with
``torch.load``, which unpickles) is switched off. Image folders are decoded by PIL and digits is a
CSV inside scikit-learn (both in ``workbench.data.datasets``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tv_datasets

from workbench.errors import DatasetUnavailableError

__all__ = [
    "OFFICIAL",
    "OfficialFiles",
    "OfficialSplits",
    "fetch_official",
    "one_line",
    "read_official",
]


def _idx_only(cls: type) -> type:
    """torchvision's MNIST-style class that reads only the raw idx files (``cls.__name__/raw``).

    torchvision prefers ``processed/training.pt`` and ``test.pt`` when both exist (a format it
    wrote before 0.9) and reads them with ``torch.load``, which unpickles; idx files are parsed
    as plain bytes. Downloads stay torchvision's, md5-checked per archive.
    """

    class IdxOnly(cls):
        @property
        def raw_folder(self) -> str:  # torchvision names the folder after the class
            return os.path.join(self.root, cls.__name__, "raw")

        def _check_legacy_exist(self) -> bool:
            return False

    IdxOnly.__name__ = IdxOnly.__qualname__ = f"IdxOnly{cls.__name__}"
    return IdxOnly


@dataclass(frozen=True)
class OfficialFiles:
    tv: type  # MNIST-style: the reader; CIFAR: where the md5 sums and the archive's URL live
    folder: str  # under the root, with the files
    files: str  # their names, for messages


_IDX_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
OFFICIAL: dict[str, OfficialFiles] = {
    "mnist": OfficialFiles(_idx_only(tv_datasets.MNIST), "MNIST/raw", _IDX_FILES),
    "fashion_mnist": OfficialFiles(
        _idx_only(tv_datasets.FashionMNIST), "FashionMNIST/raw", _IDX_FILES
    ),
    "cifar10": OfficialFiles(
        tv_datasets.CIFAR10,
        "cifar-10-batches-py",
        "data_batch_1 .. data_batch_5, test_batch, batches.meta",
    ),
    "cifar100": OfficialFiles(tv_datasets.CIFAR100, "cifar-100-python", "train, test, meta"),
}
_CIFAR = ("cifar10", "cifar100")
# What reading damaged files raises inside torchvision's idx reader or numpy.
_READ_ERRORS = (RuntimeError, OSError, ValueError, TypeError, KeyError, EOFError)


@dataclass(frozen=True)
class OfficialSplits:
    """The official train and test files as uint8 images ``(N, H, W)`` (MNIST) or
    ``(N, 3, 32, 32)`` (CIFAR) and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


def read_official(
    name: str, root: Path, checksums: Mapping[str, str] | None = None
) -> OfficialSplits:
    """Read ``name``'s files under ``root``; ``DatasetUnavailableError`` with the fix when they
    are missing, damaged or (CIFAR) fail verification. ``checksums`` (file name -> md5) replaces
    the official sums, for tests only."""
    if name in _CIFAR:
        return _read_cifar(name, root, checksums)
    try:
        train, test = (OFFICIAL[name].tv(str(root), train=t, download=False) for t in (True, False))
    except (*_READ_ERRORS, AssertionError) as exc:  # the idx parser asserts the magic number
        if isinstance(exc, RuntimeError) and "not found" in str(exc):  # torchvision's wording
            raise _missing(name, root) from None
        raise _unreadable(name, root, exc) from None
    return OfficialSplits(
        train.data,
        torch.as_tensor(train.targets, dtype=torch.int64),
        test.data,
        torch.as_tensor(test.targets, dtype=torch.int64),
        [str(c) for c in train.classes],
    )


def fetch_official(name: str, root: Path) -> None:
    """Download ``name``'s official files into ``root`` unless they are there (CIFAR: unless
    every file verifies; otherwise the md5-checked archive is fetched and replaces them)."""
    spec = OFFICIAL[name]
    try:
        if name in _CIFAR:
            tv, sums = spec.tv, _official_md5(name)
            folder = root / tv.base_folder
            if not all(_md5_matches(folder / f, md5) for f, md5 in sums.items()):
                tv_datasets.utils.download_and_extract_archive(
                    tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5
                )
            bad = [f for f, md5 in sums.items() if not _md5_matches(folder / f, md5)]
            if bad:
                raise RuntimeError(f"{', '.join(bad)} still fail verification after the download")
        else:
            for train in (True, False):
                spec.tv(str(root), train=train, download=True)
    except Exception as exc:  # network, md5 of the archive, tar: each one means "not downloaded"
        raise DatasetUnavailableError(
            f"could not download {name} into {root} ({one_line(exc)}). Check the internet "
            f"connection and try again, or copy the files ({spec.files}) into {root / spec.folder}"
        ) from None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The exception's text on one line (torchvision's download errors span several lines and
    name the cause on the last ones), cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- CIFAR
class _VerificationError(Exception):
    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


def _read_cifar(name: str, root: Path, checksums: Mapping[str, str] | None) -> OfficialSplits:
    """The official python batches, each verified before it is unpickled. The reading is
    torchvision's ``CIFAR10.__init__`` and ``_load_meta``, on verified bytes."""
    tv = OFFICIAL[name].tv
    folder = root / tv.base_folder
    sums = dict(checksums) if checksums is not None else _official_md5(name)
    if not all((folder / f).is_file() for f in _official_md5(name)):
        raise _missing(name, root)

    def read(file: str):
        try:
            return _verified_unpickle(folder / file, sums.get(file))
        except _VerificationError as exc:
            raise _unverified(name, exc.path) from None
        except (*_READ_ERRORS, pickle.UnpicklingError) as exc:  # only with test checksums
            raise _unreadable(name, root, exc) from None

    def batches(file_list: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows, labels = [], []
        for file, _ in file_list:
            entry = read(file)
            rows.append(entry["data"])  # (n, 3072): the red plane, then green, then blue
            labels += entry["labels"] if "labels" in entry else entry["fine_labels"]
        x = torch.from_numpy(np.vstack(rows).reshape(-1, 3, 32, 32))  # (N, 3, 32, 32) uint8
        return x, torch.as_tensor(labels, dtype=torch.int64)

    train_x, train_y = batches(tv.train_list)
    test_x, test_y = batches(tv.test_list)
    classes = read(tv.meta["filename"])[tv.meta["key"]]
    return OfficialSplits(train_x, train_y, test_x, test_y, [str(c) for c in classes])


def _official_md5(name: str) -> dict[str, str]:
    tv = OFFICIAL[name].tv
    return {**dict(tv.train_list + tv.test_list), tv.meta["filename"]: tv.meta["md5"]}


def _verified_unpickle(path: Path, md5: str | None):
    """Unpickle ``path`` only when its md5 is ``md5``. The file is read once and the checked
    bytes are the ones unpickled, so a file swapped between the check and the read is never run."""
    blob = path.read_bytes()
    if md5 is None or hashlib.md5(blob, usedforsecurity=False).hexdigest() != md5:
        raise _VerificationError(path)
    return pickle.loads(blob, encoding="latin1")


def _md5_matches(path: Path, md5: str) -> bool:
    try:
        return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() == md5
    except OSError:
        return False


# ---------------------------------------------------------------------------- messages
def _missing(name: str, root: Path) -> DatasetUnavailableError:
    spec = OFFICIAL[name]
    return DatasetUnavailableError(
        f"{name} is not in {root}. Download it once with `python -m workbench download {name}` "
        f"(needs internet), or tick 'download' in the app, or copy the files ({spec.files}) "
        f"into {root / spec.folder}"
    )


def _unreadable(name: str, root: Path, exc: BaseException) -> DatasetUnavailableError:
    spec = OFFICIAL[name]
    return DatasetUnavailableError(
        f"{name} could not be read from {root / spec.folder} ({one_line(exc)}). Download it "
        f"again with `python -m workbench download {name}` (needs internet), or tick 'download' "
        f"in the app, or copy the files ({spec.files}) into {root / spec.folder}"
    )


def _unverified(name: str, path: Path) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{name} file {path} failed verification (its md5 is not that of the official {name} "
        "release), so it was not read: CIFAR files are Python pickles, which can run code. "
        f"Replace the files with `python -m workbench download {name}` (needs internet), "
        "or tick 'download' in the app"
    )
