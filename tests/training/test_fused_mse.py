"""The fused full-batch MSE against autograd's reference ops, alone and inside `fit`."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
import torch

from gdflow.training.fused_mse import FUSED_MIN_ELEMENTS, fused_mse
from gdflow.training.loop import Hooks, fit, loss_path_of
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization
from gdflow.training.records import EpochChunk

CPU = torch.device("cpu")


def _problem(n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, generator=generator, dtype=dtype)
    y = x @ torch.linspace(-1.0, 1.0, k, dtype=dtype) + 0.3 + 0.1 * torch.randn(n, dtype=dtype)
    return x, y


def _loss_and_grads(
    x: torch.Tensor, y: torch.Tensor, bias: bool, block_rows: Optional[int]
) -> tuple[list[float], list[float]]:
    """(fused loss, grads) and (reference loss, grads) at the same w, b."""
    out = []
    for fused in (True, False):
        w = torch.full((x.shape[1],), 0.2, dtype=x.dtype, requires_grad=True)
        b = torch.tensor([0.1], dtype=x.dtype, requires_grad=True) if bias else None
        if fused:
            loss = fused_mse(x, y, w, b, block_rows=block_rows)
        else:
            loss = (((x @ w + b if b is not None else x @ w) - y) ** 2).mean()
        (2.5 * loss).backward()  # a scaled upstream gradient reaches both parameters
        grads = [*w.grad.tolist(), *(b.grad.tolist() if b is not None else [])]  # type: ignore[union-attr]
        out.append([float(loss.detach()), *grads])
    return out[0], out[1]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block_rows", [None, 7, 1000, 5000])
def test_loss_and_gradients_match_autograd_in_float64(bias: bool, block_rows: int) -> None:
    x, y = _problem(4999, 5, torch.float64)
    fused, reference = _loss_and_grads(x, y, bias, block_rows)
    assert fused == pytest.approx(reference, rel=1e-10, abs=1e-12)


def test_loss_and_gradients_match_autograd_in_float32() -> None:
    x, y = _problem(200_000, 16, torch.float32)
    fused, reference = _loss_and_grads(x, y, True, None)
    assert fused == pytest.approx(reference, rel=1e-4, abs=1e-6)


def test_only_large_full_batch_linear_problems_leave_the_reference_ops() -> None:
    def path(rows: int, features: int, **options: object) -> str:
        data = TrainingData(np.zeros((rows, features)), np.zeros(rows), **options)  # type: ignore[arg-type]
        return loss_path_of(data, Optimization(lr=0.1, epochs=100), CPU)

    square = int(FUSED_MIN_ELEMENTS**0.5)
    assert path(FUSED_MIN_ELEMENTS // 4, 4) == "statistics"
    assert path(square // 2, square * 2) == "fused"  # wide: more features than rows
    assert path(5, 1) == "direct"  # the seed keeps its exact ops
    assert path(FUSED_MIN_ELEMENTS // 4 - 1, 4) == "direct"
    # a small classifier keeps the torch ops (large ones: tests/training/test_fused_cross_entropy)
    assert path(1000, 4, family="logistic", n_classes=2) == "direct"
    mini_batches = Optimization(lr=0.1, epochs=100, batch_size=64)
    data = TrainingData(np.zeros((FUSED_MIN_ELEMENTS, 4)), np.zeros(FUSED_MIN_ELEMENTS))
    assert loss_path_of(data, mini_batches, CPU) == "direct"


def _reference_trajectory(
    x: np.ndarray, y: np.ndarray, epochs: int, lr: float
) -> tuple[list[float], np.ndarray]:
    """The seed's loop (autograd MSE, torch.optim.SGD) with a bias, written out (also used by
    test_statistics_mse)."""
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    w = torch.zeros(x.shape[1], dtype=x_t.dtype, requires_grad=True)
    b = torch.zeros(1, dtype=x_t.dtype, requires_grad=True)
    optimizer = torch.optim.SGD([w, b], lr=lr)
    losses, params = [], []
    for _ in range(epochs):
        loss = ((x_t @ w + b - y_t) ** 2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        params.append([*w.tolist(), *b.tolist()])
    return losses, np.array(params)


@pytest.mark.parametrize("dtype,rel", [(np.float64, 1e-9), (np.float32, 1e-4)])
def test_fit_on_wide_data_follows_the_reference_trajectory(dtype: type, rel: float) -> None:
    rng = np.random.default_rng(1)
    n, k = 300, 1000  # more features than rows: the statistics would cost more than the rows
    x = (rng.normal(size=(n, k)) / np.sqrt(k)).astype(dtype)
    y = (x @ rng.normal(size=k) + 0.7).astype(dtype)
    opt = Optimization(lr=0.1, epochs=30)
    assert loss_path_of(TrainingData(x, y), opt, CPU) == "fused"
    chunks: list[EpochChunk] = []
    initial = {**{f"w_{j}": 0.0 for j in range(k)}, "b": 0.0}
    result = fit(TrainingData(x, y), initial, opt, device=CPU, hooks=Hooks(on_chunk=chunks.append))
    assert result.loss_path == "fused"
    losses, params = _reference_trajectory(x, y, 30, 0.1)
    # one chunk, or several when a busy machine makes 30 epochs outlast the 2 s flush interval
    recorded = np.concatenate([chunk.losses for chunk in chunks]).tolist()
    assert recorded == pytest.approx(losses, rel=rel)
    recorded_params = np.vstack([chunk.params for chunk in chunks])
    np.testing.assert_allclose(recorded_params, params, rtol=rel, atol=rel * 1e-2)
