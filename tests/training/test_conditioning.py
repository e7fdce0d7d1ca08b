"""Conditioning: the stability bound and condition number against their closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gdflow.training.conditioning import analyse, auto_learning_rate, hessian_eigenvalues


def test_seed_bound_is_two_over_twice_mean_square() -> None:
    x = np.arange(1.0, 6.0).reshape(-1, 1)
    (eigenvalue,) = hessian_eigenvalues(x, bias=False)
    assert eigenvalue == pytest.approx(2 * 11)  # 2 mean(x^2)
    result = analyse(x, bias=False, lr=0.01)
    assert result.max_stable_lr == pytest.approx(1 / 11) and result.condition_number == 1
    assert result.warnings == []
    assert auto_learning_rate(x, bias=False) == pytest.approx(1 / 22)


def test_a_learning_rate_above_the_bound_is_flagged() -> None:
    x = np.arange(1.0, 6.0).reshape(-1, 1)
    (warning,) = analyse(x, bias=False, lr=0.1).warnings
    assert "above the largest stable step 0.09091" in warning and "--lr below" in warning
    momentum = analyse(x, bias=False, lr=0.1, momentum=0.9)
    assert momentum.max_stable_lr == pytest.approx(1.9 / 11) and momentum.warnings == []
    assert analyse(x, bias=False, lr=0.1, optimizer="adam").warnings == []


def test_ill_conditioning_is_flagged_with_advice() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(0, 1000, 100), rng.normal(0, 1, 100)])
    result = analyse(x, bias=False, lr=1e-7)
    assert result.condition_number == pytest.approx(1e6, rel=0.5)
    assert any("--standardize" in w for w in result.warnings)
    assert not any(
        "--standardize" in w for w in analyse(x, bias=False, lr=1e-7, standardized=True).warnings
    )


def test_collinear_features_are_flagged() -> None:
    x = np.column_stack([np.arange(5.0), 2 * np.arange(5.0)])
    result = analyse(x, bias=False, lr=0.001)
    assert result.condition_number is None
    assert any("linearly dependent" in w for w in result.warnings)
    assert math.isfinite(result.max_stable_lr or math.nan)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_bounds_match_what_training_does(nesterov: bool) -> None:
    import torch

    from gdflow.training.loop import fit
    from gdflow.training.model import TrainingData
    from gdflow.training.optimization import Optimization

    x = np.arange(1.0, 6.0).reshape(-1, 1)
    y = 2 * x[:, 0]
    bound = analyse(x, bias=False, lr=0.01, momentum=0.9, nesterov=nesterov).max_stable_lr
    assert bound is not None

    def verdict(lr: float) -> str:
        opt = Optimization(lr=lr, epochs=3000, momentum=0.9, nesterov=nesterov)
        return fit(TrainingData(x, y), {"w": 1.0}, opt, device=torch.device("cpu")).stop_reason

    assert verdict(bound * 0.97) == "max_epochs"
    assert verdict(bound * 1.03) == "diverged"


def test_adam_has_no_stability_bound() -> None:
    x = np.arange(1.0, 6.0).reshape(-1, 1)
    assert analyse(x, bias=False, lr=10.0, optimizer="adam").max_stable_lr is None
