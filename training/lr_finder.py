"""The learning-rate range test of `--lr auto` for models with no stability bound (`mlp`).

As PyTorch Lightning's learning-rate finder does (after Smith, "Cyclical Learning Rates"):
from the initial weights, take up to `steps` optimizer steps on the training loss while the
rate grows exponentially from `min_lr` to `max_lr`; stop early once the (smoothed) loss exceeds
`stop_factor` times its best. The chosen rate is where the smoothed loss falls fastest against
log(lr), ignoring the first and last points. The curve is kept, so the choice can be checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from gdflow.training.model import NetworkModel, TrainingData
from gdflow.training.optimization import Optimization, make_optimizer

#: Points left out at the start and the end of the curve when choosing (Lightning's defaults).
SKIP_BEGIN, SKIP_END = 10, 1


@dataclass(frozen=True)
class RangeTest:
    """The rates tried, the smoothed loss at each, the rate chosen and how it was chosen."""

    lrs: list[float]
    losses: list[float]
    chosen: float
    how: str

    def as_record(self) -> dict[str, Any]:
        """The test as JSON values, as stored with the run."""
        return {"lrs": self.lrs, "losses": self.losses, "chosen": self.chosen, "how": self.how}


def range_test(
    data: TrainingData,
    initial: dict[str, float],
    opt: Optimization,
    *,
    device: torch.device,
) -> RangeTest:
    """Run the range test on a copy of the model (the run itself starts afresh)."""
    model = NetworkModel(data, initial, device)

    def loss_and_gradient() -> torch.Tensor:
        loss = model.full_loss()
        loss.backward()
        return loss

    return range_test_of(model.params, loss_and_gradient, opt)


def range_test_of(
    params: list[torch.Tensor],
    loss_and_gradient: Callable[[], torch.Tensor],
    opt: Optimization,
    *,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 100,
    stop_factor: float = 4.0,
    fallback: float = 1e-3,
) -> RangeTest:
    """The range test of `params`, whose full-batch loss `loss_and_gradient` returns, each
    parameter's `.grad` set to its gradient (by autograd here, or summed from a Dask cluster's
    workers, `training.cluster`)."""
    optimizer = make_optimizer(params, opt)
    ratio = (max_lr / min_lr) ** (1.0 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    for step in range(steps):
        lr = min_lr * ratio**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_and_gradient()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        average = 0.98 * average + 0.02 * value
        smoothed = average / (1 - 0.98 ** (step + 1))  # bias-corrected moving average
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > stop_factor * best:
            break
        optimizer.step()
        optimizer.zero_grad()
    chosen, how = _choose(lrs, losses)
    if chosen is None:
        return RangeTest(lrs, losses, fallback, how + f"; using {fallback:g}")
    return RangeTest(lrs, losses, chosen, how)


def _choose(lrs: list[float], losses: list[float]) -> tuple[Optional[float], str]:
    """The rate of steepest descent of the loss against log(lr), and the reason in words."""
    usable = losses[SKIP_BEGIN:-SKIP_END] if len(losses) > SKIP_BEGIN + SKIP_END + 1 else []
    if len(usable) < 3:
        return None, f"the range test kept only {len(losses)} finite point(s)"
    slopes = np.gradient(np.asarray(usable), np.log(np.asarray(lrs[SKIP_BEGIN:-SKIP_END])))
    index = int(np.argmin(slopes))
    if not slopes[index] < 0:
        return None, "the loss never fell during the range test"
    chosen = lrs[SKIP_BEGIN + index]
    return chosen, (
        f"range test over {len(losses)} steps from {lrs[0]:.3g} to {lrs[-1]:.3g}: the loss fell "
        f"fastest at lr {chosen:.3g}"
    )
