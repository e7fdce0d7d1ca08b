"""A real public data set (scikit-learn's diabetes, shipped inside the package) end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from gdflow.config.train import TrainConfig
from gdflow.flows.train import train_flow
from tests.processes import latest_run

pytestmark = pytest.mark.usefixtures("prefect_api_url")


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The diabetes regression data (442 rows, 10 features) in its original units, as CSV."""
    from sklearn.datasets import load_diabetes

    path = tmp_path_factory.mktemp("data") / "diabetes.csv"
    load_diabetes(as_frame=True, scaled=False).frame.to_csv(path, index=False)
    return path


def test_defaults_plus_standardize_reach_least_squares(
    database_url: str, diabetes_csv: Path
) -> None:
    config = TrainConfig(data=str(diabetes_csv), standardize=True, database_url=database_url)
    assert config.bias and config.lr == "auto" and config.epochs == 100
    state = train_flow(config=config, return_state=True)
    assert state.is_completed(), state.message
    run, metrics = latest_run(database_url)
    evaluation = run.evaluation
    assert evaluation["relative_loss_gap"] < 0.01  # within 1% of the least-squares MSE
    assert evaluation["train"]["r2"] > 0.5
    assert run.parameter_names[-1] == "b" and len(run.parameter_names) == 11
    # Parameters are reported in the original units: evaluated on the raw data they give the
    # loss that training recorded in standardised units.
    assert evaluation["train_loss"] == pytest.approx(run.final_loss, rel=1e-2)
    assert run.condition_number is not None and run.max_stable_lr is not None
    assert metrics[0].lr == pytest.approx(run.max_stable_lr / 2)
    assert run.best_epoch == 100 and run.best_loss == pytest.approx(metrics[-1].loss)


def test_plain_gradient_descent_on_raw_features_is_warned_about(
    database_url: str, diabetes_csv: Path
) -> None:
    config = TrainConfig(data=str(diabetes_csv), bias=True, database_url=database_url)
    state = train_flow(config=config, return_state=True)
    run, _ = latest_run(database_url)
    assert run.condition_number > 1e3
    assert any("--standardize" in warning for warning in run.warnings)
    # The default --lr is far above the raw features' stable bound: the first step diverges.
    assert (run.status, run.stop_reason, run.epochs_done) == ("diverged", "diverged", 1)
    assert state.is_failed()


def test_validation_split_is_reported(database_url: str, diabetes_csv: Path) -> None:
    config = TrainConfig(
        data=str(diabetes_csv),
        standardize=True,
        validation_split=0.2,
        seed=3,
        database_url=database_url,
    )
    assert train_flow(config=config, return_state=True).is_completed()
    run, metrics = latest_run(database_url)
    validation = run.evaluation["validation"]
    assert set(validation) == {"mse", "rmse", "mae", "r2"}
    assert validation["rmse"] == pytest.approx(validation["mse"] ** 0.5)
    assert all(m.val_loss is not None for m in metrics)
    assert metrics[-1].val_loss == pytest.approx(validation["mse"], rel=1e-4)


def test_a_file_saved_with_pandas_index_trains_on_its_data_columns_only(
    database_url: str, tmp_path: Path
) -> None:
    """`frame.to_csv(path)` (index included, the pandas default) after dropping some rows: the
    unnamed index column is neither a feature nor the reason the run diverges."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    path = tmp_path / "diabetes-filtered.csv"
    frame[frame.age > 40].to_csv(path)
    config = TrainConfig(data=str(path), standardize=True, epochs=400, database_url=database_url)
    state = train_flow(config=config, return_state=True)
    assert state.is_completed(), state.message
    run, _ = latest_run(database_url)
    assert run.parameter_names == [*(f"w_{name}" for name in frame.columns[:-1]), "b"]
    assert run.evaluation["relative_loss_gap"] < 0.01
