"""workbench.data.datasets and workbench.data.safe_files: the three splits, the readers on tiny files in their
real on-disk formats (idx-ubyte for MNIST, pickled batches for CIFAR, PNG folders) written here,
and the faults: planted pickles are never run, damaged files give one line with the fix."""

from __future__ import annotations

import hashlib
import os
import pickle
import shlex
import struct
import threading
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv_datasets

from workbench.data import datasets as data_module
from workbench.data.datasets import (
    DATASETS,
    DataBundle,
    dataset_root,
    download_dataset,
    list_datasets,
    load_dataset,
    stratified_split,
)
from workbench.errors import ConfigError, DatasetUnavailableError, UnknownNameError


def _pixels(x: torch.Tensor, bundle: DataBundle) -> np.ndarray:
    """Undo the normalization: (N, C, H, W) -> uint8 pixel values."""
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return (x * std + mean).mul(255).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------------------- registry
def test_registry_order_and_bundled_flag():
    assert list_datasets() == [
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "image_folder",
    ]
    assert [n for n, spec in DATASETS.items() if spec.bundled] == ["digits"]
    assert all(spec.name == n and spec.description for n, spec in DATASETS.items())


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("imagenet")
    assert "unknown dataset 'imagenet'" in str(info.value)
    assert all(name in str(info.value) for name in list_datasets())
    with pytest.raises(UnknownNameError):
        download_dataset("imagenet")


def test_dataset_root_follows_kdwb_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KDWB_HOME", str(tmp_path))
    assert dataset_root() == tmp_path / "datasets"
    monkeypatch.delenv("KDWB_HOME")
    assert dataset_root() == Path.cwd() / "cache" / "datasets"


# ---------------------------------------------------------------------------- splits
FRACTIONS = {  # the fractions the loaders promise, written out by hand
    "three_way": {"train": 0.6, "validation": 0.2, "test": 0.2},
    "hold_out": {"train": 0.9, "validation": 0.1},
}


def _check_stratified(parts: dict[str, list[int]], fractions: dict[str, float]) -> None:
    """Every split holds, of every class, its fraction of that class up to one sample."""
    total = Counter(label for labels in parts.values() for label in labels)
    for part, labels in parts.items():
        counts = Counter(labels)
        for c, n in total.items():
            assert abs(counts[c] - fractions[part] * n) < 1, (part, c, counts[c], n)


@pytest.mark.parametrize(
    ("pattern", "fractions"),
    [
        (data_module._THREE_WAY, FRACTIONS["three_way"]),
        (data_module._HOLD_OUT, FRACTIONS["hold_out"]),
    ],
)
def test_stratified_split_is_a_stratified_partition(pattern, fractions):
    rng = np.random.default_rng(0)
    cases = [rng.integers(0, k, n) for k, n in [(2, 7), (3, 50), (10, 1797), (7, 333), (100, 1000)]]
    cases += [np.repeat(np.arange(5), [1, 2, 3, 4, 5]), np.zeros(11, dtype=int)]  # tiny classes
    for y in cases:
        split = stratified_split(y, pattern, seed=0)
        assert set(split) == set(fractions)
        joined = np.concatenate(list(split.values()))
        assert sorted(joined.tolist()) == list(range(len(y)))  # disjoint, and covers all
        _check_stratified({k: y[v].tolist() for k, v in split.items()}, fractions)
        for part, idx in split.items():  # the overall sizes are exact too
            assert abs(len(idx) - fractions[part] * len(y)) < 1
        again = stratified_split(y, pattern, seed=0)
        assert all(np.array_equal(split[k], again[k]) for k in split)  # stable
    y = rng.integers(0, 10, 500)
    other = stratified_split(y, pattern, seed=1)
    assert not np.array_equal(
        stratified_split(y, pattern, seed=0)["validation"], other["validation"]
    )


# ---------------------------------------------------------------------------- digits
def test_digits_shapes_dtypes_and_normalization():
    data = load_dataset("digits")
    assert data.split_sizes() == {"train": 1078, "validation": 360, "test": 359}
    assert data.train_x.shape == (1078, 1, 8, 8) and data.val_x.shape == (360, 1, 8, 8)
    assert data.test_x.shape == (359, 1, 8, 8) and data.test_y.dtype == torch.int64
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.class_names == tuple(str(i) for i in range(10))
    # Statistics of the train split only: exactly standard there, not on the other splits.
    assert abs(float(data.train_x.mean())) < 1e-5
    assert abs(float(data.train_x.std()) - 1.0) < 1e-5
    assert abs(float(data.test_x.mean())) > 1e-4 and abs(float(data.val_x.mean())) > 1e-4
    # Pixels were 0..16, scaled to [0, 1] before normalizing.
    for x in (data.train_x, data.val_x, data.test_x):
        raw = x * data.std[0] + data.mean[0]
        assert float(raw.min()) > -1e-5 and float(raw.max()) < 1 + 1e-5
        assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-4)


def test_digits_splits_are_stratified_disjoint_and_cover_the_data():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    parts = {"train": data.train_y, "validation": data.val_y, "test": data.test_y}
    _check_stratified({k: v.tolist() for k, v in parts.items()}, FRACTIONS["three_way"])
    # (image, label) rows of the three splits together are exactly scikit-learn's 1,797, each
    # once (duplicates in the data would be counted, so this is a multiset equality).
    digits = load_digits()
    expected = sorted(
        (*row, label)
        for row, label in zip(digits.data.astype(int).tolist(), digits.target.tolist(), strict=True)
    )
    assert _labelled_rows(data) == expected


def test_digits_split_is_stable_and_depends_on_the_seed_only():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    assert a is b  # memoized
    data_module._load_memoized.cache_clear()
    fresh = load_dataset("digits")
    assert fresh is not a
    for field_name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field_name), getattr(fresh, field_name)), field_name
    c = load_dataset("digits", seed=1)
    assert not torch.equal(a.test_y, c.test_y) or not torch.equal(a.test_x, c.test_x)
    assert _labelled_rows(a) == _labelled_rows(c)  # same samples overall


def _labelled_rows(data: DataBundle) -> list[tuple[int, ...]]:
    rows = []
    for x, y in (
        (data.train_x, data.train_y),
        (data.val_x, data.val_y),
        (data.test_x, data.test_y),
    ):
        pixels = ((x * data.std[0] + data.mean[0]).flatten(1) * 16).round().int().tolist()
        rows += [(*row, label) for row, label in zip(pixels, y.tolist(), strict=True)]
    return sorted(rows)


# ---------------------------------------------------------------------------- MNIST formats
def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 9, 1, 0, 2, 2, 9, 1] * 2, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([3, 4, 5, 9], dtype=np.uint8),
    }
    for name, array in arrays.items():
        _write_idx(root / folder / "raw" / name, array)
    return arrays


def _rows(x: np.ndarray, labels) -> list[tuple[int, ...]]:
    """Images with their labels as sortable rows, to compare splits as multisets."""
    return sorted(
        (*image.reshape(-1).tolist(), int(label)) for image, label in zip(x, labels, strict=True)
    )


def _check_hold_out(data: DataBundle, train_x, train_y, test_x, test_y) -> None:
    """Validation is a stratified tenth of the training files, train the rest; test is the
    official test file, in its order."""
    assert data.split_sizes() == {
        "train": len(train_y) - round(0.1 * len(train_y)),
        "validation": round(0.1 * len(train_y)),
        "test": len(test_y),
    }
    np.testing.assert_array_equal(_pixels(data.test_x, data), test_x)
    assert data.test_y.tolist() == list(test_y)
    loaded = _rows(_pixels(data.train_x, data), data.train_y.tolist())
    loaded += _rows(_pixels(data.val_x, data), data.val_y.tolist())
    assert sorted(loaded) == _rows(train_x, train_y)  # disjoint, and together the train files
    parts = {"train": data.train_y.tolist(), "validation": data.val_y.tolist()}
    _check_stratified(parts, FRACTIONS["hold_out"])
    # Normalized with the statistics of the train split (not of the whole train files).
    assert data.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    raw = torch.from_numpy(_pixels(data.train_x, data)).double().div(255)
    expected_std = raw.transpose(0, 1).flatten(1).std(dim=1)
    assert torch.allclose(torch.tensor(data.std, dtype=torch.float64), expected_std, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "folder", "tv_class"),
    [
        ("mnist", "MNIST", tv_datasets.MNIST),
        ("fashion_mnist", "FashionMNIST", tv_datasets.FashionMNIST),
    ],
)
def test_mnist_formats_through_torchvision(tmp_path, name, folder, tv_class):
    arrays = _write_mnist(tmp_path, folder, np.random.default_rng(0))
    data = load_dataset(name, root=tmp_path)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.class_names == tuple(tv_class.classes)
    assert data.train_x.dtype == torch.float32 and data.val_y.dtype == torch.int64
    assert data.train_x.shape == (18, 1, 28, 28) and data.val_x.shape == (2, 1, 28, 28)
    _check_hold_out(
        data,
        arrays["train-images-idx3-ubyte"][:, None],
        arrays["train-labels-idx1-ubyte"].tolist(),
        arrays["t10k-images-idx3-ubyte"][:, None],
        arrays["t10k-labels-idx1-ubyte"].tolist(),
    )


def test_default_root_is_kdwb_home_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("KDWB_HOME", str(tmp_path))
    _write_mnist(tmp_path / "datasets", "MNIST", np.random.default_rng(1))
    data = load_dataset("mnist")
    assert len(data.train_y) + len(data.val_y) == 20
    assert load_dataset("mnist") is data


# ---------------------------------------------------------------------------- CIFAR formats
def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def _md5s(folder: Path) -> dict[str, str]:
    """The md5 of every file the test wrote: the test-only trust path for tiny CIFAR files."""
    return {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, list]:
    # Rows of 3072 bytes: the red plane, then green, then blue, each 32x32 row-major.
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n).tolist()


CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


def _write_cifar10(root: Path, rng: np.random.Generator) -> dict:
    folder = root / "cifar-10-batches-py"
    names = ["airplane", "automobile", "bird", "cat", "deer"] + [f"c{i}" for i in range(5, 10)]
    train_rows, train_labels = [], []
    for i in range(1, 6):
        rows, labels = _cifar_batch(rng, 4, 10)
        _pickle(
            folder / f"data_batch_{i}", {"batch_label": f"b{i}", "data": rows, "labels": labels}
        )
        train_rows.append(rows)
        train_labels += labels
    test_rows, test_labels = _cifar_batch(rng, 3, 10)
    _pickle(folder / "test_batch", {"data": test_rows, "labels": test_labels})
    _pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return {
        "folder": folder,
        "names": names,
        "train_x": np.concatenate(train_rows).reshape(-1, 3, 32, 32),
        "train_y": train_labels,
        "test_x": test_rows.reshape(-1, 3, 32, 32),
        "test_y": test_labels,
    }


def test_cifar10_format_with_the_test_checksums(tmp_path):
    files = _write_cifar10(tmp_path, np.random.default_rng(0))
    data = load_dataset("cifar10", root=tmp_path, checksums=_md5s(files["folder"]))
    assert data.input_shape == (3, 32, 32) and data.class_names == tuple(files["names"])
    assert data.train_x.shape == (18, 3, 32, 32) and data.val_x.shape == (2, 3, 32, 32)
    assert data.test_x.shape == (3, 3, 32, 32)
    _check_hold_out(data, files["train_x"], files["train_y"], files["test_x"], files["test_y"])


def test_cifar100_format_with_the_test_checksums(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    names = [f"fine{i}" for i in range(100)]
    train_rows, train_fine = _cifar_batch(rng, 10, 100)
    test_rows, test_fine = _cifar_batch(rng, 2, 100)
    coarse = {"coarse_labels": [0] * 10}
    _pickle(folder / "train", {"data": train_rows, "fine_labels": train_fine, **coarse})
    _pickle(folder / "test", {"data": test_rows, "fine_labels": test_fine, "coarse_labels": [0, 0]})
    _pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20})

    data = load_dataset("cifar100", root=tmp_path, checksums=_md5s(folder))
    assert data.num_classes == 100 and data.class_names == tuple(names)
    _check_hold_out(
        data,
        train_rows.reshape(-1, 3, 32, 32),
        train_fine,
        test_rows.reshape(-1, 3, 32, 32),
        test_fine,
    )


# ---------------------------------------------------------------------------- no code from data files
class _Plant:
    """Unpickling this runs ``touch marker``: the payload of a planted data file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _plant_cifar10(folder: Path, marker: Path) -> None:
    """Every CIFAR-10 file present, each a pickle that touches ``marker`` when unpickled."""
    for name in CIFAR10_FILES:
        _pickle(folder / name, {"data": _Plant(marker), "labels": [0], "label_names": ["x"]})


def test_the_planted_payload_is_live(tmp_path):
    # The control for the tests below: unpickling the payload does create its marker, so a
    # marker that stays absent there means the file was not unpickled.
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps({"data": _Plant(marker)}))
    assert marker.exists()


def _assert_refused(message: str, name: str) -> None:
    assert "\n" not in message
    assert "failed verification" in message
    assert f"python -m workbench download {name}" in message


@pytest.mark.parametrize("explicit_root", [True, False])
def test_planted_cifar_pickle_is_not_executed(tmp_path, monkeypatch, explicit_root):
    monkeypatch.setenv("KDWB_HOME", str(tmp_path / "home"))
    marker = tmp_path / "pwned"
    _plant_cifar10(tmp_path / "home" / "datasets" / "cifar-10-batches-py", marker)
    root = tmp_path / "home" / "datasets" if explicit_root else None
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("cifar10", root=root)
    assert not marker.exists()
    _assert_refused(str(info.value), "cifar10")
    assert "data_batch_1" in str(info.value)


def test_planted_pickle_through_the_cli_is_not_executed(home, tmp_path, capsys):
    """The reported reproduction: `python -m workbench run --dataset cifar10` on a planted home."""
    from workbench.cli import main

    marker = tmp_path / "pwned"
    _plant_cifar10(home / "datasets" / "cifar-10-batches-py", marker)
    code = main(["run", "--dataset", "cifar10", "--teacher", "mlp", "--student", "mlp"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not marker.exists()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    _assert_refused(err, "cifar10")


def test_planted_cifar100_pickle_and_one_planted_file_among_good_ones(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-100-python"
    for name in ("train", "test", "meta"):
        _pickle(folder / name, {"data": _Plant(marker)})
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("cifar100", root=tmp_path)
    assert not marker.exists()
    _assert_refused(str(info.value), "cifar100")
    # Test checksums trust only the files they name: one planted file among trusted ones is
    # still refused (the tiny files verify; the planted test_batch does not).
    files = _write_cifar10(tmp_path, np.random.default_rng(2))
    sums = _md5s(files["folder"])
    _pickle(files["folder"] / "test_batch", {"data": _Plant(marker), "labels": [0]})
    with pytest.raises(DatasetUnavailableError, match="test_batch failed verification"):
        load_dataset("cifar10", root=tmp_path, checksums=sums)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty"],
)
def test_damaged_cifar_files_fail_verification(tmp_path, damage):
    files = _write_cifar10(tmp_path, np.random.default_rng(3))
    sums = _md5s(files["folder"])
    batch = files["folder"] / "data_batch_3"
    blob = batch.read_bytes()
    batch.write_bytes(
        {"truncated": blob[: len(blob) // 2], "garbage": b"not a pickle", "empty": b""}[damage]
    )
    for checksums in (None, sums):  # official sums: nothing verifies; test sums: one file fails
        with pytest.raises(DatasetUnavailableError) as info:
            load_dataset("cifar10", root=tmp_path, checksums=checksums)
        _assert_refused(str(info.value), "cifar10")


def test_damaged_file_with_a_matching_test_checksum_is_a_message(tmp_path):
    # Only reachable with test checksums (official files always unpickle): still a message.
    folder = tmp_path / "cifar-100-python"
    for name in ("train", "test", "meta"):
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetUnavailableError, match="could not be read"):
        load_dataset("cifar100", root=tmp_path, checksums=_md5s(folder))


def test_download_replaces_files_that_fail_verification(tmp_path, monkeypatch):
    """Files already there are kept only when they verify: planted ones make `download` fetch
    the official archive (here a fake fetch that changes nothing, so they still fail)."""
    fetched = []
    monkeypatch.setattr(
        tv_datasets.utils, "download_and_extract_archive", lambda url, *a, **k: fetched.append(url)
    )
    marker = tmp_path / "pwned"
    _plant_cifar10(tmp_path / "cifar-10-batches-py", marker)
    with pytest.raises(DatasetUnavailableError, match="still fail verification after the download"):
        download_dataset("cifar10", root=tmp_path)
    assert fetched == [tv_datasets.CIFAR10.url] and not marker.exists()


def test_load_dataset_trust_cannot_be_reached_by_a_user():
    """``checksums`` is the only way to make the CIFAR loader trust a file: it is not a config
    field, and no module of the app or the library passes it."""
    from workbench.config.run_config import RunConfig

    assert "checksums" not in RunConfig.__dataclass_fields__
    repo = Path(data_module.__file__).parents[2]
    sources = [*repo.glob("workbench/**/*.py"), *repo.glob("pages/*.py"), repo / "app.py"]
    assert len(sources) > 10
    owners = ("datasets.py", "safe_files.py")
    users = [p.name for p in sources if p.name not in owners and "checksums" in p.read_text()]
    assert users == []


@pytest.fixture
def no_unpickling(monkeypatch):
    """Every way to unpickle a file raises (and is recorded) in the test's thread while the test
    runs; other threads (runs an earlier test left training) get the real functions."""
    calls = []
    owner = threading.get_ident()

    def refusing(real):
        def refuse(*args, **kwargs):
            if threading.get_ident() != owner:
                return real(*args, **kwargs)
            calls.append(args)
            raise AssertionError("something was unpickled")

        return refuse

    for module, attr in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (np, "load"),
    ]:
        monkeypatch.setattr(module, attr, refusing(getattr(module, attr)))
    return calls


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    """``tmp_path`` as the data root: errors name class folders and images only under a root
    (``workbench.data.roots``)."""
    config = tmp_path / "workbench.toml"
    config.write_text(f"[data]\nroots = [{str(tmp_path)!r}]\n")
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    return tmp_path


def test_mnist_image_folder_and_digits_never_unpickle(tmp_path, tmp_root, no_unpickling):
    # MNIST: torchvision would prefer (and torch.load) an old processed/*.pt beside the raw
    # files; planted ones must be ignored and the idx files read.
    arrays = _write_mnist(tmp_path, "MNIST", np.random.default_rng(4))
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(b"planted")
    data = load_dataset("mnist", root=tmp_path)
    np.testing.assert_array_equal(
        _pixels(data.test_x, data)[:, 0], arrays["t10k-images-idx3-ubyte"]
    )
    # An image folder with a pickle disguised as a PNG: PIL refuses it, nothing runs.
    _write_images(tmp_path / "pets", {"cat": 5, "dog": 5})
    assert load_dataset("image_folder", data_path=str(tmp_path / "pets")).num_classes == 2
    marker = tmp_path / "pwned"
    (tmp_path / "pets" / "cat" / "evil.png").write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(DatasetUnavailableError, match="cannot read image .*evil.png"):
        load_dataset("image_folder", data_path=str(tmp_path / "pets"))
    data_module._load_memoized.cache_clear()
    assert load_dataset("digits").num_classes == 10
    assert no_unpickling == [] and not marker.exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated", "could not be read"),
        ("garbage", "could not be read"),  # torchvision asserts the idx magic number
        ("empty", "could not be read"),
        ("fewer labels", "training files do not match: 20 images but 3 labels"),
    ],
)
def test_damaged_mnist_files_are_a_message(tmp_path, damage, expected):
    _write_mnist(tmp_path, "MNIST", np.random.default_rng(5))
    raw = tmp_path / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "garbage":
        images.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "empty":
        images.write_bytes(b"")
    else:  # a valid labels file of 3 labels beside 20 images
        _write_idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2], dtype=np.uint8))
    with pytest.raises(DatasetUnavailableError, match=expected) as info:
        load_dataset("mnist", root=tmp_path)
    assert "python -m workbench download mnist" in str(info.value)
    assert "\n" not in str(info.value)


def test_image_folder_pixel_bomb_is_a_message(tmp_path, tmp_root, monkeypatch):
    # PIL refuses images over 2 * MAX_IMAGE_PIXELS (a decompression bomb); lowered here so that
    # the test's 16x16 and 40x24 images count as bombs.
    from PIL import Image as PILImage

    _write_images(tmp_path / "f", {"a": 5, "b": 5})
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DatasetUnavailableError, match="cannot read image .*decompression bomb"):
        load_dataset("image_folder", data_path=str(tmp_path / "f"))


# ---------------------------------------------------------------------------- missing files
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_dataset_offline_says_how_to_download(tmp_path, name):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(name, root=tmp_path)
    message = str(info.value)
    assert f"python -m workbench download {name}" in message and str(tmp_path) in message


def test_failed_download_is_a_message(tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tv_datasets.mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_datasets.utils, "download_and_extract_archive", offline)  # CIFAR
    for name in ("mnist", "cifar10"):
        with pytest.raises(DatasetUnavailableError, match="could not download .*no network"):
            load_dataset(name, root=tmp_path, download=True)
        with pytest.raises(DatasetUnavailableError, match="internet"):
            download_dataset(name, root=tmp_path)


def test_download_dataset_keeps_files_already_there(tmp_path):
    _write_mnist(tmp_path, "MNIST", np.random.default_rng(2))  # no network needed
    assert download_dataset("mnist", root=tmp_path) == tmp_path / "MNIST/raw"
    assert download_dataset("digits").is_dir()  # ships with scikit-learn
    with pytest.raises(ConfigError, match="nothing to download"):
        download_dataset("image_folder")


# ---------------------------------------------------------------------------- image_folder
def _write_images(root: Path, counts: dict[str, int]) -> dict[tuple[int, int, int], str]:
    """Solid-colour PNGs of mixed sizes and modes; returns colour -> class (resizing a solid
    image keeps its colour, so each loaded image can be traced back to its class)."""
    colours = {}
    for c, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            colour = (40 * c + 10, 20 * i + 5, 200 - 30 * c)
            size = (40, 24) if i % 2 else (16, 16)
            image = Image.new("RGB", size, colour)
            if i == 0:  # greyscale and palette files must come out RGB too
                image = image.convert("L")
                colour = (image.getpixel((0, 0)),) * 3
            elif i == 1:
                image = image.convert("RGBA")
            image.save(root / cls / f"img{i}.png")
            colours[colour] = cls
    return colours


def test_image_folder_loads_resizes_and_splits(tmp_path):
    colours = _write_images(tmp_path / "pets", {"cat": 5, "dog": 7, "owl": 9})
    data = load_dataset("image_folder", data_path=str(tmp_path / "pets"))
    assert data.class_names == ("cat", "dog", "owl") and data.num_classes == 3
    assert data.input_shape == (3, 32, 32)
    # 21 images: 4 whole periods of (train, validation, train, test, train) and one train
    assert data.split_sizes() == {"train": 13, "validation": 4, "test": 4}
    parts = {"train": data.train_y, "validation": data.val_y, "test": data.test_y}
    _check_stratified({k: v.tolist() for k, v in parts.items()}, FRACTIONS["three_way"])
    assert set(data.val_y.tolist()) == set(data.test_y.tolist()) == {0, 1, 2}
    x = torch.cat([data.train_x, data.val_x, data.test_x])
    assert data.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # train statistics
    pixels = _pixels(x, data)
    labels = torch.cat(list(parts.values())).tolist()
    seen = []
    for image, label in zip(pixels, labels, strict=True):
        colour = tuple(int(v) for v in image[:, 0, 0])
        assert (image == np.array(colour, dtype=np.uint8)[:, None, None]).all()
        assert colours[colour] == data.class_names[label]
        seen.append(colour)
    assert sorted(seen) == sorted(colours)  # each image in exactly one split
    other = load_dataset("image_folder", data_path=str(tmp_path / "pets"), seed=1)
    assert not torch.equal(data.test_x, other.test_x)


def test_image_folder_memo_sees_new_images(tmp_path):
    _write_images(tmp_path / "f", {"a": 5, "b": 5})
    first = load_dataset("image_folder", data_path=str(tmp_path / "f"))
    assert load_dataset("image_folder", data_path=str(tmp_path / "f")) is first
    Image.new("RGB", (8, 8)).save(tmp_path / "f" / "a" / "new.png")
    again = load_dataset("image_folder", data_path=str(tmp_path / "f"))
    assert sum(first.split_sizes().values()) == 10
    assert sum(again.split_sizes().values()) == 11


def test_image_folder_errors_name_the_path_and_layout(tmp_path, tmp_root):
    with pytest.raises(DatasetUnavailableError, match="class_name/image.png") as info:
        load_dataset("image_folder", data_path=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetUnavailableError, match="class_name/image.png"):
        load_dataset("image_folder", data_path=str(tmp_path / "empty"))
    _write_images(tmp_path / "one", {"only": 6})
    with pytest.raises(DatasetUnavailableError, match="at least 2"):
        load_dataset("image_folder", data_path=str(tmp_path / "one"))
    _write_images(tmp_path / "few", {"a": 1, "b": 6})
    with pytest.raises(DatasetUnavailableError, match="too few images.*a: 1, b: 6"):
        load_dataset("image_folder", data_path=str(tmp_path / "few"))
    _write_images(tmp_path / "four", {"a": 4, "b": 9})  # 4 cannot give 3 + 1 + 1
    with pytest.raises(DatasetUnavailableError, match="too few images.*a: 4, b: 9.*at least 5"):
        load_dataset("image_folder", data_path=str(tmp_path / "four"))
    _write_images(tmp_path / "cut", {"a": 6, "b": 5})
    png = tmp_path / "cut" / "b" / "img3.png"
    png.write_bytes(png.read_bytes()[:40])  # truncated inside the header
    (tmp_path / "cut" / "a" / "img4.png").write_bytes(b"")
    with pytest.raises(DatasetUnavailableError, match="cannot read image .*cut/a/img4.png"):
        load_dataset("image_folder", data_path=str(tmp_path / "cut"))
    (tmp_path / "cut" / "a" / "img4.png").unlink()
    with pytest.raises(DatasetUnavailableError, match="cannot read image .*cut/b/img3.png"):
        load_dataset("image_folder", data_path=str(tmp_path / "cut"))
    with pytest.raises(ConfigError, match="data_path"):
        load_dataset("image_folder")
