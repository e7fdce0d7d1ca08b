"""The gradient-descent loop against references (the seed, least squares) and its stop rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gdflow.data.dataset import load_toy
from gdflow.training.evaluation import least_squares
from gdflow.training.loop import Hooks, fit
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization
from gdflow.training.parameters import initial_parameters, parameter_names
from gdflow.training.records import EpochChunk, progress_line
from gdflow.training.result import TrainResult
from tests.conftest import SEED_TRAJECTORY, SHARED_TRAJECTORY, read_trajectory

CPU = torch.device("cpu")


def _collect(chunks: list[EpochChunk]) -> tuple[list[int], list[float], list[list[float]]]:
    epochs = [int(e) for c in chunks for e in c.epochs]
    losses = [float(v) for c in chunks for v in c.losses]
    params = [[float(v) for v in row] for c in chunks for row in c.params]
    return epochs, losses, params


def _seed_run(
    device: torch.device = CPU,
    chunk_epochs: int = 4096,
    initial: float = 1.0,
    dtype: str = "float32",
    **options: Any,
) -> tuple[TrainResult, list[EpochChunk]]:
    """The seed's run (lr 0.01, 100 epochs, w = 1) on `device`, with its chunks."""
    data = load_toy(dtype)
    chunks: list[EpochChunk] = []
    opt = Optimization(**{"lr": 0.01, "epochs": 100, **options})
    result = fit(
        TrainingData(data.x, data.y),
        {"w": initial},
        opt,
        device=device,
        hooks=Hooks(on_chunk=chunks.append, chunk_epochs=chunk_epochs),
    )
    return result, chunks


def _linear_problem(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.7 + rng.normal(scale=0.1, size=n)
    return x, y


def test_default_run_reproduces_the_seed_trajectory() -> None:
    result, chunks = _seed_run()
    epochs, losses, params = _collect(chunks)
    reference = read_trajectory()
    assert epochs == [int(r["epoch"]) for r in reference] == list(range(1, 101))
    assert losses == pytest.approx([r["loss"] for r in reference], rel=1e-5)
    assert [p[0] for p in params] == pytest.approx([r["w"] for r in reference], rel=1e-5)
    assert result.epochs_done == 100 and result.stop_reason == "max_epochs"
    assert result.final_params == {"w": pytest.approx(1.99999976)}
    assert all(c.lrs.tolist() == [0.01] * len(c) for c in chunks)


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


def test_verdict_converged_after_patience_epochs_of_small_changes() -> None:
    result, chunks = _seed_run(tolerance=1e-4, patience=3)
    epochs, losses, params = _collect(chunks)
    changes = np.abs(np.diff([11.0, *losses]))[1:]
    assert result.stop_reason == "converged" and epochs[-1] == result.epochs_done < 100
    assert (changes[-3:] < 1e-4).all() and not (changes[-4:-1] < 1e-4).all()
    assert result.final_params["w"] == params[-1][0] and result.final_loss == losses[-1]
    assert "for 3 epoch(s)" in result.verdict_detail


def test_verdict_diverged_on_a_non_finite_loss() -> None:
    result, chunks = _seed_run(lr=1.0, diverge_factor=float("inf"))
    epochs, losses, params = _collect(chunks)
    assert result.stop_reason == "diverged" and result.diverged_at == epochs[-1] + 1
    assert all(np.isfinite(losses)) and all(np.isfinite(params).ravel())
    assert losses == sorted(losses)  # growing every epoch
    assert result.epochs_done == epochs[-1] and result.final_params["w"] == params[-1][0]
    assert "NaN or infinite" in result.verdict_detail


def test_verdict_diverged_once_the_loss_grows_past_the_threshold() -> None:
    result, chunks = _seed_run(lr=1.0)  # loss 11, 4851, 2.1e6, 9.4e8 > 11 * 1e6
    _, losses, _ = _collect(chunks)
    assert result.stop_reason == "diverged" and result.diverged_at == 4
    assert len(losses) == 3 and max(losses) <= 11 * 1e6


def test_divergence_on_the_first_epoch_records_nothing() -> None:
    result, chunks = _seed_run(initial=1e30, epochs=10)
    assert result.stop_reason == "diverged" and result.diverged_at == 1
    assert chunks == [] and result.epochs_done == 0 and result.final_params == {"w": 1e30}


@pytest.mark.parametrize(
    ("options", "cause", "detail"),
    [
        ({"lr": 1.0, "diverge_factor": float("inf")}, "nonfinite_loss", "loss NaN or infinite"),
        ({"lr": 1e38}, "nonfinite_params", "a parameter became NaN or infinite"),
        ({"lr": 1.0}, "loss_limit", "loss 9.43e+08"),
    ],
)
def test_the_divergence_cause_is_a_field_beside_its_words(
    options: dict[str, Any], cause: str, detail: str
) -> None:
    result, _ = _seed_run(**options)
    assert result.stop_reason == "diverged" and result.diverged_because == cause
    assert result.verdict_detail == f"{detail} at epoch {result.diverged_at}"


def test_a_run_that_did_not_diverge_has_no_divergence_cause() -> None:
    result, _ = _seed_run(tolerance=1e-4)
    assert result.stop_reason == "converged" and result.diverged_because is None


def test_verdict_plateaued_when_the_best_loss_stops_improving() -> None:
    # The seed's loss is constant from epoch 62 on (float32 has reached its floor).
    result, chunks = _seed_run(plateau_epochs=10)
    epochs, losses, _ = _collect(chunks)
    assert result.stop_reason == "plateaued"
    assert result.epochs_done == result.best_epoch + 10 == epochs[-1]
    assert result.best_loss == min(losses)


def test_verdict_max_epochs_keeps_the_best_epoch() -> None:
    result, chunks = _seed_run(epochs=30)
    _, losses, _ = _collect(chunks)
    assert result.stop_reason == "max_epochs" and result.best_epoch == 30
    assert result.best_loss == losses[-1] == min(losses)


def test_multi_feature_data_converges_to_least_squares() -> None:
    x, y = _linear_problem()
    names = parameter_names(["a", "b", "c"], bias=True)
    assert names == ["w_a", "w_b", "w_c", "b"]
    result = fit(
        TrainingData(x, y),
        initial_parameters(names, init=0.0, seed=0),
        Optimization(lr=0.1, epochs=500),
        device=CPU,
    )
    optimum = least_squares(x, y, names)
    for name in names:
        assert result.final_params[name] == pytest.approx(optimum[name], abs=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "sgd", "momentum": 0.9, "lr": 0.02},
        {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "lr": 0.02},
        {"optimizer": "adam", "lr": 0.05},
        {"lr_schedule": "step", "lr_step_epochs": 200, "lr_gamma": 0.5, "lr": 0.1},
        {"lr_schedule": "cosine", "lr": 0.1},
    ],
)
def test_optimizers_and_schedules_reach_least_squares(options: dict[str, Any]) -> None:
    x, y = _linear_problem()
    names = parameter_names(["a", "b", "c"], bias=True)
    result = fit(
        TrainingData(x, y),
        initial_parameters(names, init=0.0, seed=0),
        Optimization(epochs=1500, **options),
        device=CPU,
    )
    optimum = least_squares(x, y, names)
    for name in names:
        assert result.final_params[name] == pytest.approx(optimum[name], abs=1e-3)


def test_schedules_record_the_learning_rate_in_effect() -> None:
    _, step = _seed_run(lr_schedule="step", lr_step_epochs=10, lr_gamma=0.5, epochs=30)
    lrs = [float(v) for c in step for v in c.lrs]
    assert lrs[:10] == [0.01] * 10 and lrs[10:20] == [0.005] * 10 and lrs[20] == 0.0025
    _, cosine = _seed_run(lr_schedule="cosine", epochs=30)
    lrs = [float(v) for c in cosine for v in c.lrs]
    assert lrs[0] == 0.01 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-4


def test_mini_batches_are_reproducible_with_a_seed() -> None:
    x, y = _linear_problem()

    def run(seed: int) -> list[float]:
        chunks: list[EpochChunk] = []
        fit(
            TrainingData(x, y),
            {"w_a": 0.0, "w_b": 0.0, "w_c": 0.0, "b": 0.0},
            Optimization(lr=0.05, epochs=20, batch_size=16, seed=seed),
            device=CPU,
            hooks=Hooks(on_chunk=chunks.append),
        )
        return _collect(chunks)[1]

    first = run(7)
    assert run(7) == first
    assert run(8) != first
    full: list[EpochChunk] = []
    fit(
        TrainingData(x, y),
        {"w_a": 0.0, "w_b": 0.0, "w_c": 0.0, "b": 0.0},
        Optimization(lr=0.05, epochs=20),
        device=CPU,
        hooks=Hooks(on_chunk=full.append),
    )
    assert first[-1] < _collect(full)[1][-1]  # 13 steps an epoch beat one


def test_validation_loss_is_recorded_after_each_update() -> None:
    x, y = _linear_problem(300)
    chunks: list[EpochChunk] = []
    fit(
        TrainingData(x[:200], y[:200], validation=(x[200:], y[200:])),
        {"w_a": 0.0, "w_b": 0.0, "w_c": 0.0, "b": 0.0},
        Optimization(lr=0.1, epochs=50),
        device=CPU,
        hooks=Hooks(on_chunk=chunks.append, flush_seconds=float("inf")),  # one chunk, however slow
    )
    (chunk,) = chunks
    assert chunk.val_losses is not None and len(chunk.val_losses) == 50
    last = dict(zip(chunk.names, chunk.params[-1].tolist()))
    design = np.hstack([x[200:], np.ones((100, 1))])
    theta = np.array([last["w_a"], last["w_b"], last["w_c"], last["b"]])
    assert float(chunk.val_losses[-1]) == pytest.approx(np.mean((design @ theta - y[200:]) ** 2))


def test_float64_data_trains_in_float64() -> None:
    _, chunks = _seed_run(dtype="float64", epochs=3)
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


def test_an_overflowing_parameter_is_named_in_the_verdict() -> None:
    result, chunks = _seed_run(lr=1e38)
    assert result.stop_reason == "diverged" and chunks == []
    assert result.verdict_detail == "a parameter became NaN or infinite at epoch 1"
