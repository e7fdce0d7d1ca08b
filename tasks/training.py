"""The seed's gradient-descent loop in PyTorch: a linear model, MSE loss, torch.optim.SGD.

Per-epoch records (loss before the update, gradient norm, parameters after the update) are
written into a buffer on the training device and copied to the host in chunks, so a GPU run
does not synchronise every epoch; each chunk goes to a callback (the database writer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import numpy as np
import torch

#: Why training stopped.
StopReason = Literal["max_epochs", "converged", "diverged"]

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
class EpochChunk:
    """Consecutive epochs' records on the host: epochs, losses, gradient norms, parameters."""

    epochs: np.ndarray
    losses: np.ndarray
    grad_norms: np.ndarray
    params: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.epochs.shape[0])


@dataclass(frozen=True)
class TrainResult:
    """How training ended: epochs recorded, why it stopped and the final parameters."""

    epochs_done: int
    stop_reason: StopReason
    final_params: dict[str, float]
    final_loss: Optional[float]
    device: str
    diverged_at: Optional[int] = None
    seconds: float = 0.0


def progress_line(epoch: int, params: dict[str, float], loss: float) -> str:
    """The seed's progress line, e.g. `Epoch 1: w = 1.220, loss = 11.000`."""
    values = ", ".join(f"{name} = {value:.3f}" for name, value in params.items())
    return f"Epoch {epoch}: {values}, loss = {loss:.3f}"


def fit(
    x: np.ndarray,
    y: np.ndarray,
    initial: dict[str, float],
    *,
    lr: float,
    epochs: int,
    device: torch.device,
    tolerance: Optional[float] = None,
    on_chunk: Optional[Callable[[EpochChunk], None]] = None,
    chunk_epochs: int = CHUNK_EPOCHS,
    flush_seconds: float = FLUSH_SECONDS,
) -> TrainResult:
    """Train y ~ x @ w (+ b) by full-batch SGD on `device` and return how it ended."""
    names = tuple(initial)
    has_bias = names[-1:] == ("b",)
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    x_t = torch.as_tensor(x, dtype=dtype, device=device)
    y_t = torch.as_tensor(y, dtype=dtype, device=device)
    values = [initial[name] for name in names]
    n_weights = len(names) - int(has_bias)
    w = torch.tensor(values[:n_weights], dtype=dtype, device=device, requires_grad=True)
    b = torch.tensor(values[n_weights:], dtype=dtype, device=device, requires_grad=True)
    params = [w, b] if has_bias else [w]
    optimizer = torch.optim.SGD(params, lr=lr)

    width = 2 + len(names)  # loss, gradient norm, parameters
    buffer = torch.empty((max(1, min(chunk_epochs, epochs)), width), dtype=dtype, device=device)
    state = _Progress(names=names, initial=dict(initial), tolerance=tolerance, on_chunk=on_chunk)
    started = time.perf_counter()
    last_flush = time.monotonic()
    row = 0
    for epoch in range(1, epochs + 1):
        y_hat = x_t @ w + b if has_bias else x_t @ w
        loss = ((y_hat - y_t) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            grads = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
            optimizer.step()
            buffer[row] = torch.cat(
                [loss.reshape(1), torch.linalg.vector_norm(grads).reshape(1), *params]
            )
        optimizer.zero_grad()
        row += 1
        if (
            row == buffer.shape[0]
            or epoch == epochs
            or time.monotonic() - last_flush >= flush_seconds
        ):
            host = buffer[:row].to("cpu", copy=True).numpy()  # never a view of the buffer
            stop = state.flush(host, first_epoch=epoch - row + 1)
            row = 0
            last_flush = time.monotonic()
            if stop:
                break
    return state.result(str(device), time.perf_counter() - started)


@dataclass
class _Progress:
    """Host-side bookkeeping: stop checks over each copied chunk, and the last good state."""

    names: tuple[str, ...]
    initial: dict[str, float]
    tolerance: Optional[float]
    on_chunk: Optional[Callable[[EpochChunk], None]]
    last_epoch: int = 0
    last_loss: Optional[float] = None
    last_params: dict[str, float] = field(default_factory=dict)
    stop_reason: StopReason = "max_epochs"
    diverged_at: Optional[int] = None

    def flush(self, host: np.ndarray, *, first_epoch: int) -> bool:
        """Keep the chunk's epochs up to any stop, hand them on; True when training must stop."""
        finite = np.isfinite(host[:, [0, *range(2, host.shape[1])]]).all(axis=1)
        keep = host.shape[0]
        if not finite.all():
            keep = int(np.argmin(finite))
            self.stop_reason = "diverged"
            self.diverged_at = first_epoch + keep
        if self.tolerance is not None:
            losses = host[:keep, 0].astype(np.float64)
            previous = np.concatenate(
                [[self.last_loss if self.last_loss is not None else math.nan], losses[:-1]]
            )
            settled = np.abs(losses - previous) < self.tolerance
            if settled.any():
                keep = int(np.argmax(settled)) + 1
                self.stop_reason = "converged"
                self.diverged_at = None
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
                        params=kept[:, 2:],
                        names=self.names,
                    )
                )
        return self.stop_reason != "max_epochs"

    def result(self, device: str, seconds: float) -> TrainResult:
        """The TrainResult for what has been recorded so far."""
        return TrainResult(
            epochs_done=self.last_epoch,
            stop_reason=self.stop_reason,
            final_params=self.last_params or dict(self.initial),
            final_loss=self.last_loss,
            device=device,
            diverged_at=self.diverged_at,
            seconds=seconds,
        )
