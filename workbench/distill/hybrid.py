"""``HybridLoss``: the four slots (label, response, feature, relation) in one weighted loss.

    total = w_label * CE + w_response * KD + w_feature * feature + w_relation * relation

with the weights combined by a weighting scheme (``workbench.distill.weighting``). The slots'
pure functions live in ``response``, ``feature`` and ``relation``; this module only wires them
and returns every term by name, so each can be plotted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from workbench.config.loss_terms import COMPONENTS, LossWeights
from workbench.distill.feature import FEATURE_LOSSES, feature_loss, uses_adapter
from workbench.distill.relation import RELATION_LOSSES, relation_loss
from workbench.distill.response import label_loss, response_loss
from workbench.distill.weighting import WEIGHTINGS
from workbench.errors import ConfigError, UnknownNameError

__all__ = ["HybridLoss"]


def _same(x: Tensor) -> Tensor:
    return x


class HybridLoss(nn.Module):
    """Weighted sum of the label, response, feature and relation terms.

    ``forward`` returns the four terms and their ``total``; how the terms are combined is the
    weighting scheme's (``workbench.distill.weighting.WEIGHTINGS``: ``fixed`` gives
    ``total = sum_k w_k L_k``). A component whose configured weight is 0 is never computed (its
    value is a constant 0), so a label-only student never touches teacher inputs.

    - feature term: ``sum_i feature_loss(adapters[i](s_i), t_i, feature_kind)`` over the layer
      pairs (without adapters the student features must already have the teacher's shapes);
      attention transfer (``at``, ``at_paper``) uses the student's own maps ``s_i``: adapters
      given for it are not used and are not parameters of the loss;
    - relation term: ``sum_i relation_loss(s_i, t_i, relation_kind)`` on the raw features.

    Names: ``configured`` holds the weights as set (``{component: w}``), ``scheme`` the weighting
    module built from them (``scheme_name`` its registry name); ``current_weights()`` the
    effective weights at the latest ``forward``. The module's parameters are the adapters' and
    the scheme's: build it before the optimizer and hand the optimizer ``parameters()``.
    """

    def __init__(
        self,
        weights: LossWeights,
        *,
        temperature: float,
        feature_kind: str = "cosine",
        relation_kind: str = "sp",
        adapters: nn.ModuleList | None = None,
        weighting: str = "fixed",
    ) -> None:
        super().__init__()
        weights.validate()
        if feature_kind not in FEATURE_LOSSES:
            raise UnknownNameError("feature kind", feature_kind, list(FEATURE_LOSSES))
        if relation_kind not in RELATION_LOSSES:
            raise UnknownNameError("relation kind", relation_kind, list(RELATION_LOSSES))
        if weighting not in WEIGHTINGS:
            raise UnknownNameError("weighting scheme", weighting, list(WEIGHTINGS))
        if isinstance(temperature, bool) or not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        self.configured = weights.as_dict()  # the weights the user set, {component: w}
        self.temperature = float(temperature)
        self.feature_kind = feature_kind
        self.relation_kind = relation_kind
        # Attention transfer compares the student's own maps: an adapter in front would let a
        # learned map fit the teacher's attention while the student stays as it is.
        self.adapters = adapters if uses_adapter(feature_kind) else None
        self.scheme_name = weighting
        self.scheme = WEIGHTINGS[weighting](self.configured)  # the weighting module

    @property
    def needs_teacher(self) -> bool:
        """True when a term reads the teacher's logits or features."""
        return any(self.configured[k] > 0 for k in ("response", "feature", "relation"))

    @property
    def needs_features(self) -> bool:
        """True when a term reads intermediate features."""
        return self.configured["feature"] > 0 or self.configured["relation"] > 0

    def forward(
        self,
        student_logits: Tensor,
        targets: Tensor,
        teacher_logits: Tensor | None = None,
        student_feats: Sequence[Tensor] = (),
        teacher_feats: Sequence[Tensor] = (),
    ) -> dict[str, Tensor]:
        """Terms and total for one batch: logits [B, K], targets [B], features [B, ...] per pair.

        Teacher tensors are read only (they may be inference tensors or cached constants).
        """
        needed = self.scheme.needed(self.configured)
        zero = torch.zeros((), device=student_logits.device)
        terms: dict[str, Tensor] = dict.fromkeys(COMPONENTS, zero)
        if "label" in needed:
            terms["label"] = label_loss(student_logits, targets)
        if "response" in needed:
            if teacher_logits is None:
                raise ValueError("the response term needs teacher_logits")
            terms["response"] = response_loss(student_logits, teacher_logits, self.temperature)
        if "feature" in needed:
            pairs = self._pairs(student_feats, teacher_feats, "feature")
            if self.adapters is not None and len(self.adapters) != len(pairs):
                raise ValueError(f"{len(self.adapters)} adapters for {len(pairs)} layer pairs")
            adapters = self.adapters if self.adapters is not None else [_same] * len(pairs)
            terms["feature"] = torch.stack(
                [
                    feature_loss(adapter(s), t, self.feature_kind)
                    for adapter, (s, t) in zip(adapters, pairs, strict=True)
                ]
            ).sum()
        if "relation" in needed:
            pairs = self._pairs(student_feats, teacher_feats, "relation")
            terms["relation"] = torch.stack(
                [relation_loss(s, t, self.relation_kind) for s, t in pairs]
            ).sum()
        active = {k: terms[k] for k in needed}
        return {**terms, "total": self.scheme(active, self.configured)}

    @staticmethod
    def _pairs(
        student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], term: str
    ) -> list[tuple[Tensor, Tensor]]:
        if len(student_feats) != len(teacher_feats) or not student_feats:
            raise ValueError(
                f"the {term} term needs one teacher feature per student feature (at least one "
                f"pair), got {len(student_feats)} student and {len(teacher_feats)} teacher"
            )
        return list(zip(student_feats, teacher_feats, strict=True))

    def current_weights(self) -> dict[str, float]:
        """Effective weight of each component at the latest ``forward`` (may sync the device)."""
        return self.scheme.current()

    def epoch_end(self, val_acc: float) -> None:
        """Tell the weighting scheme the validation accuracy of the epoch that just ended."""
        self.scheme.epoch_end(val_acc)

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.configured.items())
        return (
            f"{w}, temperature={self.temperature:g}, feature_kind={self.feature_kind}, "
            f"relation_kind={self.relation_kind}, weighting={self.scheme_name}"
        )
