"""The dashboard feed in process: `put` never waits for the API, the newest value wins, an
unreachable API is said once, and `close` is bounded in time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from gdflow.tasks import dashboard_feed
from gdflow.tasks.dashboard_feed import DashboardFeed, dashboard_reachable
from tests.processes import free_port


@pytest.fixture(autouse=True)
def closed_port_api() -> Iterator[None]:
    """An API URL on a loopback port nothing listens on; the feeds' shared state restored."""
    before = dashboard_feed._reachable
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        yield
    dashboard_feed._reachable = before


@pytest.mark.alone  # times put(): `make test` runs it after the parallel part
def test_put_never_waits_for_a_slow_api_and_the_newest_value_wins() -> None:
    release = threading.Event()
    entered = threading.Event()
    sent: list[float] = []

    def send(_client: Any, value: float) -> None:
        entered.set()
        release.wait(30)  # the first request hangs until released
        sent.append(value)

    feed = DashboardFeed(send, what="progress", logger=logging.getLogger("test"))
    feed.put(0.0)
    assert entered.wait(30)  # the side thread is now stuck in its first request
    started = time.monotonic()
    for value in range(1, 101):
        feed.put(float(value))
    assert time.monotonic() - started < 0.5
    release.set()
    feed.close()
    assert sent == [0.0, 100.0]
    assert dashboard_reachable() is True


def test_a_closed_port_is_said_once_and_close_does_not_wait_for_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def send(client: Any, _value: float) -> None:
        client.hello()  # a real request to the closed port: connection refused

    feed = DashboardFeed(send, what="progress", logger=logging.getLogger("gdflow.test"))
    with caplog.at_level(logging.WARNING, logger="gdflow.test"):
        for value in range(30):
            feed.put(float(value))
            time.sleep(0.1)
        started = time.monotonic()
        feed.close(timeout=5)
        closing = time.monotonic() - started
    notices = [r for r in caplog.records if "Prefect dashboard unreachable at" in r.getMessage()]
    assert len(notices) == 1
    assert getattr(notices[0], "send_to_api", True) is False
    assert dashboard_reachable() is False
    assert closing < 3
