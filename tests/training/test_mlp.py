"""`--model mlp`: seeded networks trained by the same loop, beating the linear model on a
nonlinear problem; large networks record scalars per epoch and their weights once; parameters
come back in original units; the learning-rate range test of `--lr auto`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gdflow.config.train import TrainConfig
from gdflow.data.dataset import Dataset, make_dataset
from gdflow.training.loop import Hooks, fit
from gdflow.training.lr_finder import range_test
from gdflow.training.mlp import build_mlp, flat_names, flat_values
from gdflow.training.network_evaluation import evaluate_network
from gdflow.training.optimization import Optimization
from gdflow.training.parameters import initial_parameters, parameter_names
from gdflow.training.preprocessing import Network, TrainingProblem

CPU = torch.device("cpu")


def _wave(n: int = 600, seed: int = 0) -> Dataset:
    """y = sin(2a) * b + noise: no linear model fits it."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 2)) * np.array([1.0, 10.0]) + np.array([0.0, 50.0])
    y = np.sin(2 * x[:, 0]) * (x[:, 1] - 50.0) / 10.0 + 0.05 * rng.normal(size=n)
    return make_dataset(x, y, feature_names=["a", "b"], target_name="y", source="wave")


def _network(hidden: tuple[int, ...], seed: int = 0, outputs: int = 1) -> Network:
    def build(dtype: torch.dtype) -> torch.nn.Module:
        return build_mlp(2, outputs, hidden=hidden, activation="tanh", seed=seed, dtype=dtype)

    return Network(build=build, first_width=hidden[0], outputs=outputs)


def _initial(network: Network) -> dict[str, float]:
    module = network.build(torch.float64)
    return dict(zip(flat_names(module), flat_values(module).tolist()))


def _train_mlp(dataset: Dataset, hidden: tuple[int, ...], epochs: int, **hooks: Any) -> Any:
    network = _network(hidden)
    problem = TrainingProblem.prepare(
        dataset, _initial(network), standardize=True, family="mlp", network=network
    )
    opt = Optimization(lr=0.01, epochs=epochs, optimizer="adam")
    result = fit(problem.data, problem.initial, opt, device=CPU, hooks=Hooks(**hooks))
    return problem.result_to_original(result), network


def test_an_mlp_beats_the_linear_model_clearly_on_a_nonlinear_problem() -> None:
    dataset = _wave()
    mlp, network = _train_mlp(dataset, (32, 32), epochs=1500)
    names = parameter_names(dataset.feature_names, bias=True)
    linear_problem = TrainingProblem.prepare(
        dataset, initial_parameters(names, init=0.0, seed=0), standardize=True
    )
    linear = fit(
        linear_problem.data, linear_problem.initial, Optimization(lr=0.5, epochs=500), device=CPU
    )
    assert mlp.final_loss is not None and linear.final_loss is not None
    assert mlp.final_loss < 0.2 * linear.final_loss, (mlp.final_loss, linear.final_loss)


def test_the_network_is_stored_in_original_units() -> None:
    # The float64 network rebuilt from the stored parameters, on the raw rows, gives the loss
    # that training computes at those parameters in float32 on the standardised rows: the next
    # epoch's loss (`final_loss` is the last epoch's, taken before its step; with Adam the two
    # differed by 0.6% after 1500 epochs, so they are not compared).
    dataset = _wave()
    trained, network = _train_mlp(dataset, (32, 32), epochs=20)
    one_more, _ = _train_mlp(dataset, (32, 32), epochs=21)
    evaluation = evaluate_network(
        network.build(torch.float64), trained.final_params, dataset.x, dataset.y, task="regression"
    )
    assert evaluation["train"]["mse"] == pytest.approx(one_more.final_loss, rel=1e-5)
    assert evaluation["optimum"] == {
        "loss": None,
        "relative_gap": None,
        "reason": evaluation["optimum"]["reason"],
    }
    assert "not convex" in evaluation["optimum"]["reason"]


def test_initial_weights_depend_on_the_seed_only() -> None:
    first = _initial(_network((8,), seed=3))
    assert first == _initial(_network((8,), seed=3))
    assert first != _initial(_network((8,), seed=4))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    _initial(_network((8,), seed=5))
    assert torch.rand(1) == before  # the global random state is left alone


def test_a_large_network_records_scalars_per_epoch_and_its_weights_once() -> None:
    chunks: list[Any] = []
    result, network = _train_mlp(_wave(200), (64,), epochs=20, on_chunk=chunks.append)
    n_params = 2 * 64 + 64 + 64 + 1
    assert len(result.final_params) == n_params > 100
    assert all(chunk.params.shape[1] == 0 and chunk.names == () for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) == 20
    small, _ = _train_mlp(_wave(200), (4,), epochs=5, on_chunk=chunks.append)
    assert chunks[-1].params.shape == (5, len(small.final_params))  # 17 parameters: every epoch


def test_the_range_test_chooses_a_rate_where_the_loss_falls_and_keeps_its_curve() -> None:
    dataset = _wave(300)
    network = _network((16,))
    problem = TrainingProblem.prepare(
        dataset, _initial(network), standardize=True, family="mlp", network=network
    )
    test = range_test(problem.data, problem.initial, Optimization(lr=1.0, epochs=1), device=CPU)
    assert len(test.lrs) == len(test.losses) > 20
    assert test.lrs[0] < test.chosen < test.lrs[-1]
    assert "fell fastest" in test.how
    # The chosen rate trains faster than a tenth of it would.
    losses = []
    for lr in (test.chosen, test.chosen / 10):
        result = fit(problem.data, problem.initial, Optimization(lr=lr, epochs=200), device=CPU)
        assert result.stop_reason == "max_epochs" and result.final_loss is not None
        losses.append(result.final_loss)
    assert losses[0] < losses[1] < test.losses[0], losses


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "mlp", "hidden": "64,,x"}, "is not a layer width"),
        ({"model": "mlp", "hidden": "0"}, "is not a layer width"),
        ({"model": "linear", "hidden": "8"}, "--hidden and --activation apply to --model mlp"),
        ({"model": "logistic", "task": "regression"}, "contradicts --model logistic"),
        ({"model": "mlp", "class_weight": "balanced"}, "--class-weight applies to classifiers"),
    ],
)
def test_bad_network_options_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**fields)


def test_an_mlp_does_any_task() -> None:
    assert TrainConfig(model="mlp").resolved_task == "regression"
    config = TrainConfig(model="mlp", task="multiclass", hidden="64,32", class_weight="balanced")
    assert (config.resolved_task, config.hidden) == ("multiclass", [64, 32])


def test_a_multiclass_network_of_two_classes_is_evaluated_as_its_one_output() -> None:
    """--task multiclass on two classes trains one output (network_of): its evaluation reads
    that output as P(class 1), as for --task binary, instead of failing on a softmax."""
    network = _network((4,))
    params = _initial(network)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2)), (rng.random(50) < 0.5).astype(np.float64)
    found = {
        task: evaluate_network(
            network.build(torch.float64),
            params,
            x,
            y,
            task=task,
            classes=("no", "yes"),
            predict_rows=[[0.5, 0.5]],
            validation=(x[:10], y[:10]),
        )
        for task in ("binary", "multiclass")
    }
    assert found["multiclass"] == found["binary"]
    assert 0 <= found["multiclass"]["validation"]["accuracy"] <= 1
