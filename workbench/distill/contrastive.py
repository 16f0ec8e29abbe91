"""Contrastive representation distillation (Tian, Krishnan and Isola, "Contrastive
Representation Distillation", ICLR 2020): the relation kind ``crd``.

The student's and the teacher's representations of a sample are embedded (a linear head each,
then l2-normalised: v^S, v^T in R^128) and each is contrasted with the other network's memory of
the training set: one row per sample, the positive being the sample itself and K = 16,384 other
samples the negatives. The critic is h(v, u) = exp(v . u / tau) / Z, tau = 0.07, and NCE
(the paper's eq. 18, the reference code's ``ContrastLoss``) treats the negatives as drawn from a
uniform noise distribution 1/N over the N training samples:

    P(D=1 | v, u) = h / (h + K/N)
    L = -(1/B) sum_b [ log P(D=1 | v_b, m_{i_b}) + sum_k log(1 - P(D=1 | v_b, m_{j_bk})) ]

summed over both directions (student anchor against the teacher's memory, teacher anchor
against the student's). Z is estimated once, on the first batch, as N times the mean of
exp(v . u / tau) over its positives and negatives, then kept fixed. After each step, the rows
of the batch's samples move towards the new embeddings: m <- normalise(0.5 m + 0.5 v).

Reference code: HobbitLong/RepDistiller, ``crd/criterion.py`` (``CRDLoss``, ``ContrastLoss``,
``Embed``), ``crd/memory.py`` (``ContrastMemory``) and ``dataset/cifar100.py``
(``CIFAR100InstanceSample``, which hands the loss each sample's negative indices). The pure math
is in functions here; ``ContrastiveRepresentation`` holds the heads, the memory banks, Z and the
generator of the negatives, and is what ``HybridLoss`` builds for ``relation_kind="crd"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.distill.precision import full_precision
from workbench.distill.stateful import MethodInputs, TermModule

__all__ = [
    "CRD_EPS",
    "CRD_FEAT_DIM",
    "CRD_MOMENTUM",
    "CRD_NCE_K",
    "CRD_TEMPERATURE",
    "ContrastiveRepresentation",
    "crd_loss",
    "crd_negatives",
    "crd_normaliser",
    "crd_scores",
    "momentum_update",
    "nce_loss",
]

CRD_FEAT_DIM = 128  # RepDistiller train_student.py: --feat_dim 128
CRD_NCE_K = 16384  # --nce_k 16384 negatives per positive
CRD_TEMPERATURE = 0.07  # --nce_t 0.07
CRD_MOMENTUM = 0.5  # --nce_m 0.5, the memory's momentum
CRD_EPS = 1e-7  # crd/criterion.py: eps = 1e-7 in ContrastLoss's denominators


def crd_scores(anchor: Tensor, rows: Tensor, temperature: float = CRD_TEMPERATURE) -> Tensor:
    """exp(<m_k, v> / tau) of each anchor v [B, D] with its memory rows m [B, K+1, D] (column 0
    the positive) -> [B, K+1], not yet divided by Z (``ContrastMemory.forward``)."""
    return torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / temperature)  # [B, K+1]


def crd_normaliser(scores: Tensor, num_samples: int) -> Tensor:
    """Z = N * mean(exp(v . m / tau)) over a batch's scores [B, K+1], a constant (no gradient):
    the Monte-Carlo estimate of the partition function over the N samples that
    ``ContrastMemory`` makes once, on the first batch."""
    return scores.detach().mean() * num_samples


def nce_loss(probs: Tensor, num_samples: int, eps: float = CRD_EPS) -> Tensor:
    """NCE of one direction (RepDistiller's ``ContrastLoss``, the paper's eq. 18) on the
    normalised scores h = exp(v . m / tau) / Z [B, K+1], column 0 the positive:

        L = -(1/B) sum_b [ log(h_b0 / (h_b0 + K/N + eps))
                           + sum_{k>=1} log((K/N) / (h_bk + K/N + eps)) ]

    i.e. -log P(D=1) on the positive and -log P(D=0) = -log(1 - h / (h + K/N)) on each negative,
    with K/N the noise's weight: K negatives drawn from the uniform distribution 1/N."""
    b, k = probs.shape[0], probs.shape[1] - 1
    noise = k / float(num_samples)  # K * P_n, P_n = 1/N
    log_pos = torch.log(probs[:, 0] / (probs[:, 0] + noise + eps))  # [B]
    log_neg = torch.log(noise / (probs[:, 1:] + noise + eps))  # [B, K]
    return -(log_pos.sum() + log_neg.sum()) / b


def crd_loss(
    student_embed: Tensor,
    teacher_embed: Tensor,
    student_rows: Tensor,
    teacher_rows: Tensor,
    z_student: Tensor | float,
    z_teacher: Tensor | float,
    num_samples: int,
    *,
    temperature: float = CRD_TEMPERATURE,
) -> Tensor:
    """CRD's objective for one batch (RepDistiller's ``CRDLoss.forward`` after the embedding):

        L = NCE(exp(v^S . m^T / tau) / Z_S) + NCE(exp(v^T . m^S / tau) / Z_T)

    ``student_embed`` v^S and ``teacher_embed`` v^T [B, D] (l2-normalised embeddings),
    ``teacher_rows`` m^T and ``student_rows`` m^S [B, K+1, D]: the other network's memory at
    (positive, K negatives) of each sample; ``z_student`` / ``z_teacher`` the fixed normalisers
    of the student-anchored and the teacher-anchored scores; ``num_samples`` N, the training
    set's size; ``temperature`` tau = 0.07. See ``nce_loss``."""
    s_probs = crd_scores(student_embed, teacher_rows, temperature) / z_student  # [B, K+1]
    t_probs = crd_scores(teacher_embed, student_rows, temperature) / z_teacher  # [B, K+1]
    return nce_loss(s_probs, num_samples) + nce_loss(t_probs, num_samples)


def momentum_update(memory: Tensor, feats: Tensor, idx: Tensor, momentum: float) -> Tensor:
    """The new memory rows of the batch's samples (``ContrastMemory``'s update):

        m_i <- (momentum * m_i + (1 - momentum) * v_i) / ||momentum * m_i + (1 - momentum) * v_i||

    memory [N, D], feats v [B, D] (detached), idx [B] -> rows [B, D]; the caller writes them
    back (``memory.index_copy_(0, idx, rows)``)."""
    rows = memory.index_select(0, idx) * momentum + feats * (1.0 - momentum)  # [B, D]
    return rows / rows.norm(dim=1, keepdim=True)


def crd_negatives(idx: Tensor, num_samples: int, k: int, generator: torch.Generator) -> Tensor:
    """K distinct negatives per sample, uniform over the N - 1 other samples: idx [B] -> [B, K],
    drawn on ``generator``'s device (``torch.rand`` + ``topk``: a uniform random K-subset).

    The reference's data set (``CIFAR100InstanceSample``, mode ``exact``) draws them without
    replacement from the samples of the other classes (``cls_negative[target]``); the loss here
    sees no labels, so only the positive itself is excluded (like its ``ContrastMemory``, whose
    own sampler, used without the data set's indices, draws over all N with replacement)."""
    b = idx.shape[0]
    keys = torch.rand(b, num_samples - 1, generator=generator, device=generator.device)
    others = keys.topk(k, dim=1, sorted=False).indices.to(idx.device)  # [B, K] in 0..N-2
    return others + (others >= idx[:, None]).long()  # skip the positive: 0..N-1 without i_b


class _Embed(nn.Module):
    """RepDistiller's ``Embed``: flatten, Linear(dim_in, feat_dim), l2-normalise."""

    def __init__(self, dim_in: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, feat_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), dim=1)  # [B, feat_dim]


class ContrastiveRepresentation(TermModule):
    """CRD's term (see the module docstring) on the run's LAST layer pair: the deepest one, CRD
    distilling the penultimate representation (the reference embeds ``feat[-1]``, the pooled
    features before the classifier); earlier pairs are not read.

    - ``embed_student`` / ``embed_teacher``: Linear(flattened width, ``feat_dim``) + l2
      normalisation; they train with the student (the teacher's head on the frozen teacher's
      features, which carry no gradient);
    - ``memory_student`` / ``memory_teacher`` [N, feat_dim] buffers, uniform in [-s, s] with
      s = 1 / sqrt(feat_dim / 3), as ``ContrastMemory``; ``z_student`` / ``z_teacher``, -1 until
      the first batch sets them (``crd_normaliser``), then fixed;
    - K = min(``nce_k``, N - 1) negatives per sample (``crd_negatives``), drawn from the
      module's own generator, seeded from the global generator at construction (the engine
      seeds construction with the run's seed) and created on the memory's device at the first
      draw; its seed and state are the module's extra state, so a resumed run draws the same
      negatives.

    ``HybridLoss`` passes ``temperature`` (the pure loss's parameter, ``relation_params``);
    ``feat_dim``, ``nce_k`` and ``momentum`` are the reference's defaults.
    """

    def __init__(
        self,
        inputs: MethodInputs,
        *,
        temperature: float = CRD_TEMPERATURE,
        feat_dim: int = CRD_FEAT_DIM,
        nce_k: int = CRD_NCE_K,
        momentum: float = CRD_MOMENTUM,
    ) -> None:
        super().__init__()
        if not inputs.student_shapes or not inputs.teacher_shapes:
            raise ValueError("relation kind crd needs at least one layer pair")
        n = int(inputs.num_samples)
        if n < 2:
            raise ValueError(
                f"relation kind crd contrasts each sample with others: it needs a training set "
                f"of at least 2 samples, got num_samples={inputs.num_samples}"
            )
        if not float(temperature) > 0:
            raise ValueError(f"crd temperature must be > 0, got {temperature!r}")
        if not 0 <= float(momentum) < 1:
            raise ValueError(f"crd momentum must be in [0, 1), got {momentum!r}")
        if int(feat_dim) < 1 or int(nce_k) < 1:
            raise ValueError(f"crd feat_dim and nce_k must be >= 1, got {feat_dim}, {nce_k}")
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.num_samples, self.feat_dim = n, int(feat_dim)
        self.nce_k = min(int(nce_k), n - 1)  # K, capped to the other samples
        self.embed_student = _Embed(math.prod(inputs.student_shapes[-1]), self.feat_dim)
        self.embed_teacher = _Embed(math.prod(inputs.teacher_shapes[-1]), self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.register_buffer("memory_student", torch.rand(n, self.feat_dim) * (2 * stdv) - stdv)
        self.register_buffer("memory_teacher", torch.rand(n, self.feat_dim) * (2 * stdv) - stdv)
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))
        self.seed = int(torch.randint(0, 2**62, (1,)).item())  # the global, seeded generator
        self.generator: torch.Generator | None = None  # created on the memory's device
        self._saved_generator: tuple[str, Tensor] | None = None
        self._z_checked = False  # Z looked at once per instance and per load: set, or set now

    @torch.no_grad()
    def _set_normalisers(self, v_s: Tensor, v_t: Tensor, m_s: Tensor, m_t: Tensor) -> None:
        """Z of each direction from this batch where it is still -1 (``ContrastMemory``: on
        the first batch), without a host sync; a Z already set (or loaded) is kept."""
        n = self.num_samples
        z_s = crd_normaliser(crd_scores(v_s, m_t, self.temperature), n)
        z_t = crd_normaliser(crd_scores(v_t, m_s, self.temperature), n)
        self.z_student.copy_(torch.where(self.z_student < 0, z_s, self.z_student))
        self.z_teacher.copy_(torch.where(self.z_teacher < 0, z_t, self.z_teacher))
        self._z_checked = True

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._saved_generator is not None:
                saved_type, state = self._saved_generator
                if saved_type != device.type:
                    raise ValueError(
                        f"CRD's negatives were drawn on {saved_type}; this run's memory is on "
                        f"{device.type}, where that generator cannot continue: resume it on "
                        f"{saved_type}"
                    )
                self.generator.set_state(state)
                self._saved_generator = None
        return self.generator

    def get_extra_state(self) -> dict[str, Any]:
        g = self.generator
        if g is None and self._saved_generator is not None:  # loaded, not yet drawn from
            device, state = self._saved_generator
            return {"seed": self.seed, "device": device, "state": state}
        return {
            "seed": self.seed,
            "device": None if g is None else g.device.type,
            "state": None if g is None else g.get_state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator = None
        self._z_checked = False
        saved = state.get("state")
        self._saved_generator = None if saved is None else (str(state["device"]), saved)

    def forward(
        self,
        student_feats: Sequence[Tensor],
        teacher_feats: Sequence[Tensor],
        indices: Tensor | None = None,
    ) -> Tensor:
        if indices is None:
            raise ValueError(
                "relation kind crd reads each sample's row of its memory banks: pass indices, "
                "the batch's positions in the training set (HybridLoss.forward(..., indices=idx))"
            )
        s, t = student_feats[-1], teacher_feats[-1]  # the deepest pair, [B, ...] each
        b = s.shape[0]
        idx = indices.reshape(-1).to(device=self.memory_student.device, dtype=torch.long)  # [B]
        if t.shape[0] != b or idx.shape[0] != b:
            raise ValueError(
                f"crd: {b} student samples, {t.shape[0]} teacher samples, {idx.shape[0]} indices"
            )
        # The teacher's features carry no gradient (an inference tensor, or cached); a plain
        # copy lets its head save them for backward without touching the caller's tensor.
        t = full_precision(t.detach())
        t = t.clone() if t.is_inference() else t
        with torch.autocast(s.device.type, enabled=False):
            v_s = self.embed_student(full_precision(s))  # [B, D]
            v_t = self.embed_teacher(t)  # [B, D]
            negatives = crd_negatives(
                idx, self.num_samples, self.nce_k, self._generator(idx.device)
            )  # [B, K]
            rows = torch.cat([idx[:, None], negatives], dim=1).reshape(-1)  # [B (K+1)]
            d = self.feat_dim
            m_s = self.memory_student.index_select(0, rows).view(b, -1, d)  # [B, K+1, D]
            m_t = self.memory_teacher.index_select(0, rows).view(b, -1, d)  # [B, K+1, D]
            if not self._z_checked:
                self._set_normalisers(v_s, v_t, m_s, m_t)
            loss = crd_loss(
                v_s,
                v_t,
                m_s,
                m_t,
                self.z_student.clone(),
                self.z_teacher.clone(),
                self.num_samples,
                temperature=self.temperature,
            )
            with torch.no_grad():  # after reading them, as ContrastMemory
                new_s = momentum_update(self.memory_student, v_s.detach(), idx, self.momentum)
                new_t = momentum_update(self.memory_teacher, v_t.detach(), idx, self.momentum)
                self.memory_student.index_copy_(0, idx, new_s)
                self.memory_teacher.index_copy_(0, idx, new_t)
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, feat_dim={self.feat_dim}, nce_k={self.nce_k}, "
            f"temperature={self.temperature:g}, momentum={self.momentum:g}"
        )
