"""How training ended (`TrainResult`), and the host-side history that hands chunks on and
builds it: the stop rules over each copied chunk, and the last state before any stop.

Rows past a stop are discarded, so the recorded run ends at the converged or plateaued epoch,
or at the last epoch before divergence (the diverging epoch is named in the verdict).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from gdflow.training.optimization import Optimization
from gdflow.training.records import EpochChunk
from gdflow.training.statistics_mse import LossPath
from gdflow.training.stopping import DivergenceCause, Stop, StopReason, StopRules


@dataclass(frozen=True)
class TrainResult:
    """How training ended: epochs recorded, the verdict, the final and the best state."""

    epochs_done: int
    stop_reason: StopReason
    final_params: dict[str, float]
    final_loss: Optional[float]
    device: str
    diverged_at: Optional[int] = None
    best_epoch: Optional[int] = None
    best_loss: Optional[float] = None
    seconds: float = 0.0
    verdict_detail: str = ""
    lr: float = 0.0
    max_stable_lr: Optional[float] = None
    #: What diverged, when `stop_reason` is "diverged" (the same as `verdict_detail` in words).
    diverged_because: Optional[DivergenceCause] = None
    #: The learning-rate range test that chose the rate of `--lr auto` for a network, if any.
    lr_range_test: Optional[dict[str, Any]] = None
    #: How the full-batch loss was computed: the model's ops on every row ("direct"), one
    #: fused pass over the rows ("fused"), or the rows' sufficient statistics ("statistics").
    loss_path: LossPath = "direct"
    #: Where the rows were: all in memory ("in-memory"), or read from their files epoch by
    #: epoch ("streamed", `training.streamed`).
    data_mode: str = "in-memory"


class History:
    """The epochs kept so far: each chunk checked by the stop rules, then handed on."""

    def __init__(
        self,
        initial: dict[str, float],
        opt: Optimization,
        *,
        has_val: bool,
        on_chunk: Optional[Callable[[EpochChunk], None]],
        has_accuracy: bool = False,
    ) -> None:
        self.names = tuple(initial)
        self.initial = dict(initial)
        self.opt = opt
        self.has_val = has_val
        self.has_accuracy = has_accuracy
        self.on_chunk = on_chunk
        self.rules = StopRules(opt)
        self.stop: Optional[Stop] = None
        self.last_epoch = 0
        self.last_loss: Optional[float] = None
        self.last_params: dict[str, float] = {}

    def add(self, host: np.ndarray, lrs: np.ndarray, *, last_epoch: int) -> bool:
        """Keep a chunk's epochs (ending at `last_epoch`) up to any stop and hand them on;
        True when training must stop."""
        first_epoch = last_epoch - len(host) + 1
        n_params = len(self.names)
        params = host[:, 2 : 2 + n_params]
        losses = host[:, 0].astype(np.float64)
        keep, self.stop = self.rules.check(losses, np.isfinite(params).all(axis=1), first_epoch)
        kept = host[:keep]
        if keep:
            self.last_epoch = first_epoch + keep - 1
            self.last_loss = float(kept[-1, 0])
            self.last_params = dict(zip(self.names, (float(v) for v in kept[-1, 2 : 2 + n_params])))
            if self.on_chunk is not None:
                self.on_chunk(
                    EpochChunk(
                        epochs=np.arange(first_epoch, first_epoch + keep),
                        losses=kept[:, 0],
                        grad_norms=kept[:, 1],
                        params=kept[:, 2 : 2 + n_params],
                        names=self.names,
                        lrs=lrs[:keep],
                        val_losses=kept[:, 2 + n_params] if self.has_val else None,
                        val_accuracies=kept[:, -1] if self.has_accuracy else None,
                    )
                )
        return self.stop is not None

    def cancel(self, detail: str) -> bool:
        """Stop as `cancelled`, asked from outside, with every epoch so far kept; True."""
        self.stop = Stop("cancelled", detail)
        return True

    def result(self, device: str, seconds: float, loss_path: LossPath = "direct") -> TrainResult:
        """The TrainResult for what has been recorded so far."""
        stop = self.stop or Stop("max_epochs", "reached the maximum number of epochs")
        best_epoch = self.rules.best_epoch
        return TrainResult(
            epochs_done=self.last_epoch,
            stop_reason=stop.reason,
            final_params=self.last_params or dict(self.initial),
            final_loss=self.last_loss,
            device=device,
            diverged_at=stop.diverged_at,
            best_epoch=best_epoch,
            best_loss=self.rules.best_loss if best_epoch is not None else None,
            seconds=seconds,
            verdict_detail=stop.detail,
            lr=self.opt.lr,
            diverged_because=stop.diverged_because,
            loss_path=loss_path,
        )
