"""Gradient shares: how much of the student's update each loss term actually drives.

A weight of 0.2 on a term says nothing about how much that term moves the student: the terms'
magnitudes and slopes differ by orders (an elementwise MSE is ~100x smaller than the FitNets
sum; a relation term can change no prediction at all). The share of the gradient is what a user
who sets 0.3/0.3/0.2/0.2 believes the weights are.

Definition. For the active terms ``k`` (configured weight > 0) with effective weights ``w_k``
(``HybridLoss.current_weights()``, i.e. after the weighting scheme) and the student's parameters
``theta`` (the model's, not the adapters' or the weighting scheme's):

    g_k     = d (w_k L_k) / d theta,   all of theta flattened into one vector
    share_k = ||g_k||_2 / sum_j ||g_j||_2

so the shares are >= 0 and sum to 1 over the active terms. Norms, not projections: two terms
that pull in opposite directions both count as acting. A term whose loss is a constant has
share 0. History fields: ``g_label, g_response, g_feature, g_relation`` (``SHARE_FIELDS``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from workbench.config.run_config import COMPONENTS

__all__ = ["SHARE_FIELDS", "gradient_shares", "weak_terms"]

SHARE_FIELDS = {k: f"g_{k}" for k in COMPONENTS}


def gradient_shares(
    losses: Mapping[str, Tensor], weights: Mapping[str, float], params: Iterable[Tensor]
) -> dict[str, float]:
    """Each active term's share of the gradient norm on ``params`` (see the module docstring).

    ``losses``: the terms as ``HybridLoss.forward`` returns them (unweighted, still attached to
    the graph); ``weights``: the effective weight of each term at that forward; a term is active
    when its weight is > 0. Returns ``{component: share}`` for every component of
    ``config.COMPONENTS`` (0.0 for inactive ones); NaN for all active terms when no term has a
    gradient. The graph is kept (``retain_graph``), so the caller can still ``backward`` the
    total. One extra backward pass per active term, and one device sync: call it on logged steps.
    """
    params = [p for p in params if p.requires_grad]
    active = [k for k in COMPONENTS if weights.get(k, 0.0) > 0 and k in losses]
    norms: dict[str, Tensor] = {}
    for k in active:
        term = losses[k]
        zero = torch.zeros((), device=term.device)
        if not term.requires_grad:
            norms[k] = zero
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norm = torch.stack(squares).sum().sqrt() if squares else zero
        norms[k] = float(weights[k]) * norm
    out = dict.fromkeys(COMPONENTS, 0.0)
    if not active:
        return out
    values = torch.stack([norms[k] for k in active]).double().tolist()  # one sync
    total = sum(values)
    for k, v in zip(active, values, strict=True):
        out[k] = v / total if total > 0 and math.isfinite(total) else math.nan
    return out


def weak_terms(
    history: Sequence[Mapping[str, Any]],
    weights: Mapping[str, float],
    *,
    threshold: float = 0.01,
    tail: float = 0.5,
) -> list[dict[str, Any]]:
    """Terms whose gradient share stays under ``threshold`` (1 %), for the run pages to flag.

    ``history``: the run's logged rows (with ``g_*`` fields); ``weights``: the configured
    weights (the active terms are those > 0). A term is flagged when its share is below the
    threshold at every logged row of the last ``tail`` fraction of the history (the first steps
    are left out: shares move while the student leaves its initialisation).

    For each flagged term the weight factor ``N`` that would lift its share ``s`` (the median
    over those rows) to its configured weight share ``p = w_k / sum_j w_j``, the other terms'
    gradients unchanged: ``N s' / (N s' + 1 - s) = p`` gives ``N = p (1 - s) / (s (1 - p))``
    (infinite when ``s = 0``: no weight helps a term without gradient). Returns one dict per
    term: ``component, share, weight_share, factor, message``.
    """
    if not 0.0 < tail <= 1.0:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    active = [k for k in COMPONENTS if weights.get(k, 0.0) > 0]
    rows = [r for r in history if any(SHARE_FIELDS[k] in r for k in active)]
    if len(active) < 2 or not rows:
        return []
    rows = rows[len(rows) - max(1, math.ceil(tail * len(rows))) :]
    total_w = sum(weights[k] for k in active)
    out = []
    for k in active:
        shares = [float(r[SHARE_FIELDS[k]]) for r in rows if SHARE_FIELDS[k] in r]
        shares = [v for v in shares if math.isfinite(v)]
        if not shares or max(shares) >= threshold:
            continue
        s = _median(shares)
        p = weights[k] / total_w
        factor = math.inf if s <= 0 else p * (1 - s) / (s * (1 - p))
        times = "no weight would help (no gradient)" if math.isinf(factor) else f"×{factor:,.0f}"
        out.append(
            {
                "component": k,
                "share": s,
                "weight_share": p,
                "factor": factor,
                "message": (
                    f"{k} barely acts: {100 * s:.2g}% of the gradient for {100 * p:.0f}% of the "
                    f"weight; its weight would need about {times} to carry its share"
                ),
            }
        )
    return out


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
