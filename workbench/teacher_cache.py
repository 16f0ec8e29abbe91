"""Where a distillation run gets its teacher's outputs from.

``LiveTeacher`` runs the frozen teacher on each batch under ``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.features import FeatureTaps

__all__ = ["LiveTeacher", "teacher_source"]


class LiveTeacher:
    """The frozen teacher, run on every batch."""

    kind = "live"

    def __init__(self, teacher: nn.Module, paths: Sequence[str], note: str = ""):
        self.teacher, self.paths, self.note = teacher, list(paths), note

    def __call__(
        self, idx: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.inference_mode(), FeatureTaps(self.teacher, self.paths) as taps:
            logits = self.teacher(x)  # [B, K]
            feats = list(taps.features)
        # Inference tensors cannot be saved for backward; a clone is an ordinary constant.
        return logits.clone(), [f.clone() for f in feats]


def teacher_source(config, teacher, teacher_id, paths, train_x, store, device) -> LiveTeacher:
    return LiveTeacher(teacher, paths, note="teacher run live on every batch")
