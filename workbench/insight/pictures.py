"""Test images as pictures: a run's test images back in pixel space, as the gallery and the
class-activation maps show them.

The data bundle holds images normalised per channel (``x' = (x - mean) / std``, from the train
split); ``to_uint8`` inverts that, ``x = x' * std + mean``, clips to ``[0, 1]`` and scales to
0..255, and repeats a grey channel three times, so every dataset (digits, MNIST, CIFAR, an
``image_folder``) gives the same ``[M, H, W, 3]`` RGB array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from workbench.data.datasets import DataBundle, load_dataset
from workbench.errors import ConfigError

__all__ = ["dataset_of", "pictures", "to_uint8"]


def to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised images ``[M, C, H, W]`` (C = 1 or 3) as RGB ``[M, H, W, 3]`` uint8."""
    if x.ndim != 4 or x.shape[1] not in (1, 3) or not len(mean) == len(std) == x.shape[1]:
        raise ConfigError("images must be [M, C, H, W], 1 or 3 channels, a mean and std each")
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x.detach().float().cpu() * s + m).clamp(0.0, 1.0)  # [M, C, H, W]
    pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels  # [M, 3, H, W]
    return (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()  # [M, H, W, 3]


def dataset_of(config: Mapping[str, Any]) -> DataBundle:
    """The dataset a run was trained on, from its config (loaded once per process)."""
    return load_dataset(str(config.get("dataset")), data_path=str(config.get("data_path") or ""))


def pictures(config: Mapping[str, Any], index: Sequence[int] | np.ndarray) -> np.ndarray:
    """The run's test images at ``index`` (positions in the test split) as ``[M, H, W, 3]``
    uint8. ConfigError when an index is outside the split (the dataset changed since)."""
    data = dataset_of(config)
    index = [int(i) for i in np.asarray(index).reshape(-1)]
    if index and (min(index) < 0 or max(index) >= len(data.test_y)):
        raise ConfigError(
            f"test image {max(index)} is outside the test split of {len(data.test_y)} images: "
            "the dataset changed since the run; run it again"
        )
    return to_uint8(data.test_x[index], data.mean, data.std)
