"""One random number generator per run: runs that train at the same time in one process are
each bit-identical to the same run alone.

PyTorch's default generator is one per process and device, shared by every thread. Seeding it
(``torch.manual_seed``) from a run that trains in a thread next to another makes both runs'
random draws depend on how the threads interleave. So a run owns its generators and nothing it
does after construction draws from the global one:

- modules are *built* with the global generator (their initialisers know no other), seeded for
  the run, under one process-wide lock, and the global state is restored afterwards
  (``seeded_construction``);
- the data order and augmentation draw from the run's CPU generator (``torch.randperm(...,
  generator=g)``);
- dropout and stochastic depth, the only random layers of the registered models
  (``mobilenet_v2``, ``efficientnet_b0``, ``vgg11_bn``), are replaced by equivalents that draw
  from the run's generator on the model's device (``use_run_generator``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

__all__ = ["RunDropout", "RunStochasticDepth", "seeded_construction", "use_run_generator"]

_CONSTRUCTION = threading.Lock()


@contextlib.contextmanager
def seeded_construction(seed: int) -> Iterator[None]:
    """Build modules from ``seed`` alone: the global CPU generator, seeded, under a lock that
    every run of this process takes for construction; its previous state is restored after."""
    with _CONSTRUCTION, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class RunDropout(nn.Module):
    """``nn.Dropout`` (Srivastava et al., JMLR 2014) drawing its mask from a given generator:
    ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` elementwise, identity in eval mode."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p = float(p)
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.rand(x.shape, generator=self.generator, device=x.device) < keep
        return x * mask.to(x.dtype) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RunStochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth`` (Huang et al., "Deep Networks with Stochastic Depth",
    ECCV 2016) drawing from a given generator: in ``row`` mode each sample's residual branch is
    kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``; in ``batch`` mode one draw
    decides for the whole batch."""

    def __init__(self, p: float, mode: str, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.mode, self.generator = float(p), mode, generator

    def forward(self, x: Tensor) -> Tensor:  # x: [B, ...]
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.rand(shape, generator=self.generator, device=x.device) < keep
        return x * noise.to(x.dtype) / keep


def use_run_generator(model: nn.Module, generator: torch.Generator) -> int:
    """Replace every ``nn.Dropout`` and ``StochasticDepth`` of ``model`` in place by one that
    draws from ``generator``; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, RunDropout(child.p, generator))
            elif isinstance(child, StochasticDepth):
                setattr(parent, name, RunStochasticDepth(child.p, child.mode, generator))
            else:
                continue
            replaced += 1
    return replaced
