"""Mini-batches against the tutorial's loop written out (`x[index]`, `optimizer.zero_grad()`, a
running total of the batch losses on the device): the same epoch losses, last gradients and
parameters, bit for bit, however `fit` keeps and reduces them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdflow.training.batches import MiniBatches
from gdflow.training.loop import Hooks, fit
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization, zero_grad
from gdflow.training.records import EpochChunk

CPU = torch.device("cpu")


def _running_mean(losses: np.ndarray, rows: np.ndarray) -> list[float]:
    """Each row's `total += loss * rows` batch by batch on a torch tensor, then `/ n`."""
    means = []
    for row in losses:
        total = torch.zeros((), dtype=torch.from_numpy(row).dtype)
        for loss, count in zip(torch.from_numpy(row), rows.tolist()):
            total += loss * count
        means.append(float(total / int(rows.sum())))
    return means


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "size"), [(1_000_000, 256), (170, 16), (5, 5), (7, 3)])
def test_epoch_losses_are_the_running_totals_bit_for_bit(dtype: type, n: int, size: int) -> None:
    batches = MiniBatches(n, size, 0, CPU)
    assert batches.rows.sum() == n and (batches.rows[:-1] == size).all()
    assert 0 < batches.rows[-1] <= size
    rng = np.random.default_rng(n)
    losses = (rng.random((3, len(batches.rows))) * 10.0 ** rng.uniform(-3, 3)).astype(dtype)
    means = batches.mean_batch_losses(losses)
    assert means.dtype == dtype
    assert means.tolist() == _running_mean(losses, batches.rows)


def test_the_order_of_the_sum_is_what_the_bit_for_bit_test_pins() -> None:
    # A pairwise (NumPy) sum of the same products rounds differently over 3,907 batches: the
    # test above would catch a reduction that is not batch after batch.
    batches = MiniBatches(1_000_000, 256, 0, CPU)
    losses = np.random.default_rng(0).random((3, len(batches.rows))).astype(np.float32)
    pairwise = (losses * batches.rows.astype(np.float32)).sum(axis=1) / np.float32(1_000_000)
    assert pairwise.tolist() != batches.mean_batch_losses(losses).tolist()


def _tutorial(
    x: np.ndarray, y: np.ndarray, epochs: int, size: int, seed: int
) -> tuple[list[float], list[float], list[list[float]]]:
    """The mini-batch loop as the tutorial writes it: per epoch the row-weighted mean loss, the
    last batch's gradient norm (before its step) and the parameters after the epoch."""
    x_t, y_t = torch.as_tensor(x), torch.as_tensor(y)
    w = torch.zeros(x.shape[1], dtype=x_t.dtype, requires_grad=True)
    b = torch.zeros(1, dtype=x_t.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=0.05)
    generator = torch.Generator().manual_seed(seed)
    losses, norms, params = [], [], []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = torch.zeros((), dtype=x_t.dtype)
        for start in range(0, len(x), size):
            index = order[start : start + size]
            loss = ((x_t[index] @ w + b - y_t[index]) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                grad = torch.cat([w.grad.reshape(-1), b.grad.reshape(-1)])  # type: ignore[union-attr]
                optimizer.step()
                total += loss.detach() * index.shape[0]
            optimizer.zero_grad()
        losses.append(float(total / len(x)))
        norms.append(float(torch.linalg.vector_norm(grad)))
        params.append([*w.tolist(), *b.tolist()])
    return losses, norms, params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_records_what_the_tutorial_loop_computes(dtype: type) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3)).astype(dtype)
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.7 + rng.normal(scale=0.1, size=300)).astype(dtype)
    chunks: list[EpochChunk] = []
    fit(
        TrainingData(x, y),
        {"w_a": 0.0, "w_b": 0.0, "w_c": 0.0, "b": 0.0},
        Optimization(lr=0.05, epochs=12, batch_size=32, seed=5, optimizer="adam"),
        device=CPU,
        hooks=Hooks(on_chunk=chunks.append, chunk_epochs=5),
    )
    losses, norms, params = _tutorial(x, y, 12, 32, 5)
    assert [float(v) for c in chunks for v in c.losses] == losses
    assert [float(v) for c in chunks for v in c.grad_norms] == norms
    assert [[float(v) for v in row] for c in chunks for row in c.params] == params


def test_zero_grad_leaves_no_gradient_as_the_optimizers_default_does() -> None:
    w = torch.zeros(3, requires_grad=True)
    (w * 2.0).sum().backward()
    assert w.grad is not None
    zero_grad([w])
    assert w.grad is None
