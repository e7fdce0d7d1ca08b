"""The train task says when a run trains on its rows' sufficient statistics or on the fused
cross-entropy kernel (or why a classifier goes without the kernel), and the run's record keeps
which loss path trained it (beside `lr_range_test`, in the stored evaluation)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch

from gdflow.runs.recording import outcome_of
from gdflow.tasks import pipeline
from gdflow.training.fused_cross_entropy import DISABLE_VARIABLE
from gdflow.training.optimization import Optimization
from gdflow.training.preprocessing import TrainingProblem
from gdflow.training.result import TrainResult


def _result(**fields: Any) -> TrainResult:
    return TrainResult(
        epochs_done=3,
        stop_reason="max_epochs",
        final_params={"w": 2.0},
        final_loss=0.5,
        device="cpu",
        **fields,
    )


@pytest.mark.parametrize("path", ["direct", "fused", "statistics"])
def test_the_loss_path_is_stored_with_the_evaluation(path: str) -> None:
    outcome = outcome_of(_result(loss_path=path), {"train_loss": 0.5})
    assert outcome.evaluation == {"train_loss": 0.5, "loss_path": path, "data_mode": "in-memory"}


def test_a_run_without_an_evaluation_still_records_its_loss_path() -> None:
    search = {"chosen": 0.1}
    outcome = outcome_of(_result(loss_path="statistics", lr_range_test=search), None)
    assert outcome.evaluation == {
        "lr_range_test": search,
        "loss_path": "statistics",
        "data_mode": "in-memory",
    }


def test_the_train_task_logs_training_on_statistics_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("gdflow.test.loss_path")
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logger)
    x = np.zeros((1_000_000, 16), dtype=np.float32)
    problem = TrainingProblem(x, np.zeros(len(x)), {}, None, None)
    with caplog.at_level(logging.INFO, logger=logger.name):
        pipeline._log_loss_path(problem, "statistics")
        pipeline._log_loss_path(problem, "fused")
        pipeline._log_loss_path(problem, "direct")
    assert [r.getMessage() for r in caplog.records] == [
        "Training on sufficient statistics XᵀX, Xᵀy (16 x 16): each epoch costs O(d²), "
        "independent of the 1,000,000 rows"
    ]


def test_the_train_task_logs_the_fused_kernel_or_why_a_classifier_goes_without_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("gdflow.test.kernel_path")
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logger)
    x = np.zeros((100_000, 16), dtype=np.float32)
    problem = TrainingProblem(x, np.zeros(len(x)), {}, None, None, family="softmax", n_classes=3)
    small = TrainingProblem(x[:100], np.zeros(100), {}, None, None, family="logistic")
    linear = TrainingProblem(x, np.zeros(len(x)), {}, None, None)
    cpu, opt = torch.device("cpu"), Optimization(lr=0.1, epochs=5)
    monkeypatch.setenv(DISABLE_VARIABLE, "off")
    with caplog.at_level(logging.INFO, logger=logger.name):
        pipeline._log_loss_path(problem, "fused")
        pipeline._log_kernel_fallback(problem, opt, cpu)
        pipeline._log_kernel_fallback(problem, Optimization(lr=0.1, epochs=5, batch_size=64), cpu)
        pipeline._log_kernel_fallback(small, opt, cpu)
        pipeline._log_kernel_fallback(linear, opt, cpu)
        pipeline._log_loss_path(linear, "fused")  # the fused MSE says nothing, as before
    assert [r.getMessage() for r in caplog.records] == [
        "Training on the fused cross-entropy kernel: one read of the 100,000 rows an epoch",
        "Training on the torch ops (two reads of the rows an epoch): the fused cross-entropy "
        f"kernel is unavailable: switched off by {DISABLE_VARIABLE}=off",
    ]
    assert caplog.records[1].levelno == logging.WARNING
