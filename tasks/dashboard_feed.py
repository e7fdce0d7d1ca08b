"""Feed Prefect's dashboard from a side thread, so that monitoring never slows training down.

Training hands a `DashboardFeed` its newest value and goes on at once. A daemon thread sends
the newest value (older ones are dropped: latest value wins) with one short request and no
retries, and tries again a little later when the API does not answer. The first failure is
said once, as a warning; when the API answers again, so is that, and it gets the newest value.
`close()` waits a bounded time for the last value, so a run that ends while the server is down
ends at once. `dashboard_reachable()` tells the rest of the run what the feeds last found.

`deliver_or_drop(timeout)` waits a bounded time for Prefect's log and event workers, which
otherwise hold the process at exit for as long as they retry a server that does not answer.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

#: Seconds one request of a feed may take (connecting, sending, reading the answer).
REQUEST_TIMEOUT = 5.0
#: Seconds between two sends of a feed (values in between are replaced by newer ones).
SEND_INTERVAL = 0.5
#: Seconds between two tries while the API does not answer.
RETRY_INTERVAL = 2.0

#: What the feeds of this process last found: True (answered), False (did not), None (not
#: tried yet). One value per process: every feed talks to the same API.
_reachable: Optional[bool] = None
_state_lock = threading.Lock()

Send = Callable[[SyncPrefectClient, float], None]


def dashboard_reachable() -> Optional[bool]:
    """Whether the Prefect API answered the last request of a feed (None: none was sent)."""
    return _reachable


def deliver_or_drop(timeout: float) -> bool:
    """Wait up to `timeout` s for Prefect's log and event workers to send what they hold;
    True if they did (they are stopped either way; Prefect starts new ones when needed)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    deadline = time.monotonic() + timeout
    for service in (APILogWorker, EventsWorker):
        remaining = max(0.0, deadline - time.monotonic())
        outcome = service.drain_all(timeout=remaining, at_exit=False)
        if not isinstance(outcome, tuple) or outcome[1]:
            return False
    return True


class DashboardFeed:
    """Send the newest of a stream of values to the Prefect API from a daemon thread."""

    def __init__(self, send: Send, *, what: str, logger: Any) -> None:
        self._send = send
        self._what = what
        self._logger = logger
        self._changed = threading.Condition()
        self._latest: Optional[float] = None
        self._sent: Optional[float] = None
        self._closing = False
        self._failed_at: Optional[float] = None
        # The thread sees this context's settings (the run's API URL) and run ids.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name="gdflow-dashboard-feed", daemon=True
        )
        self._thread.start()

    def put(self, value: float) -> None:
        """Make `value` the next one to send; never waits for the API."""
        with self._changed:
            self._latest = value
            self._changed.notify()

    def close(self, timeout: float = REQUEST_TIMEOUT + 1) -> None:
        """Send the newest value if the API answers within `timeout` seconds, then stop."""
        with self._changed:
            self._closing = True
            self._failed_at = None  # one last try, even right after a failure
            self._changed.notify()
        self._thread.join(timeout)

    def _next(self) -> Optional[float]:
        """Wait for a value to send (None: closing with nothing left to send)."""
        with self._changed:
            while True:
                pending = self._latest is not None and self._latest != self._sent
                if self._closing and not pending:
                    return None
                wait = None
                if pending and self._failed_at is not None:
                    wait = self._failed_at + RETRY_INTERVAL - time.monotonic()
                if pending and (wait is None or wait <= 0):
                    return self._latest
                self._changed.wait(wait)

    def _loop(self) -> None:
        """Send values until closed, with a client of our own: short timeout, no retries."""
        with (
            temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(httpx_settings={"timeout": REQUEST_TIMEOUT}, sync_client=True) as client,
        ):
            while (value := self._next()) is not None:
                started = time.monotonic()
                try:
                    self._send(client, value)
                except Exception as exc:  # noqa: BLE001 - any failure: try again later
                    self._failure(exc)
                    if self._closing:
                        return
                    continue
                self._success(value)
                if not self._closing:
                    time.sleep(max(0.0, SEND_INTERVAL - (time.monotonic() - started)))

    def _failure(self, exc: Exception) -> None:
        """Note a failed send; say so once per outage."""
        global _reachable
        with self._changed:
            self._failed_at = time.monotonic()
        with _state_lock:
            first = _reachable is not False
            _reachable = False
        if first:
            self._logger.warning(
                "Prefect dashboard unreachable at %s (%s): training goes on and every epoch "
                "is still recorded in the database; the %s will be sent when it answers again",
                PREFECT_API_URL.value(),
                _describe(exc),
                self._what,
                extra={"send_to_api": False},
            )

    def _success(self, value: float) -> None:
        """Note a sent value; say so when the API answers again after an outage."""
        global _reachable
        with self._changed:
            self._sent = value
            self._failed_at = None
        with _state_lock:
            back = _reachable is False
            _reachable = True
        if back:
            self._logger.info("Prefect dashboard reachable again: %s sent", self._what)


def _describe(exc: Exception) -> str:
    """An exception in a few words: its message, else its type."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def quiet_when_unreachable(logger: Any) -> logging.LoggerAdapter[Any]:
    """`logger`, whose records stay out of the Prefect API while the dashboard is unreachable
    (they still reach the console): a backlog of them would hold the process at exit."""
    return _QuietAdapter(logger, {})


class _QuietAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Marks records `send_to_api=False` (Prefect's opt-out) while the API does not answer."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        """Add the opt-out to the record's extra fields while the dashboard is unreachable."""
        if _reachable is False:
            kwargs["extra"] = {**kwargs.get("extra", {}), "send_to_api": False}
        return msg, kwargs
