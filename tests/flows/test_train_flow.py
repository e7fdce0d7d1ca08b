"""The train flow under Prefect's test harness, reading its rows back from a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import cloudpickle
import pytest
from sqlalchemy.orm import Session

from gdflow.config.train import TrainConfig
from gdflow.flows.train import train_flow
from gdflow.storage import latest_run_id, make_engine
from tests.conftest import read_trajectory
from tests.processes import latest_run

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def test_default_flow_records_the_seed_run(database_url: str) -> None:
    state = train_flow(config=TrainConfig(database_url=database_url), return_state=True)
    assert state.is_completed()
    summary = state.result()
    run, metrics = latest_run(database_url)
    assert summary["run_id"] == run.id and summary["status"] == "completed"
    assert (run.status, run.stop_reason, run.epochs_done, run.device) == (
        "completed",
        "max_epochs",
        100,
        "cpu",
    )
    assert run.flow_run_id and run.flow_run_name == "toy-lr0.01-cpu-100ep"
    assert run.parameter_names == ["w"] and run.config["lr"] == 0.01
    assert run.finished_at is not None and run.finished_at >= run.started_at
    reference = read_trajectory()
    assert [m.epoch for m in metrics] == list(range(1, 101))
    assert [m.loss for m in metrics] == pytest.approx([r["loss"] for r in reference], rel=1e-5)
    assert [m.params["w"] for m in metrics] == pytest.approx([r["w"] for r in reference], rel=1e-5)
    assert all(m.lr == 0.01 for m in metrics)
    prediction = run.evaluation["predictions"][0]
    assert prediction["input"] == [5.0] and prediction["output"] == pytest.approx(10.0, abs=1e-5)
    assert run.evaluation["least_squares"]["params"]["w"] == pytest.approx(2.0)
    assert run.final_loss == pytest.approx(reference[-1]["loss"], rel=1e-5)


def test_file_data_with_bias_and_tolerance(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "lin.csv"
    rows = "\n".join(
        f"{a},{b},{3 * a - b + 1}" for a, b in [(0, 1), (1, 0), (2, 2), (3, 1), (1, 3)]
    )
    path.write_text("a,b,y\n" + rows + "\n")
    config = TrainConfig(
        data=str(path),
        bias=True,
        lr=0.05,
        epochs=5000,
        tolerance=1e-12,
        predict=["1,1"],
        database_url=database_url,
    )
    state = train_flow(config=config, return_state=True)
    assert state.is_completed(), state.message
    run, metrics = latest_run(database_url)
    assert run.stop_reason == "converged" and run.epochs_done == len(metrics) < 5000
    assert run.parameter_names == ["w_a", "w_b", "b"]
    assert run.final_params == {
        "w_a": pytest.approx(3.0, abs=1e-3),
        "w_b": pytest.approx(-1.0, abs=1e-3),
        "b": pytest.approx(1.0, abs=1e-3),
    }
    assert run.evaluation["predictions"][0]["output"] == pytest.approx(3.0, abs=1e-3)
    assert run.evaluation["param_distance"] < 1e-3


def test_bad_data_fails_the_flow_and_records_the_run(database_url: str, tmp_path: Path) -> None:
    config = TrainConfig(data=str(tmp_path / "missing.csv"), database_url=database_url)
    state = train_flow(config=config, return_state=True)
    assert state.is_failed()
    run, metrics = latest_run(database_url)
    assert run.status == "failed" and run.stop_reason == "error" and metrics == []
    assert "not found" in run.error and run.finished_at is not None


def test_divergence_is_recorded_with_the_epochs_before_it(database_url: str) -> None:
    state = train_flow(config=TrainConfig(lr=1.0, database_url=database_url), return_state=True)
    assert state.is_failed()
    assert "learning rate 1 is too large" in str(state.result(raise_on_failure=False))
    run, metrics = latest_run(database_url)
    assert run.status == "diverged" and run.stop_reason == "diverged"
    # Loss 11, 4851, 2.1e6, then 9.4e8 > 1e6 x the first loss: diverged at epoch 4.
    assert run.epochs_done == len(metrics) == 3
    assert "at epoch 4" in run.error
    assert any("above the largest stable step" in w for w in run.warnings)


def test_invalid_parameters_are_rejected_before_training(database_url: str) -> None:
    state = train_flow(config={"lr": -1, "database_url": database_url}, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert message.startswith("Flow run received invalid parameters:"), message
    assert "config.lr.constrained-float: Input should be greater than 0" in message
    engine = make_engine(database_url)
    with Session(engine) as session:
        assert latest_run_id(session) is None
    engine.dispose()


def test_flow_and_config_pickle_with_cloudpickle() -> None:
    restored = cloudpickle.loads(cloudpickle.dumps(train_flow))
    assert restored.name == "train"
    config = TrainConfig(lr=0.5, predict=[1, 2])
    assert cloudpickle.loads(cloudpickle.dumps(config)) == config


def test_the_flow_run_keeps_its_own_tags_and_gains_gdflow_s(database_url: str) -> None:
    from prefect import tags
    from prefect.client.orchestration import get_client

    from gdflow.flows.train import run_tags

    config = TrainConfig(database_url=database_url, epochs=3)
    with tags("team-a"):  # as a deployment's or a caller's tags
        state = train_flow(config=config, return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert set(flow_run.tags) == {"team-a", *run_tags(config, "cpu")}
