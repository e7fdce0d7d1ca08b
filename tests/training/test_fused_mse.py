"""The fused full-batch MSE against autograd's reference ops, alone and inside `fit`."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
import torch

from gdflow.training.fused_mse import FUSED_MIN_ELEMENTS, fused_mse, use_fused
from gdflow.training.loop import Hooks, fit
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


def test_only_large_full_batch_problems_take_the_fused_path() -> None:
    big = torch.zeros(FUSED_MIN_ELEMENTS // 4, 4)
    assert use_fused(big, full_batch=True)
    assert not use_fused(big, full_batch=False)
    assert not use_fused(torch.zeros(5, 1), full_batch=True)  # the seed keeps its exact ops


def _reference_trajectory(
    x: np.ndarray, y: np.ndarray, epochs: int, lr: float
) -> tuple[list[float], np.ndarray]:
    """The seed's loop (autograd MSE, torch.optim.SGD) with a bias, written out."""
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
def test_fit_on_large_data_follows_the_reference_trajectory(dtype: type, rel: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(70_000, 4)).astype(dtype)
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.7).astype(dtype)
    assert use_fused(torch.from_numpy(x), full_batch=True)
    chunks: list[EpochChunk] = []
    initial = {"w_a": 0.0, "w_b": 0.0, "w_c": 0.0, "w_d": 0.0, "b": 0.0}
    opt = Optimization(lr=0.1, epochs=30)
    fit(TrainingData(x, y), initial, opt, device=CPU, hooks=Hooks(on_chunk=chunks.append))
    losses, params = _reference_trajectory(x, y, 30, 0.1)
    # one chunk, or several when a busy machine makes 30 epochs outlast the 2 s flush interval
    recorded = np.concatenate([chunk.losses for chunk in chunks]).tolist()
    assert recorded == pytest.approx(losses, rel=rel)
    recorded_params = np.vstack([chunk.params for chunk in chunks])
    np.testing.assert_allclose(recorded_params, params, rtol=rel, atol=rel * 1e-2)
