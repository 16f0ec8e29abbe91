"""Methods whose term is a module: it learns or remembers across steps, and sees every layer pair
at once (ReviewKD fuses the student's stages, CRD keeps memory banks of the training set).

``HybridLoss`` builds one for the feature or relation slot when the run's kind is registered in
its ``FEATURE_MODULES`` or ``RELATION_MODULES`` (``workbench.distill.hybrid``): the builder takes the run's ``MethodInputs`` (what
the engine knows before the first step) and the kind's parameters, and the module's ``forward``
takes the student's and the teacher's features of every layer pair and the batch's sample
indices into the training set, and returns the term (a scalar). Its parameters train with the
student; its parameters, buffers and extra state are in the loss's ``state_dict``, so a resumed
run continues exactly. The pure math of each method lives in a function of its own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from workbench.errors import IncompatibleModelsError

__all__ = ["MethodInputs", "TermModule"]


@dataclass(frozen=True)
class MethodInputs:
    """What a stateful method is built from: per layer pair, the student's and the teacher's
    feature shapes per sample (``(C, H, W)``, ``(D,)``, as ``LayerInfo.shape``) and module
    paths; the number of training samples (the indices a batch carries run from 0 to it); the
    frozen teacher (OFD reads its batch-norm statistics), None where a test has none."""

    student_shapes: tuple[tuple[int, ...], ...]
    teacher_shapes: tuple[tuple[int, ...], ...]
    student_paths: tuple[str, ...] = ()
    teacher_paths: tuple[str, ...] = ()
    num_samples: int = 0
    teacher: nn.Module | None = field(default=None, compare=False, repr=False)

    def map_pairs(self, method: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """``[(student shape, teacher shape)]`` per pair, each ``(C, H, W)``; at least one pair
        and 4-D maps on both sides of every pair, else an IncompatibleModelsError naming
        ``method``."""
        pairs = list(zip(self.student_shapes, self.teacher_shapes, strict=True))
        if not pairs or any(len(s) != 3 or len(t) != 3 for s, t in pairs):
            raise IncompatibleModelsError(
                f"{method} needs 4-D feature maps [B, C, H, W] on both sides of every layer "
                f"pair, got student {list(self.student_shapes)}, teacher "
                f"{list(self.teacher_shapes)}: pick convolutional layers"
            )
        return pairs


class TermModule(nn.Module):
    """The interface of a stateful term (subclasses implement ``forward``)."""

    def forward(
        self,
        student_feats: Sequence[Tensor],
        teacher_feats: Sequence[Tensor],
        indices: Tensor | None = None,
    ) -> Tensor:  # pragma: no cover - the interface
        raise NotImplementedError
