"""What distillation computes: one module of losses per slot (response, feature, relation) and
the hybrid, weighting schemes, feature taps and adapters, the model pair a run distils through,
gradient shares, and representation similarity (CKA, Gram).

The slots' public pure API: ``response_loss`` (kd, dkd, dist), ``feature_loss`` (cosine, mse,
at, fitnet, nst, vid, ...) and ``relation_loss`` (sp, rkd, pkt, cc, ...)."""

from workbench.distill.feature import feature_loss
from workbench.distill.relation import relation_loss
from workbench.distill.response import response_loss

__all__ = ["feature_loss", "relation_loss", "response_loss"]
