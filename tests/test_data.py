"""workbench.data: the digits split, and torchvision's real loaders on tiny files in their real
on-disk formats (idx-ubyte for MNIST, pickled batches for CIFAR, PNG folders), written here."""

from __future__ import annotations

import pickle
import struct
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv_datasets

from workbench.data import (
    DATASETS,
    DataBundle,
    dataset_root,
    download_dataset,
    list_datasets,
    load_dataset,
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


# ---------------------------------------------------------------------------- digits
def test_digits_shapes_dtypes_and_normalization():
    data = load_dataset("digits")
    assert data.train_x.shape == (1437, 1, 8, 8) and data.val_x.shape == (360, 1, 8, 8)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.class_names == tuple(str(i) for i in range(10))
    assert abs(float(data.train_x.mean())) < 1e-4
    assert abs(float(data.train_x.std()) - 1.0) < 1e-3
    # Pixels were 0..16, scaled to [0, 1] before normalizing.
    raw = data.train_x * data.std[0] + data.mean[0]
    assert float(raw.min()) > -1e-5 and float(raw.max()) < 1 + 1e-5
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-4)


def test_digits_split_is_stratified():
    data = load_dataset("digits")
    total = Counter(data.train_y.tolist()) + Counter(data.val_y.tolist())
    val = Counter(data.val_y.tolist())
    assert set(val) == set(range(10))
    for c in range(10):
        assert abs(val[c] - 0.2 * total[c]) <= 1, (c, val[c], total[c])


def test_digits_split_depends_on_the_seed_only():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    assert a is b  # memoized
    c = load_dataset("digits", seed=1)
    assert not torch.equal(a.val_y, c.val_y) or not torch.equal(a.val_x, c.val_x)
    # Same samples overall: sort the flattened images of both splits together.
    all_a = torch.cat([a.train_x * a.std[0] + a.mean[0], a.val_x * a.std[0] + a.mean[0]])
    all_c = torch.cat([c.train_x * c.std[0] + c.mean[0], c.val_x * c.std[0] + c.mean[0]])
    assert _sorted_rows(all_a) == _sorted_rows(all_c)


def _sorted_rows(x: torch.Tensor) -> list[tuple[int, ...]]:
    return sorted(map(tuple, (x.flatten(1) * 16).round().int().tolist()))


# ---------------------------------------------------------------------------- MNIST formats
def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 9, 1, 0], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([3, 4, 5, 9], dtype=np.uint8),
    }
    for name, array in arrays.items():
        _write_idx(root / folder / "raw" / name, array)
    return arrays


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
    assert data.train_x.shape == (6, 1, 28, 28) and data.val_x.shape == (4, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.val_y.dtype == torch.int64
    np.testing.assert_array_equal(
        _pixels(data.train_x, data)[:, 0], arrays["train-images-idx3-ubyte"]
    )
    np.testing.assert_array_equal(_pixels(data.val_x, data)[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.val_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_default_root_is_kdwb_home_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("KDWB_HOME", str(tmp_path))
    _write_mnist(tmp_path / "datasets", "MNIST", np.random.default_rng(1))
    data = load_dataset("mnist")
    assert len(data.train_y) == 6
    assert load_dataset("mnist", seed=3) is data  # the official split ignores the seed


# ---------------------------------------------------------------------------- CIFAR formats
def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, list]:
    # Rows of 3072 bytes: the red plane, then green, then blue, each 32x32 row-major.
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n).tolist()


def test_cifar10_format_through_torchvision(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    names = ["airplane", "automobile", "bird", "cat", "deer"] + [f"c{i}" for i in range(5, 10)]
    train_rows, train_labels = [], []
    for i in range(1, 6):
        rows, labels = _cifar_batch(rng, 2, 10)
        _pickle(
            folder / f"data_batch_{i}", {"batch_label": f"b{i}", "data": rows, "labels": labels}
        )
        train_rows.append(rows)
        train_labels += labels
    test_rows, test_labels = _cifar_batch(rng, 3, 10)
    _pickle(folder / "test_batch", {"data": test_rows, "labels": test_labels})
    _pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})

    data = load_dataset("cifar10", root=tmp_path)
    assert data.input_shape == (3, 32, 32) and data.class_names == tuple(names)
    assert data.train_x.shape == (10, 3, 32, 32) and data.val_x.shape == (3, 3, 32, 32)
    expected = np.concatenate(train_rows).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(_pixels(data.train_x, data), expected)
    np.testing.assert_array_equal(_pixels(data.val_x, data), test_rows.reshape(-1, 3, 32, 32))
    assert data.train_y.tolist() == train_labels and data.val_y.tolist() == test_labels
    assert data.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_cifar100_format_through_torchvision(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    names = [f"fine{i}" for i in range(100)]
    train_rows, train_fine = _cifar_batch(rng, 5, 100)
    test_rows, test_fine = _cifar_batch(rng, 2, 100)
    coarse = {"coarse_labels": [0] * 5}
    _pickle(folder / "train", {"data": train_rows, "fine_labels": train_fine, **coarse})
    _pickle(folder / "test", {"data": test_rows, "fine_labels": test_fine, "coarse_labels": [0, 0]})
    _pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20})

    data = load_dataset("cifar100", root=tmp_path)
    assert data.num_classes == 100 and data.class_names == tuple(names)
    np.testing.assert_array_equal(_pixels(data.train_x, data), train_rows.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(_pixels(data.val_x, data), test_rows.reshape(-1, 3, 32, 32))
    assert data.train_y.tolist() == train_fine and data.val_y.tolist() == test_fine


def test_damaged_cifar_file_is_a_message(tmp_path):
    folder = tmp_path / "cifar-100-python"
    for name in ("train", "test", "meta"):
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetUnavailableError, match="could not be read"):
        load_dataset("cifar100", root=tmp_path)


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
    monkeypatch.setattr(tv_datasets.cifar, "download_and_extract_archive", offline)
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
    colours = _write_images(tmp_path / "pets", {"cat": 5, "dog": 5, "owl": 5})
    data = load_dataset("image_folder", data_path=str(tmp_path / "pets"))
    assert data.class_names == ("cat", "dog", "owl") and data.num_classes == 3
    assert data.input_shape == (3, 32, 32)
    assert data.train_x.shape == (12, 3, 32, 32) and data.val_x.shape == (3, 3, 32, 32)
    assert sorted(data.val_y.tolist()) == [0, 1, 2]  # stratified: one of each
    x = torch.cat([data.train_x, data.val_x])
    assert data.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # train statistics
    pixels = _pixels(x, data)
    labels = torch.cat([data.train_y, data.val_y]).tolist()
    for image, label in zip(pixels, labels, strict=True):
        colour = tuple(int(v) for v in image[:, 0, 0])
        assert (image == np.array(colour, dtype=np.uint8)[:, None, None]).all()
        assert colours[colour] == data.class_names[label]
    other = load_dataset("image_folder", data_path=str(tmp_path / "pets"), seed=1)
    assert not torch.equal(data.val_x, other.val_x)


def test_image_folder_memo_sees_new_images(tmp_path):
    _write_images(tmp_path / "f", {"a": 5, "b": 5})
    first = load_dataset("image_folder", data_path=str(tmp_path / "f"))
    assert load_dataset("image_folder", data_path=str(tmp_path / "f")) is first
    Image.new("RGB", (8, 8)).save(tmp_path / "f" / "a" / "new.png")
    again = load_dataset("image_folder", data_path=str(tmp_path / "f"))
    assert len(first.train_y) + len(first.val_y) == 10
    assert len(again.train_y) + len(again.val_y) == 11


def test_image_folder_errors_name_the_path_and_layout(tmp_path):
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
    _write_images(tmp_path / "wide", {c: 2 for c in "abcd"})  # 8 images, 2 for validation
    with pytest.raises(DatasetUnavailableError, match="too few images"):
        load_dataset("image_folder", data_path=str(tmp_path / "wide"))
    with pytest.raises(ConfigError, match="data_path"):
        load_dataset("image_folder")
