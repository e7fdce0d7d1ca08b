"""The one mapping to a run's status: from how training stopped, an exception, or a Prefect state.

Prefect's `TerminationSignal` (SIGTERM while a flow runs) and `CancelledRun` (the result of a
cancelled run) are public classes of `prefect.exceptions`, matched by class, never by name.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from gdflow.config.errors import DivergedError
from gdflow.storage import RunStatus

if TYPE_CHECKING:  # Prefect is imported when a status is asked of an exception or a state:
    # `gdflow runs` and the other read-only commands reconcile runs without importing it.
    from prefect.client.schemas.objects import StateType

#: Stop reasons of `fit` that are not a completed run; any other reason completes it.
_STOP_REASONS: dict[str, RunStatus] = {
    "diverged": RunStatus.DIVERGED,
    "cancelled": RunStatus.CANCELLED,
}


@cache
def _exceptions() -> tuple[tuple[tuple[type[BaseException], ...], RunStatus], ...]:
    """Exceptions that end a run in a status other than failed (the first match wins)."""
    from prefect.exceptions import CancelledRun, TerminationSignal

    return (
        ((KeyboardInterrupt, SystemExit, TerminationSignal, CancelledRun), RunStatus.CANCELLED),
        ((DivergedError,), RunStatus.DIVERGED),
    )


@cache
def _states() -> dict[StateType, RunStatus]:
    """Prefect state types of an ended flow run that are not a plain failure."""
    from prefect.client.schemas.objects import StateType

    return {
        StateType.CRASHED: RunStatus.CRASHED,
        StateType.CANCELLED: RunStatus.CANCELLED,
        StateType.CANCELLING: RunStatus.CANCELLED,
    }


def status_of_stop(stop_reason: str) -> RunStatus:
    """The status of a run whose training stopped for `stop_reason` (e.g. `converged`)."""
    return _STOP_REASONS.get(stop_reason, RunStatus.COMPLETED)


def status_of_exception(exc: BaseException) -> RunStatus:
    """The status an exception leaves behind: cancelled for interrupts and termination,
    diverged for DivergedError, else failed."""
    for classes, status in _exceptions():
        if isinstance(exc, classes):
            return status
    return RunStatus.FAILED


def status_of_state(state_type: StateType) -> RunStatus:
    """The status of a run whose flow run ended in `state_type` without recording its end."""
    return _states().get(state_type, RunStatus.FAILED)


def stop_reason_of(status: RunStatus) -> str:
    """The stop reason recorded for a run that ended by an error: `error` when it failed,
    else the status itself (`cancelled`, `crashed`)."""
    return "error" if status is RunStatus.FAILED else status.value


def ends_training_early(status: RunStatus) -> bool:
    """True for a run whose parameters are not worth evaluating (diverged or cancelled)."""
    return status in (RunStatus.DIVERGED, RunStatus.CANCELLED)
