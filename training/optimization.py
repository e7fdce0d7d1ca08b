"""How parameters move: the `Optimization` settings and the torch.optim objects built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch


@dataclass(frozen=True)
class Optimization:
    """How parameters move: optimizer, learning rate and its schedule, batches, stop rules."""

    lr: float
    epochs: int
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    lr_step_epochs: int = 100
    lr_gamma: float = 0.5
    batch_size: Optional[int] = None
    seed: int = 0
    tolerance: Optional[float] = None
    patience: int = 1
    plateau_epochs: Optional[int] = None
    diverge_factor: float = 1e6


def make_optimizer(params: list[torch.Tensor], opt: Optimization) -> torch.optim.Optimizer:
    """The configured torch.optim optimizer."""
    if opt.optimizer == "adam":
        return torch.optim.Adam(params, lr=opt.lr)
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)


def make_scheduler(
    optimizer: torch.optim.Optimizer, opt: Optimization
) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """The configured learning-rate schedule, stepped once per epoch (None: constant)."""
    if opt.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=opt.lr_step_epochs, gamma=opt.lr_gamma
        )
    if opt.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.epochs)
    return None
