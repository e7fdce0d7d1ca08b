"""The stop rules, checked epoch by epoch on the host: divergence, convergence and plateau.

Divergence: a NaN or infinite loss or parameter, or a loss above `diverge_factor` times the
first epoch's. Convergence: the loss changed by less than `tolerance` for `patience` epochs in
a row. Plateau: the best loss has not improved by more than `tolerance` for `plateau_epochs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from gdflow.training.optimization import Optimization

#: Why training stopped: the run's verdict.
StopReason = Literal["max_epochs", "converged", "diverged", "plateaued", "cancelled"]
#: What diverged: the loss became NaN or infinite, a parameter did, or the loss outgrew its limit.
DivergenceCause = Literal["nonfinite_loss", "nonfinite_params", "loss_limit"]


@dataclass(frozen=True)
class Stop:
    """Why and at which epoch training stops, in words (`detail`) and as fields."""

    reason: StopReason
    detail: str
    diverged_at: Optional[int] = None
    diverged_because: Optional[DivergenceCause] = None


def divergence_cause(loss: float, finite_params: bool, limit: float) -> Optional[DivergenceCause]:
    """What diverged in an epoch with this loss, or None when it did not diverge."""
    if not math.isfinite(loss):
        return "nonfinite_loss"
    if not finite_params:
        return "nonfinite_params"
    if math.isfinite(limit) and loss > limit > 0:
        return "loss_limit"
    return None


def diverged(cause: DivergenceCause, loss: float, epoch: int) -> Stop:
    """The stop for a divergence of `cause` at `epoch`, with the verdict's words."""
    if cause == "nonfinite_loss":
        detail = f"loss NaN or infinite at epoch {epoch}"
    elif cause == "nonfinite_params":
        detail = f"a parameter became NaN or infinite at epoch {epoch}"
    else:
        detail = f"loss {loss:.3g} at epoch {epoch}"
    return Stop("diverged", detail, diverged_at=epoch, diverged_because=cause)


class StopRules:
    """The stop rules over the epochs seen so far, and the best loss among them."""

    def __init__(self, opt: Optimization) -> None:
        self.opt = opt
        self.first_loss: Optional[float] = None
        self.previous: Optional[float] = None  # the last epoch's loss
        self.best_epoch: Optional[int] = None
        self.best_loss = math.inf
        self.improved_loss = math.inf  # last loss that beat the best by more than the tolerance
        self.improved_epoch = 0
        self.settled = 0  # epochs in a row whose loss changed by less than the tolerance

    def check(
        self, losses: np.ndarray, finite_params: np.ndarray, first_epoch: int
    ) -> tuple[int, Optional[Stop]]:
        """Apply the rules epoch by epoch: how many of the rows to keep, and the stop if any."""
        if self.first_loss is None and len(losses):
            self.first_loss = float(losses[0])
        limit = (self.first_loss or 0.0) * self.opt.diverge_factor
        for i, loss in enumerate(losses):
            epoch = first_epoch + i
            cause = divergence_cause(loss, bool(finite_params[i]), limit)
            if cause is not None:
                return i, diverged(cause, loss, epoch)
            self._track_best(loss, epoch)
            stop = self._converged(loss, epoch) or self._plateaued(epoch)
            if stop is not None:
                return i + 1, stop
            self.previous = loss
        return len(losses), None

    def _track_best(self, loss: float, epoch: int) -> None:
        """Remember the best loss, and the last one that improved by more than the tolerance."""
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
        if loss < self.improved_loss - (self.opt.tolerance or 0.0):
            self.improved_loss, self.improved_epoch = loss, epoch

    def _converged(self, loss: float, epoch: int) -> Optional[Stop]:
        """Stop when the loss changed by less than the tolerance for `patience` epochs."""
        tolerance, patience = self.opt.tolerance, self.opt.patience
        if tolerance is None or self.previous is None:
            return None
        self.settled = self.settled + 1 if abs(loss - self.previous) < tolerance else 0
        if self.settled < patience:
            return None
        return Stop(
            "converged",
            f"loss changed by less than {tolerance:g} for {patience} epoch(s) at epoch {epoch}",
        )

    def _plateaued(self, epoch: int) -> Optional[Stop]:
        """Stop when the loss improved by no more than the tolerance for `plateau_epochs`."""
        window = self.opt.plateau_epochs
        if window is None or epoch - self.improved_epoch < window:
            return None
        return Stop(
            "plateaued",
            f"the loss improved by no more than {self.opt.tolerance or 0:g} for {window} "
            f"epochs (since {self.improved_loss:.6g} at epoch {self.improved_epoch})",
        )
