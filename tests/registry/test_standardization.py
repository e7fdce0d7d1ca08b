"""The standardisation a version records is the one training used: centred for a model with a
bias, the root mean square for a network (whose layers have no parameter named a bias)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes

from gdflow.config.train import TrainConfig
from gdflow.data.dataset import Dataset, make_dataset
from gdflow.registry.versions import standardization_of
from gdflow.tasks.pipeline import network_of
from gdflow.training.mlp import flat_names, flat_values
from gdflow.training.parameters import initial_parameters, parameter_names
from gdflow.training.preprocessing import TrainingProblem


def _diabetes() -> Dataset:
    data = load_diabetes()
    return make_dataset(
        data.data[:, :4] * 10 + 3.0,  # not centred already: a missing centring shows
        data.target,
        feature_names=list(data.feature_names[:4]),
        target_name="progression",
        source="diabetes",
    )


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_the_recorded_statistics_are_those_training_used(model: str) -> None:
    dataset = _diabetes()
    config = TrainConfig(model=model, standardize=True, hidden=[8] if model == "mlp" else None)
    if model == "mlp":
        network = network_of(config, 4, None)
        module = network.build(torch.float64)
        initial = dict(zip(flat_names(module), flat_values(module).tolist()))
        problem = TrainingProblem.prepare(
            dataset, initial, standardize=True, family="mlp", network=network
        )
    else:
        names = parameter_names(dataset.feature_names, bias=True)
        initial = initial_parameters(names, init=0.0, seed=0)
        problem = TrainingProblem.prepare(dataset, initial, standardize=True)
    used = problem.standardizer
    assert used is not None
    recorded = standardization_of(config, dataset, initial)
    assert recorded is not None
    np.testing.assert_allclose(recorded["mean"], used.mean, rtol=1e-12)
    np.testing.assert_allclose(recorded["scale"], used.scale, rtol=1e-12)
    assert recorded["target_mean"] == pytest.approx(used.y_mean)
    if model == "mlp":  # the root mean square, not the standard deviation
        assert recorded["mean"] == [0.0] * 4
        rms = np.sqrt(np.mean(dataset.x.astype(np.float64) ** 2, axis=0))
        np.testing.assert_allclose(recorded["scale"], rms, rtol=1e-12)
