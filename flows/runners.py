"""The sweep's task runners: threads in the sweep's process, or Dask worker processes."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional
from urllib.parse import urlsplit

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from gdflow.config.errors import GdflowError
from gdflow.config.sweep import SweepConfig, scheduler_host


def is_loopback(host: Optional[str]) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe(sweep: SweepConfig, count: int) -> str:
    """Where the sweep's runs train, in words, e.g. 'a local Dask cluster of 2 processes'."""
    workers = max(1, min(sweep.max_concurrency, count))
    if sweep.runner == "threads":
        return f"{workers} thread(s) of this process"
    if sweep.dask_address:
        return f"the Dask cluster at {sweep.dask_address}"
    return f"a local Dask cluster of {workers} worker process(es)"


def _workers_api_url(dask_address: Optional[str]) -> str:
    """The Prefect API this flow talks to, which the Dask workers must use too.

    Without it each worker process would start an ephemeral Prefect server of its own, and the
    runs' subflows would be recorded there instead of beside the sweep.
    """
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    scheduler = scheduler_host(dask_address) if dask_address else None
    if scheduler and not is_loopback(scheduler) and is_loopback(urlsplit(api_url).hostname):
        raise GdflowError(
            f"the Dask workers of {dask_address} cannot reach the Prefect API at {api_url} "
            "(loopback only): run a Prefect server they can reach and set PREFECT_API_URL to it"
        )
    return api_url


def _dask_runner(sweep: SweepConfig, workers: int) -> Any:
    """A DaskTaskRunner on the scheduler at dask_address, or on a new local cluster."""
    from prefect_dask import DaskTaskRunner

    if sweep.dask_address:
        return DaskTaskRunner(address=sweep.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


@contextmanager
def sweep_runner(sweep: SweepConfig, count: int) -> Iterator[TaskRunner[Any]]:
    """A started task runner for `count` runs of the sweep; Dask workers get this flow's API."""
    workers = max(1, min(sweep.max_concurrency, count))
    if sweep.runner == "threads":
        threads: ThreadPoolTaskRunner[Any]
        with ThreadPoolTaskRunner(max_workers=workers) as threads:
            yield threads
        return
    api_url = _workers_api_url(sweep.dask_address)
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        _dask_runner(sweep, workers) as dask,
    ):
        try:
            dask.client.scheduler_info()  # connect now: a wrong address fails here
        except OSError as exc:
            if not sweep.dask_address:
                raise
            raise GdflowError(
                f"cannot reach the Dask scheduler at {sweep.dask_address}: "
                f"{str(exc).splitlines()[0]}; start one ('dask scheduler', then "
                "'dask worker ADDRESS' on each machine) or fix --dask-address"
            ) from None
        yield dask
