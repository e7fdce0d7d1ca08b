"""The one mapping to a run's status: from how training stopped, an exception, or a Prefect state.

Prefect's `TerminationSignal` (SIGTERM while a flow runs) and `CancelledRun` (the result of a
cancelled run) are public classes of `prefect.exceptions`, matched by class, never by name.
"""

from __future__ import annotations

from prefect.client.schemas.objects import StateType
from prefect.exceptions import CancelledRun, TerminationSignal

from gdflow.config.errors import DivergedError
from gdflow.storage import RunStatus

#: Stop reasons of `fit` that are not a completed run; any other reason completes it.
_STOP_REASONS: dict[str, RunStatus] = {
    "diverged": RunStatus.DIVERGED,
    "cancelled": RunStatus.CANCELLED,
}
#: Exceptions that end a run in a status other than failed (the first match wins).
_EXCEPTIONS: tuple[tuple[tuple[type[BaseException], ...], RunStatus], ...] = (
    ((KeyboardInterrupt, SystemExit, TerminationSignal, CancelledRun), RunStatus.CANCELLED),
    ((DivergedError,), RunStatus.DIVERGED),
)
#: Prefect state types of an ended flow run that are not a plain failure.
_STATES: dict[StateType, RunStatus] = {
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
    for classes, status in _EXCEPTIONS:
        if isinstance(exc, classes):
            return status
    return RunStatus.FAILED


def status_of_state(state_type: StateType) -> RunStatus:
    """The status of a run whose flow run ended in `state_type` without recording its end."""
    return _STATES.get(state_type, RunStatus.FAILED)


def stop_reason_of(status: RunStatus) -> str:
    """The stop reason recorded for a run that ended by an error: `error` when it failed,
    else the status itself (`cancelled`, `crashed`)."""
    return "error" if status is RunStatus.FAILED else status.value


def ends_training_early(status: RunStatus) -> bool:
    """True for a run whose parameters are not worth evaluating (diverged or cancelled)."""
    return status in (RunStatus.DIVERGED, RunStatus.CANCELLED)
