"""The precision every distillation loss computes in.

Every loss is computed and returned in float32 (float64 inputs stay float64), also under
autocast: bf16/fp16 logits and features are promoted first. Nothing here waits for the device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["full_precision"]


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it already is (bf16/fp16 features from autocast)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
