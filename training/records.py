"""Per-epoch records: kept as tensors on the training device, copied to the host in chunks.

Each epoch records the loss before the update, the gradient norm, the parameters after the
update and, with a validation split, the validation loss after the update. Keeping references on
the device and copying a whole chunk at once means a GPU run does not synchronise every epoch.
A mini-batch epoch keeps its batch losses and the last batch's gradients; its loss (their
row-weighted mean, `MiniBatches.mean_batch_losses`) is reduced on the host with the chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

#: Epochs recorded on the device before a copy to the host, at most.
CHUNK_EPOCHS = 4096
#: Seconds between copies to the host (and so database writes), at most.
FLUSH_SECONDS = 2.0


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
    #: A classifier's share of validation rows classified right, after each epoch's update.
    val_accuracies: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.epochs.shape[0])


def progress_line(epoch: int, params: dict[str, float], loss: float) -> str:
    """The seed's progress line, e.g. `Epoch 1: w = 1.220, loss = 11.000`."""
    values = "".join(f"{name} = {value:.3f}, " for name, value in params.items())
    return f"Epoch {epoch}: {values}loss = {loss:.3f}"


class EpochRecords:
    """Per-epoch records kept as device tensors, stacked and copied to the host once per chunk.

    Appending references (and one small copy of the parameters) is all an epoch costs; the
    gradient norms and the host copy are computed for the whole chunk at once.
    """

    def __init__(
        self, rows: int, mean_batch_losses: Optional[Callable[[np.ndarray], np.ndarray]] = None
    ) -> None:
        self.rows = rows
        #: For mini-batches: each epoch's loss from its row of batch losses, on the host.
        self.mean_batch_losses = mean_batch_losses
        self.lrs = np.empty(rows)
        self.count = 0
        #: Each epoch's loss, or a mini-batch epoch's batch losses (reduced in `take`).
        self.losses: list[torch.Tensor] = []
        self.grads: list[list[torch.Tensor]] = []
        self.params: list[list[torch.Tensor]] = []
        self.val_losses: list[torch.Tensor] = []
        self.val_accuracies: list[torch.Tensor] = []

    @property
    def full(self) -> bool:
        """Whether the chunk has as many epochs as it holds."""
        return self.count == self.rows

    def add(
        self,
        lr: float,
        loss: torch.Tensor,
        grads: list[Optional[torch.Tensor]],
        params: list[torch.Tensor],
        val_loss: Optional[torch.Tensor],
        val_accuracy: Optional[torch.Tensor] = None,
    ) -> None:
        """Keep one epoch's learning rate, loss, gradients, parameters after the update,
        validation loss and accuracy (the parameters are copied; the tensors must not need
        grad)."""
        self.lrs[self.count] = lr
        self.losses.append(loss)
        self.grads.append(grads)  # type: ignore[arg-type]  # set by backward()
        self.params.append([p.detach().clone() for p in params])
        if val_loss is not None:
            self.val_losses.append(val_loss)
        if val_accuracy is not None:
            self.val_accuracies.append(val_accuracy)
        self.count += 1

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of (loss, grad norm, parameters..., [val loss], [val accuracy]) on the host and
        the epochs' learning rates; then start afresh."""
        lrs = self.lrs[: self.count].copy()
        with torch.no_grad():
            losses = torch.stack(self.losses)  # (epochs,), or (epochs, batches) for mini-batches
            grads = torch.cat([torch.stack(g).reshape(self.count, -1) for g in zip(*self.grads)], 1)
            columns = [
                torch.linalg.vector_norm(grads, dim=1).reshape(-1, 1),
                *(torch.stack(p).reshape(self.count, -1) for p in zip(*self.params)),
            ]
            if self.val_losses:
                columns.append(torch.stack(self.val_losses).reshape(-1, 1))
            if self.val_accuracies:
                columns.append(torch.stack(self.val_accuracies).reshape(-1, 1))
            if self.mean_batch_losses is None:
                columns.insert(0, losses.reshape(-1, 1))
            host = torch.cat(columns, 1).to("cpu", copy=True).numpy()  # never a device view
            if self.mean_batch_losses is not None:
                epoch_losses = self.mean_batch_losses(losses.to("cpu").numpy())
                host = np.concatenate([epoch_losses.reshape(-1, 1), host], axis=1)
        self.losses, self.grads, self.params, self.val_losses = [], [], [], []
        self.val_accuracies = []
        self.count = 0
        return host, lrs
