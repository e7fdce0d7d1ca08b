"""Gradient descent on data that is not the toy: conditioning, standardisation, stability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdflow.data.dataset import make_dataset
from gdflow.training.conditioning import analyse, auto_learning_rate
from gdflow.training.evaluation import evaluate
from gdflow.training.loop import fit
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization
from gdflow.training.parameters import initial_parameters, parameter_names
from gdflow.training.preprocessing import TrainingProblem

CPU = torch.device("cpu")


def _ill_conditioned() -> tuple[np.ndarray, np.ndarray]:
    """Two features on scales a million apart: kappa ~ 1e12 for plain gradient descent."""
    rng = np.random.default_rng(42)
    x = np.column_stack([rng.normal(500, 100, 400), rng.normal(0.002, 0.0005, 400)])
    y = 0.03 * x[:, 0] + 4000.0 * x[:, 1] + 2.0 + rng.normal(0, 0.5, 400)
    return x, y


def _train(x: np.ndarray, y: np.ndarray, *, standardize: bool, epochs: int) -> dict:
    """What the train and evaluate tasks do, without Prefect: prepare, fit, evaluate."""
    data = make_dataset(
        x, y, feature_names=["a", "b"], target_name="y", source="test", dtype="float64"
    )
    names = parameter_names(data.feature_names, bias=True)
    problem = TrainingProblem.prepare(
        data, initial_parameters(names, init=0.0, seed=0), standardize=standardize
    )
    lr = auto_learning_rate(problem.x, bias=True)
    result = problem.result_to_original(
        fit(problem.data, problem.initial, Optimization(lr=lr, epochs=epochs), device=CPU)
    )
    return evaluate(data.x, data.y, result.final_params, predict_rows=[])


def test_ill_conditioned_data_needs_standardisation() -> None:
    x, y = _ill_conditioned()
    warnings = analyse(x, bias=True, lr=1e-6).warnings
    assert any("condition number" in w and "--standardize" in w for w in warnings)
    plain = _train(x, y, standardize=False, epochs=300)
    scaled = _train(x, y, standardize=True, epochs=300)
    assert plain["relative_loss_gap"] > 1.0  # plain gradient descent is nowhere near
    assert scaled["relative_loss_gap"] < 1e-3
    optimum = scaled["least_squares"]["params"]
    trained = scaled  # parameters are reported in the original units
    assert trained["param_distance"] / np.linalg.norm(list(optimum.values())) < 1e-2


def test_a_learning_rate_above_the_bound_is_flagged_and_diverges_as_predicted() -> None:
    x = np.linspace(-3, 3, 50).reshape(-1, 1)
    y = 4 * x[:, 0] + 1
    conditioning = analyse(x, bias=True, lr=1.0)
    bound = conditioning.max_stable_lr
    assert bound is not None and any("will diverge" in w for w in conditioning.warnings)
    start = {"w": 0.0, "b": 0.0}
    above = fit(TrainingData(x, y), start, Optimization(lr=bound * 1.05, epochs=5000), device=CPU)
    below = fit(TrainingData(x, y), start, Optimization(lr=bound * 0.95, epochs=5000), device=CPU)
    assert above.stop_reason == "diverged"
    assert below.stop_reason == "max_epochs"
    assert below.final_params == {"w": pytest.approx(4.0), "b": pytest.approx(1.0)}
