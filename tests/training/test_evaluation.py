"""Evaluation: predictions, the closed-form optimum and the distance to it."""

from __future__ import annotations

import numpy as np
import pytest

from gdflow.config.errors import GdflowError
from gdflow.training.evaluation import check_predict_rows, evaluate, least_squares, prediction_line


def test_seed_evaluation() -> None:
    x = np.arange(1.0, 6.0).reshape(-1, 1)
    result = evaluate(x, 2 * x[:, 0], {"w": 1.99999976}, predict_rows=[[5.0], [7.5]])
    assert [p["output"] for p in result["predictions"]] == pytest.approx([9.9999988, 14.9999982])
    assert result["least_squares"]["params"] == {"w": pytest.approx(2.0)}
    assert result["param_distance"] == pytest.approx(2.4e-7, rel=1e-2)
    assert result["train_loss"] == pytest.approx(11 * 2.4e-7**2, rel=1e-2)
    assert prediction_line(result["predictions"][0]) == "Prediction after training: f(5) = 10.000"


def test_least_squares_with_bias_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2))
    y = x @ [3.0, -1.0] + 2.0
    optimum = least_squares(x, y, ["w_a", "w_b", "b"])
    assert optimum == {
        "w_a": pytest.approx(3.0),
        "w_b": pytest.approx(-1.0),
        "b": pytest.approx(2.0),
    }


def test_prediction_rows_must_match_the_features() -> None:
    check_predict_rows([[1.0, 2.0]], 2)
    with pytest.raises(GdflowError, match="has 1 value.*2 feature"):
        check_predict_rows([[5.0]], 2)


def test_relative_gap_only_when_least_squares_is_not_an_exact_fit() -> None:
    x = np.arange(1.0, 6.0).reshape(-1, 1)
    exact = evaluate(x, 2 * x[:, 0], {"w": 1.9}, predict_rows=[])
    assert exact["relative_loss_gap"] is None and exact["loss_gap"] > 0
    noisy = evaluate(x, 2 * x[:, 0] + [0.1, -0.1, 0.2, 0.0, -0.2], {"w": 1.9}, predict_rows=[])
    assert noisy["relative_loss_gap"] == pytest.approx(
        noisy["loss_gap"] / noisy["least_squares"]["loss"]
    )
