"""``HybridLoss``: the four slots (label, response, feature, relation) in one weighted loss.

    total = w_label * CE + w_response * response + w_feature * feature + w_relation * relation

with the weights combined by a weighting scheme (``workbench.distill.weighting``). The slots'
pure functions live in ``response``, ``feature`` and ``relation``; this module only wires them,
holds what they learn or count across steps (VID's variances, DKD's warm-up epoch counter) and
returns every term by name, so each can be plotted.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from workbench.config.loss_terms import COMPONENTS, LossWeights
from workbench.distill.contrastive import ContrastiveRepresentation
from workbench.distill.feature import FEATURE_LOSSES, VIDVariance, feature_loss, uses_adapter
from workbench.distill.overhaul import OFDTerm
from workbench.distill.relation import RELATION_LOSSES, relation_loss
from workbench.distill.response import RESPONSE_LOSSES, label_loss, response_loss
from workbench.distill.review import ReviewKDTerm
from workbench.distill.stateful import MethodInputs, TermModule
from workbench.distill.weighting import WEIGHTINGS
from workbench.errors import ConfigError, UnknownNameError

__all__ = ["FEATURE_MODULES", "RELATION_MODULES", "HybridLoss"]

# The kinds whose term is a module (``workbench.distill.stateful``): kind -> builder(inputs,
# **params). Each kind is also a key of its slot's pure-loss registry (its math, per pair).
FEATURE_MODULES: dict[str, Callable[..., TermModule]] = {
    "reviewkd": ReviewKDTerm,
    "ofd": OFDTerm,
}
RELATION_MODULES: dict[str, Callable[..., TermModule]] = {"crd": ContrastiveRepresentation}


def _same(x: Tensor) -> Tensor:
    return x


# Keyword arguments HybridLoss passes itself (not settable through *_params).
_WIRED = frozenset({"variance"})


def _checked_params(
    slot: str, kind: str, fn: Callable[..., Tensor], params: Mapping[str, float] | None
) -> dict[str, float]:
    """``params`` as a dict, refused when ``fn`` (the kind's pure loss) takes no such keyword."""
    given = dict(params or {})
    allowed = [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in _WIRED
    ]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"the {slot} kind {kind!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(allowed) or '(none)'}"
        )
    return given


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
    - relation term: ``sum_i relation_loss(s_i, t_i, relation_kind)`` on the raw features;
    - response term: ``response_loss(z_s, z_t, temperature, kind=response_kind, labels=targets,
      **response_params)``, times DKD's linear warm-up factor ``min(e / warmup_epochs, 1)`` when
      ``warmup_epochs > 0``, e the 1-based epoch being trained (mdistiller: ``min(epoch /
      warmup, 1)`` with epochs counted from 1, so the first epoch already has ``1 / warmup``).
      The counter of finished epochs is a buffer (``epochs_done``, in ``state_dict()``) that
      ``epoch_end`` advances, so a resumed run continues the ramp where it stopped;
    - ``feature_kind="vid"``: one ``VIDVariance`` per layer pair (``vid_variances``), sized by
      ``teacher_channels`` (the teacher feature's channel count per pair), passed to the loss as
      ``variance``; they are parameters of the loss, like the adapters.

    Names: ``configured`` holds the weights as set (``{component: w}``), ``scheme`` the weighting
    module built from them (``scheme_name`` its registry name); ``current_weights()`` the
    effective weights at the latest ``forward``. The module's parameters are the adapters', VID's
    variances and the scheme's: build it before the optimizer and hand the optimizer
    ``parameters()``. ``response_params`` / ``feature_params`` / ``relation_params`` are the
    kinds' keyword parameters (``{"alpha": 1, "beta": 8}`` for ``dkd``, ``{"beta": 1, "gamma":
    1}`` for ``dist``, ``{"gamma": 0.4, "order": 2}`` for ``cc``), checked against the kind.
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
        response_kind: str = "kd",
        response_params: Mapping[str, float] | None = None,
        feature_params: Mapping[str, float] | None = None,
        relation_params: Mapping[str, float] | None = None,
        teacher_channels: Sequence[int] | None = None,
        warmup_epochs: int = 0,
        inputs: MethodInputs | None = None,
    ) -> None:
        super().__init__()
        weights.validate()
        for what, kind, registry in (
            ("response kind", response_kind, RESPONSE_LOSSES),
            ("feature kind", feature_kind, FEATURE_LOSSES),
            ("relation kind", relation_kind, RELATION_LOSSES),
            ("weighting scheme", weighting, WEIGHTINGS),
        ):
            if kind not in registry:
                raise UnknownNameError(what, kind, list(registry))
        if isinstance(temperature, bool) or not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        if (
            isinstance(warmup_epochs, bool)
            or int(warmup_epochs) != warmup_epochs
            or warmup_epochs < 0
        ):
            raise ConfigError(f"warmup_epochs must be a whole number >= 0, got {warmup_epochs!r}")
        self.configured = weights.as_dict()  # the weights the user set, {component: w}
        self.temperature = float(temperature)
        self.response_kind = response_kind
        self.feature_kind = feature_kind
        self.relation_kind = relation_kind
        self.response_params = _checked_params(
            "response", response_kind, RESPONSE_LOSSES[response_kind], response_params
        )
        self.feature_params = _checked_params(
            "feature", feature_kind, FEATURE_LOSSES[feature_kind], feature_params
        )
        self.relation_params = _checked_params(
            "relation", relation_kind, RELATION_LOSSES[relation_kind], relation_params
        )
        # Attention transfer and NST compare the student's own maps: an adapter in front would
        # let a learned map fit the teacher's maps while the student stays as it is.
        self.adapters = adapters if uses_adapter(feature_kind) else None
        self.vid_variances = self._vid_variances(feature_kind, teacher_channels)
        # ReviewKD, OFD, CRD: the term is a module that sees every pair (workbench.distill.stateful)
        self.feature_module = self._term_module("feature", feature_kind, FEATURE_MODULES, inputs)
        self.relation_module = self._term_module(
            "relation", relation_kind, RELATION_MODULES, inputs
        )
        self.warmup_epochs = int(warmup_epochs)
        if self.warmup_epochs > 0:  # only then, so checkpoints without a warm-up load as before
            self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        self.scheme_name = weighting
        self.scheme = WEIGHTINGS[weighting](self.configured)  # the weighting module

    def _term_module(
        self,
        slot: str,
        kind: str,
        registry: Mapping[str, Callable[..., nn.Module]],
        inputs: MethodInputs | None,
    ) -> nn.Module | None:
        """The stateful module of ``slot``'s kind, built from ``inputs``; none unless the term
        is computed (its weight > 0) and the kind is a module."""
        if kind not in registry or self.configured[slot] <= 0:
            return None
        if inputs is None:
            raise ValueError(
                f"{slot} kind {kind} is built from the run's layer shapes: pass inputs "
                "(workbench.distill.stateful.MethodInputs)"
            )
        params = self.feature_params if slot == "feature" else self.relation_params
        return registry[kind](inputs, **params)

    def _vid_variances(
        self, feature_kind: str, teacher_channels: Sequence[int] | None
    ) -> nn.ModuleList | None:
        """VID's variance modules, one per layer pair; none unless the VID term is computed."""
        if feature_kind != "vid" or self.configured["feature"] <= 0:
            return None
        if not teacher_channels or any(
            isinstance(c, bool) or int(c) != c or c < 1 for c in teacher_channels
        ):
            raise ValueError(
                "feature kind vid learns one variance per teacher channel: pass "
                "teacher_channels, the channel count of each teacher feature (one per layer "
                f"pair, each >= 1), got {teacher_channels!r}"
            )
        return nn.ModuleList(VIDVariance(int(c)) for c in teacher_channels)

    def warmup_factor(self) -> Tensor | float:
        """DKD's warm-up factor of the response term for the epoch being trained: ``min((e + 1)
        / warmup_epochs, 1)`` with ``e`` the finished epochs (a device scalar), 1 without it."""
        if self.warmup_epochs <= 0:
            return 1.0
        done = self.epochs_done.to(torch.float32)
        return ((done + 1.0) / self.warmup_epochs).clamp(max=1.0)

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
        indices: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Terms and total for one batch: logits [B, K], targets [B], features [B, ...] per pair,
        ``indices`` [B] the samples' positions in the training set (CRD's memory reads them).

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
            response = response_loss(
                student_logits,
                teacher_logits,
                self.temperature,
                kind=self.response_kind,
                labels=targets,
                **self.response_params,
            )
            terms["response"] = self.warmup_factor() * response
        if "feature" in needed and self.feature_module is not None:
            self._pairs(student_feats, teacher_feats, "feature")
            terms["feature"] = self.feature_module(student_feats, teacher_feats, indices)
        elif "feature" in needed:
            terms["feature"] = self._feature_term(student_feats, teacher_feats)
        if "relation" in needed and self.relation_module is not None:
            self._pairs(student_feats, teacher_feats, "relation")
            terms["relation"] = self.relation_module(student_feats, teacher_feats, indices)
        elif "relation" in needed:
            pairs = self._pairs(student_feats, teacher_feats, "relation")
            terms["relation"] = torch.stack(
                [relation_loss(s, t, self.relation_kind, **self.relation_params) for s, t in pairs]
            ).sum()
        active = {k: terms[k] for k in needed}
        return {**terms, "total": self.scheme(active, self.configured)}

    def _feature_term(
        self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]
    ) -> Tensor:
        pairs = self._pairs(student_feats, teacher_feats, "feature")
        if self.adapters is not None and len(self.adapters) != len(pairs):
            raise ValueError(f"{len(self.adapters)} adapters for {len(pairs)} layer pairs")
        adapters = self.adapters if self.adapters is not None else [_same] * len(pairs)
        wired: list[dict[str, Tensor]] = [{} for _ in pairs]
        if self.vid_variances is not None:
            if len(self.vid_variances) != len(pairs):
                raise ValueError(
                    f"{len(self.vid_variances)} teacher_channels for {len(pairs)} layer pairs"
                )
            wired = [{"variance": v()} for v in self.vid_variances]
        return torch.stack(
            [
                feature_loss(adapter(s), t, self.feature_kind, **self.feature_params, **extra)
                for adapter, (s, t), extra in zip(adapters, pairs, wired, strict=True)
            ]
        ).sum()

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
        """Tell the weighting scheme the validation accuracy of the epoch that just ended, and
        advance the warm-up's epoch counter."""
        self.scheme.epoch_end(val_acc)
        if self.warmup_epochs > 0:
            self.epochs_done += 1

    def extra_repr(self) -> str:
        def kind(name: str, params: Mapping[str, float]) -> str:
            inner = ", ".join(f"{k}={v:g}" for k, v in params.items())
            return f"{name}({inner})" if inner else name

        w = ", ".join(f"{k}={v:g}" for k, v in self.configured.items())
        warmup = f", warmup_epochs={self.warmup_epochs}" if self.warmup_epochs else ""
        return (
            f"{w}, temperature={self.temperature:g}, "
            f"response_kind={kind(self.response_kind, self.response_params)}{warmup}, "
            f"feature_kind={kind(self.feature_kind, self.feature_params)}, "
            f"relation_kind={kind(self.relation_kind, self.relation_params)}, "
            f"weighting={self.scheme_name}"
        )
