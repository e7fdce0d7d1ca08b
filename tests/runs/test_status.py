"""The one mapping to run statuses, table by table."""

from __future__ import annotations

import signal

import pytest
from prefect.client.schemas.objects import StateType
from prefect.exceptions import CancelledRun, TerminationSignal

from gdflow.config.errors import DivergedError, GdflowError
from gdflow.runs.status import (
    ends_training_early,
    status_of_exception,
    status_of_state,
    status_of_stop,
    stop_reason_of,
)
from gdflow.storage import RunStatus


@pytest.mark.parametrize(
    ("stop_reason", "status"),
    [
        ("max_epochs", RunStatus.COMPLETED),
        ("converged", RunStatus.COMPLETED),
        ("plateaued", RunStatus.COMPLETED),
        ("diverged", RunStatus.DIVERGED),
        ("cancelled", RunStatus.CANCELLED),
    ],
)
def test_status_of_a_stop_reason(stop_reason: str, status: RunStatus) -> None:
    assert status_of_stop(stop_reason) is status


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (KeyboardInterrupt(), RunStatus.CANCELLED),
        (SystemExit(143), RunStatus.CANCELLED),
        (TerminationSignal(signal.SIGTERM), RunStatus.CANCELLED),
        (CancelledRun("cancelled"), RunStatus.CANCELLED),
        (DivergedError("run 1 diverged"), RunStatus.DIVERGED),
        (GdflowError("file not found"), RunStatus.FAILED),
        (RuntimeError("boom"), RunStatus.FAILED),
        (type("TerminationSignal", (Exception,), {})(), RunStatus.FAILED),  # matched by class
    ],
)
def test_status_of_an_exception(exc: BaseException, status: RunStatus) -> None:
    assert status_of_exception(exc) is status


@pytest.mark.parametrize(
    ("state_type", "status"),
    [
        (StateType.CRASHED, RunStatus.CRASHED),
        (StateType.CANCELLED, RunStatus.CANCELLED),
        (StateType.CANCELLING, RunStatus.CANCELLED),
        (StateType.FAILED, RunStatus.FAILED),
        (StateType.COMPLETED, RunStatus.FAILED),  # a hook only sees runs that did not record
    ],
)
def test_status_of_an_ended_flow_run(state_type: StateType, status: RunStatus) -> None:
    assert status_of_state(state_type) is status


@pytest.mark.parametrize(
    ("status", "stop_reason", "early"),
    [
        (RunStatus.FAILED, "error", False),
        (RunStatus.CANCELLED, "cancelled", True),
        (RunStatus.CRASHED, "crashed", False),
        (RunStatus.DIVERGED, "diverged", True),
        (RunStatus.COMPLETED, "completed", False),
    ],
)
def test_stop_reason_and_evaluation_of_a_status(
    status: RunStatus, stop_reason: str, early: bool
) -> None:
    assert stop_reason_of(status) == stop_reason
    assert ends_training_early(status) is early
