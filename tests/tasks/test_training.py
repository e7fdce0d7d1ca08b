"""The gradient-descent loop against references: the seed's trajectory and least squares."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tasks.data import load_toy
from tasks.evaluation import least_squares
from tasks.training import (
    EpochChunk,
    TrainResult,
    fit,
    initial_parameters,
    parameter_names,
    progress_line,
)
from tests.conftest import SEED_TRAJECTORY, SHARED_TRAJECTORY, read_trajectory

CPU = torch.device("cpu")


def _collect(chunks: list[EpochChunk]) -> tuple[list[int], list[float], list[list[float]]]:
    epochs = [int(e) for c in chunks for e in c.epochs]
    losses = [float(v) for c in chunks for v in c.losses]
    params = [[float(v) for v in row] for c in chunks for row in c.params]
    return epochs, losses, params


def _seed_run(device: torch.device = CPU, **kwargs: Any) -> tuple[TrainResult, list[EpochChunk]]:
    """The seed's run (lr 0.01, 100 epochs, w = 1) on `device`, with its chunks."""
    data = load_toy()
    chunks: list[EpochChunk] = []
    result = fit(
        data.x,
        data.y,
        {"w": 1.0},
        lr=0.01,
        epochs=100,
        device=device,
        on_chunk=chunks.append,
        **kwargs,
    )
    return result, chunks


def test_default_run_reproduces_the_seed_trajectory() -> None:
    result, chunks = _seed_run()
    epochs, losses, params = _collect(chunks)
    reference = read_trajectory()
    assert epochs == [int(r["epoch"]) for r in reference] == list(range(1, 101))
    assert losses == pytest.approx([r["loss"] for r in reference], rel=1e-5)
    assert [p[0] for p in params] == pytest.approx([r["w"] for r in reference], rel=1e-5)
    assert result.epochs_done == 100 and result.stop_reason == "max_epochs"
    assert result.final_params == {"w": pytest.approx(1.99999976)}


@pytest.mark.skipif(not SHARED_TRAJECTORY.exists(), reason="../shared is not beside this checkout")
def test_vendored_trajectory_matches_the_shared_reference() -> None:
    assert SEED_TRAJECTORY.read_bytes() == SHARED_TRAJECTORY.read_bytes()


def test_records_are_the_same_whatever_the_chunk_size() -> None:
    _, whole = _seed_run()
    _, pieces = _seed_run(chunk_epochs=7)
    assert len(pieces) == 15
    assert _collect(pieces) == _collect(whole)


def test_first_epoch_gradient_norm_matches_the_analytic_gradient() -> None:
    _, chunks = _seed_run()
    # d/dw mean((x w - 2x)^2) at w = 1 is 2 (w - 2) mean(x^2) = -22.
    assert float(chunks[0].grad_norms[0]) == pytest.approx(22.0)


def test_tolerance_stops_at_the_first_small_change() -> None:
    result, chunks = _seed_run(tolerance=1e-4)
    epochs, losses, params = _collect(chunks)
    changes = np.abs(np.diff([11.0, *losses]))
    assert result.stop_reason == "converged"
    assert epochs[-1] == result.epochs_done < 100
    assert changes[-1] < 1e-4 and (changes[1:-1] >= 1e-4).all()
    assert result.final_params["w"] == params[-1][0]
    assert result.final_loss == losses[-1]


def test_a_too_large_learning_rate_diverges_and_keeps_the_finite_epochs() -> None:
    data = load_toy()
    chunks: list[EpochChunk] = []
    result = fit(data.x, data.y, {"w": 1.0}, lr=1.0, epochs=100, device=CPU, on_chunk=chunks.append)
    epochs, losses, params = _collect(chunks)
    assert result.stop_reason == "diverged" and result.diverged_at == epochs[-1] + 1
    assert all(np.isfinite(losses)) and all(np.isfinite(params).ravel())
    assert losses == sorted(losses)  # growing every epoch
    assert result.epochs_done == epochs[-1] and result.final_params["w"] == params[-1][0]


def test_divergence_on_the_first_epoch_records_nothing() -> None:
    data = load_toy()
    chunks: list[EpochChunk] = []
    result = fit(
        data.x, data.y, {"w": 1e30}, lr=0.01, epochs=10, device=CPU, on_chunk=chunks.append
    )
    assert result.stop_reason == "diverged" and result.diverged_at == 1
    assert chunks == [] and result.epochs_done == 0 and result.final_params == {"w": 1e30}


def test_multi_feature_data_converges_to_least_squares() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.7 + rng.normal(scale=0.1, size=200)
    names = parameter_names(["a", "b", "c"], bias=True)
    assert names == ["w_a", "w_b", "w_c", "b"]
    result = fit(x, y, initial_parameters(names, init=0.0, seed=0), lr=0.1, epochs=500, device=CPU)
    optimum = least_squares(x, y, names)
    for name in names:
        assert result.final_params[name] == pytest.approx(optimum[name], abs=1e-6)


def test_float64_data_trains_in_float64() -> None:
    data = load_toy("float64")
    chunks: list[EpochChunk] = []
    fit(data.x, data.y, {"w": 1.0}, lr=0.01, epochs=3, device=CPU, on_chunk=chunks.append)
    assert chunks[0].losses.dtype == np.float64


def test_random_initialisation_is_reproducible() -> None:
    first = initial_parameters(["w_a", "w_b", "b"], init="random", seed=3)
    assert first == initial_parameters(["w_a", "w_b", "b"], init="random", seed=3)
    assert first != initial_parameters(["w_a", "w_b", "b"], init="random", seed=4)
    assert initial_parameters(["w", "b"], init=1.0, seed=0) == {"w": 1.0, "b": 0.0}


def test_progress_line_is_the_seeds() -> None:
    assert progress_line(1, {"w": 1.22000003}, 11.0) == "Epoch 1: w = 1.220, loss = 11.000"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_matches_the_cpu_run() -> None:
    _, cpu_chunks = _seed_run()
    result, chunks = _seed_run(torch.device("cuda"))
    assert result.device.startswith("cuda")
    _, cpu_losses, cpu_params = _collect(cpu_chunks)
    _, losses, params = _collect(chunks)
    assert losses == pytest.approx(cpu_losses, rel=1e-4, abs=1e-9)
    assert params == pytest.approx(cpu_params, rel=1e-6)
