"""The learning-rate schedule of a run, stepped once per optimizer step.

- ``cosine`` (the default): cosine annealing from ``lr`` to 0 over the run (Loshchilov and
  Hutter, "SGDR", ICLR 2017, without restarts);
- ``multistep``: ``lr * lr_decay^k`` after the ``k``-th milestone epoch, the step decay of the
  KD literature's CIFAR protocol (x0.1 after epochs 150, 180, 210 of 240);
- ``constant``: ``lr`` throughout.

``warmup_epochs > 0`` first raises the rate linearly from ``lr / warmup_steps`` to ``lr`` (Goyal
et al., "Accurate, Large Minibatch SGD", 2017); the schedule then runs over the remaining steps.
Every factor is a closed form of the step number, so a resumed run (whose scheduler state holds
the step) follows the same rates as one that never stopped.
"""

from __future__ import annotations

import bisect
import math

import torch

from workbench.config.run_config import RunConfig

__all__ = ["build_scheduler", "lr_factor"]


def lr_factor(config: RunConfig, step: int, steps_per_epoch: int) -> float:
    """The multiplier of ``config.lr`` at optimizer step ``step`` (0 before the first step)."""
    total = steps_per_epoch * config.epochs
    warmup = steps_per_epoch * config.warmup_epochs
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "multistep":
        epoch = step // steps_per_epoch  # epochs finished before this step
        return config.lr_decay ** bisect.bisect_right(config.milestones, epoch)
    if config.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: RunConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The run's schedule. The default (cosine, no warm-up) is ``CosineAnnealingLR``, whose
    recursive form the stored runs were trained with; the others are a ``LambdaLR`` of
    ``lr_factor``."""
    if config.schedule == "cosine" and config.warmup_epochs == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=steps_per_epoch * config.epochs
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch)
    )
