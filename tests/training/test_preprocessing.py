"""Standardisation: fitted on training rows, and the same model back in original units."""

from __future__ import annotations

import numpy as np
import pytest

from gdflow.data.dataset import make_dataset, split_validation
from gdflow.training.evaluation import predict
from gdflow.training.preprocessing import Standardizer, TrainingProblem


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(1000, 50, 40), rng.normal(0.01, 0.002, 40)])
    return x, x @ [0.5, 300.0] + 7.0


@pytest.mark.parametrize("bias", [True, False])
def test_parameters_round_trip_and_describe_the_same_model(bias: bool) -> None:
    x, y = _data()
    scaler = Standardizer.fit(x, y, bias=bias)
    params = {"w_a": 0.4, "w_b": 250.0, **({"b": 3.0} if bias else {})}
    scaled = scaler.to_scaled(params)
    back = scaler.to_original(np.array(list(scaled.values())), has_bias=bias)
    assert back.tolist() == pytest.approx(list(params.values()))
    xs, ys = scaler.transform(x, y)
    # Same predictions, and so the same loss, in both spaces.
    assert predict(xs, scaled) + scaler.y_mean == pytest.approx(predict(x, params))


def test_standardised_features_have_zero_mean_and_unit_variance() -> None:
    x, y = _data()
    xs, ys = Standardizer.fit(x, y, bias=True).transform(x, y)
    assert xs.mean(axis=0) == pytest.approx([0, 0], abs=1e-9)
    assert xs.std(axis=0) == pytest.approx([1, 1])
    assert ys.mean() == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("rows", [0, 1, 20_001])
def test_transform_by_blocks_equals_the_whole_matrix_in_float64(
    dtype: type, order: str, rows: int
) -> None:
    # 20,001 rows of 16 features: two whole blocks of 8,192 rows and a part of one
    rng = np.random.default_rng(5)
    x = np.asarray(rng.normal(3.0, 7.0, (rows, 16)), dtype=dtype, order=order)
    y = rng.normal(size=rows).astype(dtype)
    scaler = (
        Standardizer.fit(x, y, bias=True)
        if rows > 1
        else Standardizer.fit(np.ones((2, 16)), np.ones(2), bias=True)
    )
    xs, ys = scaler.transform(x, y)
    whole = ((x.astype(np.float64) - scaler.mean) / scaler.scale).astype(dtype)
    assert xs.dtype == dtype and xs.flags.c_contiguous and xs.shape == x.shape
    assert xs.tobytes() == np.ascontiguousarray(whole).tobytes()
    assert (
        ys.dtype == dtype
        and ys.tobytes() == (y - np.float64(scaler.y_mean)).astype(dtype).tobytes()
    )


def test_without_bias_features_are_only_scaled() -> None:
    x, y = _data()
    scaler = Standardizer.fit(x, y, bias=False)
    assert scaler.mean.tolist() == [0, 0] and scaler.y_mean == 0


def test_constant_column_keeps_scale_one() -> None:
    x = np.column_stack([np.ones(5), np.arange(5.0)])
    assert Standardizer.fit(x, np.arange(5.0), bias=True).scale[0] == 1.0


def test_scaler_is_fitted_on_the_training_split_only() -> None:
    x, y = _data()
    data = split_validation(
        make_dataset(x, y, feature_names=["a", "b"], target_name="y", source="s", dtype="float64"),
        0.25,
        seed=1,
    )
    problem = TrainingProblem.prepare(data, {"w_a": 0.0, "w_b": 0.0, "b": 0.0}, standardize=True)
    assert problem.standardizer is not None
    assert problem.standardizer.mean == pytest.approx(data.x.mean(axis=0))
    assert problem.validation is not None and problem.validation[0].shape == (10, 2)
