"""Sweep configs, their learning rates, the best-run rules and the comparison rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pytest
from pydantic import ValidationError

from gdflow.config.sweep import (
    COLUMNS,
    MAX_RUNS,
    SweepConfig,
    best_run,
    comparison_rows,
    failure_message,
    learning_rates,
    scheduler_host,
    sweep_configs,
    sweep_name,
)
from gdflow.config.train import TrainConfig
from gdflow.training.evaluation import evaluate


@dataclass
class FakeRun:
    """The fields of storage.Run the sweep reads, as a plain object."""

    id: int
    lr: float
    status: str = "completed"
    final_loss: Optional[float] = 1.0
    train_loss: Optional[float] = None
    val_mse: Optional[float] = None
    stop_reason: Optional[str] = "max_epochs"
    epochs_done: int = 100
    best_loss: Optional[float] = None
    final_params: Optional[dict[str, float]] = field(default_factory=lambda: {"w": 2.0})

    @property
    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "epochs": 100}

    @property
    def evaluation(self) -> Optional[dict[str, Any]]:
        if self.status != "completed":
            return None
        evaluation: dict[str, Any] = {}
        if self.train_loss is not None:
            evaluation["train_loss"] = self.train_loss
        if self.val_mse is not None:
            evaluation["validation"] = {"mse": self.val_mse, "rows": 2}
        return evaluation


def test_explicit_lrs_are_sorted_and_deduplicated() -> None:
    sweep = SweepConfig(lrs=[0.1, 0.001, 0.01, 0.1, 0.0100000000000001])
    assert learning_rates(sweep) == [0.001, 0.01, 0.1]
    assert sweep_name(sweep) == "lr-sweep-3-runs"


def test_lr_range_is_log_spaced_and_inclusive() -> None:
    assert learning_rates(SweepConfig(lr_range=(0.001, 0.1, 3))) == [0.001, 0.01, 0.1]
    lrs = learning_rates(SweepConfig(lr_range=(1e-4, 1.0, 9)))
    assert len(lrs) == 9 and lrs[0] == 1e-4 and lrs[-1] == 1.0
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10**0.5] * 8, rel=1e-9)
    assert learning_rates(SweepConfig(lr_range=(0.2, 0.3, 2))) == [0.2, 0.3]


def test_sweep_configs_vary_only_the_learning_rate() -> None:
    base = TrainConfig(epochs=7, tolerance=1e-9, predict=[1, 2], log_every=0)
    configs = sweep_configs(SweepConfig(base=base, lrs=[0.05, 0.01]))
    assert [c.lr for c in configs] == [0.01, 0.05]
    for config in configs:
        assert config.model_dump(exclude={"lr"}) == base.model_dump(exclude={"lr"})


def test_config_round_trips_through_json() -> None:
    sweep = SweepConfig(lr_range=(0.001, 0.1, 3), max_concurrency=3)
    restored = SweepConfig.model_validate(sweep.model_dump(mode="json"))
    assert restored == sweep and restored.lr_range == (0.001, 0.1, 3)
    assert SweepConfig.model_json_schema()["properties"]["max_concurrency"]["description"]


def test_a_scheduler_address_implies_the_dask_runner() -> None:
    assert SweepConfig(lrs=[0.1]).runner == "threads"
    sweep = SweepConfig(lrs=[0.1], dask_address=" tcp://10.0.0.5:8786 ")
    assert (sweep.runner, sweep.dask_address) == ("dask", "tcp://10.0.0.5:8786")
    assert SweepConfig(lrs=[0.1], runner="dask", dask_address="").dask_address is None


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("tcp://10.0.0.5:8786", "10.0.0.5"),
        ("gpu-box:8786", "gpu-box"),
        ("tls://[::1]:8786", "::1"),
        ("tcp://gpu-box", None),
        ("gpu box:1", None),
        ("host:port", None),
    ],
)
def test_scheduler_host(address: str, host: Optional[str]) -> None:
    assert scheduler_host(address) == host


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "exactly one of lrs"),
        ({"lrs": [0.1], "lr_range": (0.1, 1, 3)}, "exactly one of lrs"),
        ({"lrs": []}, "at least 1 item"),
        ({"lrs": [0.1, 0]}, "greater than 0"),
        ({"lrs": [0.1, -1]}, "greater than 0"),
        ({"lrs": [math.nan]}, "finite number"),
        ({"lrs": [math.inf]}, "finite number"),
        ({"lr_range": (0, 1, 3)}, "greater than 0"),
        ({"lr_range": (1, 0.1, 3)}, "must be greater than its minimum"),
        ({"lr_range": (0.1, 0.1, 3)}, "must be greater than its minimum"),
        ({"lr_range": (0.1, 1, 1)}, "greater than or equal to 2"),
        ({"lr_range": (0.1, 1, 10**9)}, f"at most {MAX_RUNS} learning rates"),
        ({"lrs": [0.1], "max_concurrency": 0}, "greater than or equal to 1"),
        ({"lrs": [0.1], "base": {"epochs": 0}}, "greater than or equal to 1"),
        ({"lrs": [0.1], "colour": "red"}, "Extra inputs"),
        ({"lrs": [0.1], "runner": "ray"}, "'threads' or 'dask'"),
        ({"lrs": [0.1], "dask_address": "scheduler"}, r"\[tcp://\]HOST:PORT"),
        ({"lrs": [0.1], "dask_address": "tcp://h:8786/x"}, r"\[tcp://\]HOST:PORT"),
        ({"lrs": [0.1], "runner": "threads", "dask_address": "h:1"}, "needs runner 'dask'"),
    ],
)
def test_invalid_sweeps_are_rejected(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SweepConfig.model_validate(values)


def test_best_run_prefers_the_lowest_training_loss_of_completed_runs() -> None:
    runs = [
        FakeRun(1, 0.001, final_loss=0.13),
        FakeRun(2, 0.01, final_loss=6e-13),
        FakeRun(3, 1.0, status="diverged", final_loss=None),
        FakeRun(4, 0.5, status="failed", final_loss=1e-20),
    ]
    best = best_run(runs)
    assert best is not None and best.id == 2
    assert best_run([]) is None
    assert best_run([runs[2], runs[3]]) is None


def test_best_run_uses_the_evaluation_train_loss_over_the_last_epoch() -> None:
    runs = [
        FakeRun(1, 0.01, final_loss=1e-3, train_loss=5e-4),
        FakeRun(2, 0.02, final_loss=9e-4, train_loss=8e-4),
    ]
    assert best_run(runs) is runs[0]


def test_best_run_prefers_validation_loss_when_present() -> None:
    runs = [
        FakeRun(1, 0.01, train_loss=1e-6, val_mse=0.5),
        FakeRun(2, 0.1, train_loss=1e-2, val_mse=0.2),
        FakeRun(3, 0.05, train_loss=1e-9),  # no validation section: ranked after
    ]
    best = best_run(runs)
    assert best is not None and best.id == 2


@dataclass
class EvaluatedRun:
    """A completed run whose evaluation is what tasks.evaluation really produces."""

    id: int
    config: dict[str, Any]
    evaluation: dict[str, Any]
    status: str = "completed"
    final_loss: Optional[float] = None
    stop_reason: Optional[str] = "max_epochs"
    epochs_done: int = 100
    best_loss: Optional[float] = None
    final_params: Optional[dict[str, float]] = None


def test_best_run_reads_the_validation_mse_of_real_evaluations() -> None:
    x, y = np.array([[1.0], [2.0], [3.0]]), np.array([2.0, 4.0, 6.0])
    x_val, y_val = np.array([[4.0], [5.0]]), np.array([7.6, 9.5])
    fits = {0.01: {"w": 2.0}, 0.02: {"w": 1.9}}  # 1.9 fits the training rows worse, val better
    runs = [
        EvaluatedRun(
            id=i,
            config={"lr": lr},
            evaluation=evaluate(x, y, params, predict_rows=[], validation=(x_val, y_val)),
        )
        for i, (lr, params) in enumerate(fits.items(), start=1)
    ]
    assert runs[0].evaluation["train_loss"] < runs[1].evaluation["train_loss"]
    assert runs[1].evaluation["validation"]["mse"] < runs[0].evaluation["validation"]["mse"]
    assert best_run(runs) is runs[1]
    rows = comparison_rows(runs)
    assert rows[1]["val loss"] == runs[1].evaluation["validation"]["mse"]


def test_best_run_ties_go_to_the_smaller_learning_rate() -> None:
    runs = [FakeRun(7, 0.1, final_loss=0.0), FakeRun(8, 0.01, final_loss=0.0)]
    best = best_run(runs)
    assert best is not None and best.id == 8
    validated = [FakeRun(1, 0.3, val_mse=0.25), FakeRun(2, 0.2, val_mse=0.25)]
    best = best_run(validated)
    assert best is not None and best.id == 2


def test_comparison_rows_are_by_learning_rate_with_every_parameter() -> None:
    runs = [
        FakeRun(2, 0.1, status="diverged", final_loss=None, final_params={"w": 9263.0}),
        FakeRun(
            1,
            0.01,
            final_loss=1e-4,
            best_loss=1e-4,
            val_mse=2e-4,
            train_loss=1e-4,
            final_params={"w": 1.99, "b": 0.01},
        ),
    ]
    rows = comparison_rows(runs)
    assert [row["run"] for row in rows] == [1, 2]
    assert list(rows[0]) == [*COLUMNS, "w", "b"]
    assert rows[0] == {
        "run": 1,
        "lr": 0.01,
        "status": "completed",
        "stop reason": "max_epochs",
        "epochs": 100,
        "final loss": 1e-4,
        "best loss": 1e-4,
        "val loss": 2e-4,
        "w": 1.99,
        "b": 0.01,
    }
    assert rows[1]["val loss"] is None and rows[1]["final loss"] is None
    assert rows[1]["w"] == 9263.0 and rows[1]["b"] is None
    assert comparison_rows([]) == []


def test_failure_message_says_what_to_change() -> None:
    diverged = comparison_rows(
        [FakeRun(1, 1.0, status="diverged"), FakeRun(2, 2.0, status="diverged")]
    )
    message = failure_message(4, diverged, ["run 1 diverged"])
    assert message == (
        "sweep 4: no run completed: every learning rate diverged (the smallest was 1); "
        "lower them, e.g. --lrs 0.01 0.1"
    )
    mixed = comparison_rows([FakeRun(1, 1.0, status="diverged"), FakeRun(2, 0.1, status="failed")])
    message = failure_message(5, mixed, ["data file x.csv not found; check the path\nmore"])
    assert message == (
        "sweep 5: no run completed (1 diverged, 1 failed); "
        "first error: data file x.csv not found; check the path"
    )
    assert "\n" not in failure_message(6, [], [])


def test_a_classifier_sweep_is_compared_by_validation_log_loss_and_accuracy() -> None:
    from gdflow.training.classifier_evaluation import evaluate_classifier

    x = np.array([[0.0], [1.0], [2.0], [3.0], [0.5], [2.5]])
    y = np.array([0, 0, 1, 1, 0, 1])
    x_val, y_val = np.array([[0.2], [1.4], [1.6], [2.8]]), np.array([0, 1, 0, 1])
    fits = {  # softmax parameters: w_a, w_b, b_a, b_b (class a's fixed at zero)
        0.1: {"w_a_x": 0.0, "w_b_x": 0.4, "b_a": 0.0, "b_b": -0.6},
        1.0: {"w_a_x": 0.0, "w_b_x": 3.0, "b_a": 0.0, "b_b": -4.5},
    }
    runs = [
        EvaluatedRun(
            id=i,
            config={"lr": lr},
            final_params=params,
            evaluation=evaluate_classifier(
                x, y, params, family="softmax", classes=("a", "b"), validation=(x_val, y_val)
            ),
        )
        for i, (lr, params) in enumerate(fits.items(), start=1)
    ]
    losses = [run.evaluation["validation"]["log_loss"] for run in runs]
    assert best_run(runs) is runs[losses.index(min(losses))]
    rows = comparison_rows(runs)
    assert [row["val loss"] for row in rows] == losses
    assert [row["val accuracy"] for row in rows] == [
        run.evaluation["validation"]["accuracy"] for run in runs
    ]
    assert "w_b_x" in rows[0]  # four parameters: shown


def test_comparison_rows_leave_out_the_parameters_of_large_models() -> None:
    params = {f"w_{i}": float(i) for i in range(9)}
    runs = [EvaluatedRun(id=1, config={"lr": 0.1}, evaluation={}, final_params=params)]
    (row,) = comparison_rows(runs)
    assert list(row) == [
        "run",
        "lr",
        "status",
        "stop reason",
        "epochs",
        "final loss",
        "best loss",
        "val loss",
    ]
