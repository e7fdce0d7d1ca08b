"""The seed's gradient-descent loop in PyTorch: a linear model, MSE loss, a torch.optim optimizer.

Per-epoch records (loss before the update, gradient norm, parameters after the update and, with
a validation split, the validation loss after the update) are kept as tensors on the training
device and copied to the host in chunks, so a GPU run does not synchronise every epoch. Large
full-batch problems compute the loss with `tasks.fused_loss` (one pass over the data for the loss
and its gradient); the seed's toy data keeps the seed's exact operations.
Stop rules (divergence, convergence, plateau) are checked on each copied chunk; training state
past a stop is discarded, so the recorded run ends at the converged or plateaued epoch, or at
the last epoch before divergence (the diverging epoch is named in the verdict). A stop asked
for from outside (`should_stop`, e.g. on SIGTERM) ends training after the current epoch, with
every epoch so far handed on, as `cancelled`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import numpy as np
import torch

from gdflow.training.fused_mse import fused_mse, use_fused

#: Why training stopped: the run's verdict.
StopReason = Literal["max_epochs", "converged", "diverged", "plateaued", "cancelled"]

#: Epochs recorded on the device before a copy to the host, at most.
CHUNK_EPOCHS = 4096
#: Seconds between copies to the host (and so database writes), at most.
FLUSH_SECONDS = 2.0


def parameter_names(feature_names: Sequence[str], *, bias: bool) -> list[str]:
    """Name the model's parameters: `w` for one feature, `w_<feature>` for several, then `b`."""
    names = ["w"] if len(feature_names) == 1 else [f"w_{name}" for name in feature_names]
    return [*names, "b"] if bias else names


def initial_parameters(
    names: Sequence[str], *, init: Union[float, Literal["random"]], seed: int
) -> dict[str, float]:
    """Initial values: every weight `init` and the bias 0, or N(0, 1) draws seeded by `seed`."""
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        draws = torch.randn(len(names), generator=generator, dtype=torch.float64)
        return {name: float(v) for name, v in zip(names, draws.tolist())}
    return {name: (0.0 if name == "b" else float(init)) for name in names}


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


@dataclass(frozen=True)
class EpochChunk:
    """Consecutive epochs' records on the host."""

    epochs: np.ndarray
    losses: np.ndarray
    grad_norms: np.ndarray
    params: np.ndarray
    names: tuple[str, ...]
    lrs: np.ndarray
    val_losses: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.epochs.shape[0])


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


def progress_line(epoch: int, params: dict[str, float], loss: float) -> str:
    """The seed's progress line, e.g. `Epoch 1: w = 1.220, loss = 11.000`."""
    values = ", ".join(f"{name} = {value:.3f}" for name, value in params.items())
    return f"Epoch {epoch}: {values}, loss = {loss:.3f}"


def _optimizer(params: list[torch.Tensor], opt: Optimization) -> torch.optim.Optimizer:
    """The configured torch.optim optimizer."""
    if opt.optimizer == "adam":
        return torch.optim.Adam(params, lr=opt.lr)
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)


def _scheduler(
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


def fit(
    x: np.ndarray,
    y: np.ndarray,
    initial: dict[str, float],
    opt: Optimization,
    *,
    device: torch.device,
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
    on_chunk: Optional[Callable[[EpochChunk], None]] = None,
    chunk_epochs: int = CHUNK_EPOCHS,
    flush_seconds: float = FLUSH_SECONDS,
    should_stop: Optional[Callable[[], Optional[str]]] = None,
) -> TrainResult:
    """Train y ~ x @ w (+ b) with MSE loss on `device` and return how it ended; `should_stop`
    is asked after every epoch and returns why to stop (e.g. "SIGTERM"), or None to go on."""
    names = tuple(initial)
    has_bias = names[-1:] == ("b",)
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    x_t = torch.as_tensor(x, dtype=dtype, device=device)
    y_t = torch.as_tensor(y, dtype=dtype, device=device)
    val = None
    if validation is not None:
        val = tuple(torch.as_tensor(a, dtype=dtype, device=device) for a in validation)
    values = [initial[name] for name in names]
    n_weights = len(names) - int(has_bias)
    w = torch.tensor(values[:n_weights], dtype=dtype, device=device, requires_grad=True)
    b = torch.tensor(values[n_weights:], dtype=dtype, device=device, requires_grad=True)
    params = [w, b] if has_bias else [w]
    optimizer = _optimizer(params, opt)
    scheduler = _scheduler(optimizer, opt)
    batches = _Batches(x_t.shape[0], opt.batch_size, opt.seed, device)

    def model(inputs: torch.Tensor) -> torch.Tensor:
        return inputs @ w + b if has_bias else inputs @ w

    fused = use_fused(x_t, full_batch=batches.full)
    rows = max(1, min(chunk_epochs, opt.epochs))
    records = _Records(rows)
    state = _Progress(names=names, initial=dict(initial), opt=opt, has_val=val is not None)
    state.on_chunk = on_chunk
    started = time.perf_counter()
    last_flush = time.monotonic()
    for epoch in range(1, opt.epochs + 1):
        records.lrs[records.count] = optimizer.param_groups[0]["lr"]
        if batches.full:
            if fused:
                loss = fused_mse(x_t, y_t, w, b if has_bias else None)
            else:
                loss = ((model(x_t) - y_t) ** 2).mean()
            loss.backward()
            # zero_grad() below sets .grad to None, so keeping these tensors copies nothing.
            grads = [p.grad for p in params]
            optimizer.step()
            optimizer.zero_grad()
        else:
            loss, grad = batches.epoch(x_t, y_t, model, params, optimizer)
            grads = [grad]
        with torch.no_grad():
            val_loss = None if val is None else ((model(val[0]) - val[1]) ** 2).mean()
            records.add(loss.detach(), grads, [p.detach().clone() for p in params], val_loss)
        if scheduler is not None:
            scheduler.step()
        asked = should_stop() if should_stop is not None else None
        if (
            asked
            or records.count == rows
            or epoch == opt.epochs
            or time.monotonic() - last_flush >= flush_seconds
        ):
            count = records.count
            stop = state.flush(
                records.to_host(), records.lrs[:count].copy(), first_epoch=epoch - count + 1
            )
            last_flush = time.monotonic()
            if not stop and asked and epoch < opt.epochs:
                state.stop_reason = "cancelled"
                state.detail = f"stopped by {asked} after epoch {epoch}"
                stop = True
            if stop:
                break
    return state.result(str(device), time.perf_counter() - started)


class _Records:
    """Per-epoch records kept as device tensors, stacked and copied to the host once per chunk.

    Appending references (and one small copy of the parameters) is all an epoch costs; the
    gradient norms and the host copy are computed for the whole chunk at once.
    """

    def __init__(self, rows: int) -> None:
        self.lrs = np.empty(rows)
        self.count = 0
        self.losses: list[torch.Tensor] = []
        self.grads: list[list[torch.Tensor]] = []
        self.params: list[list[torch.Tensor]] = []
        self.val_losses: list[torch.Tensor] = []

    def add(
        self,
        loss: torch.Tensor,
        grads: list[Optional[torch.Tensor]],
        params: list[torch.Tensor],
        val_loss: Optional[torch.Tensor],
    ) -> None:
        """Keep one epoch's loss, gradients, parameters after the update and validation loss."""
        self.losses.append(loss)
        self.grads.append(grads)  # type: ignore[arg-type]  # set by backward()
        self.params.append(params)
        if val_loss is not None:
            self.val_losses.append(val_loss)
        self.count += 1

    def to_host(self) -> np.ndarray:
        """Rows of (loss, grad norm, parameters..., [val loss]) on the host; then start afresh."""
        with torch.no_grad():
            grads = torch.cat([torch.stack(g).reshape(self.count, -1) for g in zip(*self.grads)], 1)
            columns = [
                torch.stack(self.losses).reshape(-1, 1),
                torch.linalg.vector_norm(grads, dim=1).reshape(-1, 1),
                *(torch.stack(p).reshape(self.count, -1) for p in zip(*self.params)),
            ]
            if self.val_losses:
                columns.append(torch.stack(self.val_losses).reshape(-1, 1))
            host = torch.cat(columns, 1).to("cpu", copy=True).numpy()  # never a device view
        self.losses, self.grads, self.params, self.val_losses = [], [], [], []
        self.count = 0
        return host


class _Batches:
    """Seeded shuffling into mini-batches; `full` when the whole data set is one batch."""

    def __init__(self, n: int, size: Optional[int], seed: int, device: torch.device) -> None:
        self.n = n
        self.size = n if size is None else min(size, n)
        self.full = self.size >= n
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def epoch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        model: Callable[[torch.Tensor], torch.Tensor],
        params: list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of mini-batch steps; returns the row-weighted mean batch loss, last grads."""
        order = torch.randperm(self.n, generator=self.generator, device=self.device)
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        grads = torch.zeros(0, dtype=x.dtype, device=x.device)
        for start in range(0, self.n, self.size):
            index = order[start : start + self.size]
            loss = ((model(x[index]) - y[index]) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                grads = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
                optimizer.step()
                total += loss.detach() * index.shape[0]
            optimizer.zero_grad()
        return total / self.n, grads


@dataclass
class _Progress:
    """Host-side bookkeeping: stop rules over each copied chunk, and the last good state."""

    names: tuple[str, ...]
    initial: dict[str, float]
    opt: Optimization
    has_val: bool
    on_chunk: Optional[Callable[[EpochChunk], None]] = None
    last_epoch: int = 0
    last_loss: Optional[float] = None
    last_params: dict[str, float] = field(default_factory=dict)
    first_loss: Optional[float] = None
    best_epoch: Optional[int] = None
    best_loss: float = math.inf
    improved_loss: float = math.inf  # last loss that beat the best by more than the tolerance
    improved_epoch: int = 0
    settled: int = 0
    stop_reason: StopReason = "max_epochs"
    diverged_at: Optional[int] = None
    detail: str = ""

    def flush(self, host: np.ndarray, lrs: np.ndarray, *, first_epoch: int) -> bool:
        """Keep the chunk's epochs up to any stop, hand them on; True when training must stop."""
        n_params = len(self.names)
        params = host[:, 2 : 2 + n_params]
        losses = host[:, 0].astype(np.float64)
        keep = self._check(losses, np.isfinite(params).all(axis=1), first_epoch)
        kept = host[:keep]
        if keep:
            self.last_epoch = first_epoch + keep - 1
            self.last_loss = float(kept[-1, 0])
            self.last_params = dict(zip(self.names, (float(v) for v in kept[-1, 2:])))
            if self.on_chunk is not None:
                self.on_chunk(
                    EpochChunk(
                        epochs=np.arange(first_epoch, first_epoch + keep),
                        losses=kept[:, 0],
                        grad_norms=kept[:, 1],
                        params=kept[:, 2 : 2 + n_params],
                        names=self.names,
                        lrs=lrs[:keep],
                        val_losses=kept[:, -1] if self.has_val else None,
                    )
                )
        return self.stop_reason != "max_epochs"

    def _check(self, losses: np.ndarray, finite_params: np.ndarray, first_epoch: int) -> int:
        """Apply the stop rules epoch by epoch; return how many of the chunk's rows to keep."""
        opt = self.opt
        if self.first_loss is None and len(losses):
            self.first_loss = float(losses[0])
        limit = (self.first_loss or 0.0) * opt.diverge_factor
        previous = self.last_loss
        watch = opt.tolerance is not None or opt.plateau_epochs is not None
        for i, loss in enumerate(losses):
            epoch = first_epoch + i
            if not (math.isfinite(loss) and finite_params[i]) or (
                math.isfinite(limit) and loss > limit > 0
            ):
                self.stop_reason, self.diverged_at = "diverged", epoch
                if not math.isfinite(loss):
                    self.detail = f"loss NaN or infinite at epoch {epoch}"
                elif not finite_params[i]:
                    self.detail = f"a parameter became NaN or infinite at epoch {epoch}"
                else:
                    self.detail = f"loss {loss:.3g} at epoch {epoch}"
                return i
            if loss < self.best_loss:
                self.best_loss, self.best_epoch = loss, epoch
            if loss < self.improved_loss - (opt.tolerance or 0.0):
                self.improved_loss, self.improved_epoch = loss, epoch
            if not watch:
                continue
            if opt.tolerance is not None and previous is not None:
                self.settled = self.settled + 1 if abs(loss - previous) < opt.tolerance else 0
                if self.settled >= opt.patience:
                    self.stop_reason = "converged"
                    self.detail = (
                        f"loss changed by less than {opt.tolerance:g} for {opt.patience} "
                        f"epoch(s) at epoch {epoch}"
                    )
                    return i + 1
            if opt.plateau_epochs is not None and epoch - self.improved_epoch >= opt.plateau_epochs:
                self.stop_reason = "plateaued"
                self.detail = (
                    f"the loss improved by no more than {opt.tolerance or 0:g} for "
                    f"{opt.plateau_epochs} epochs (since {self.improved_loss:.6g} "
                    f"at epoch {self.improved_epoch})"
                )
                return i + 1
            previous = loss
        return len(losses)

    def result(self, device: str, seconds: float) -> TrainResult:
        """The TrainResult for what has been recorded so far."""
        return TrainResult(
            epochs_done=self.last_epoch,
            stop_reason=self.stop_reason,
            final_params=self.last_params or dict(self.initial),
            final_loss=self.last_loss,
            device=device,
            diverged_at=self.diverged_at,
            best_epoch=self.best_epoch,
            best_loss=self.best_loss if self.best_epoch is not None else None,
            seconds=seconds,
            verdict_detail=self.detail or "reached the maximum number of epochs",
            lr=self.opt.lr,
        )
