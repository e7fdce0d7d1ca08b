"""Mini-batches: a seeded shuffle of the rows each epoch, and one optimizer step per batch."""

from __future__ import annotations

from typing import Optional, Protocol

import torch


class BatchModel(Protocol):
    """A model whose loss `MiniBatches` can take on a subset of its training rows."""

    x: torch.Tensor

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        """The model's loss on the training rows `index`."""


class MiniBatches:
    """Seeded shuffling into mini-batches; `full` when the whole data set is one batch."""

    def __init__(self, n: int, size: Optional[int], seed: int, device: torch.device) -> None:
        self.n = n
        self.size = n if size is None else min(size, n)
        self.full = self.size >= n
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def epoch(
        self,
        model: BatchModel,
        params: list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
    ) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
        """One pass of mini-batch steps; returns the row-weighted mean batch loss, last grads."""
        x = model.x
        order = torch.randperm(self.n, generator=self.generator, device=self.device)
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        grads = torch.zeros(0, dtype=x.dtype, device=x.device)
        for start in range(0, self.n, self.size):
            index = order[start : start + self.size]
            loss = model.batch_loss(index)
            loss.backward()
            with torch.no_grad():
                grads = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
                optimizer.step()
                total += loss.detach() * index.shape[0]
            optimizer.zero_grad()
        return total / self.n, [grads]
