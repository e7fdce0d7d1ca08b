"""Serving gdflow: a local Prefect server, and the scheduled and on-demand deployments."""

from __future__ import annotations

import os
import urllib.request
from typing import Any, Optional

from gdflow.config.train import TrainConfig

#: Where `gdflow server` listens unless told otherwise (loopback only).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
#: Deployment names, the same in prefect.yaml and `gdflow serve`:
#: `prefect deployment run 'train/<name>'`. NIGHTLY carries the schedule (the cron, or
#: `--interval` under `gdflow serve`); ON_DEMAND has none; GPU is prefect.yaml's only.
NIGHTLY = "gdflow-nightly"
#: Where `gdflow server` keeps the leases of deployment concurrency slots (unless the
#: environment says otherwise): on disk, in PREFECT_HOME/concurrency_leases. Prefect's default
#: keeps them in the server's memory, so a server restart loses them: a run holding the slot is
#: then cancelled at its next lease renewal (every 225 s), and the slot of a run that died
#: meanwhile is never freed (the soak found both; RELIABILITY.md, "The soak").
LEASE_STORAGE_SETTING = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
ON_DEMAND = "gdflow-on-demand"
GPU = "gdflow-gpu"


def local_api_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The API URL of a Prefect server on `host:port`."""
    return f"http://{host}:{port}/api"


def server_is_healthy(api_url: str, timeout: float = 0.5) -> bool:
    """True when a Prefect server answers its health check at `api_url`."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (OSError, ValueError):
        return False


def configured_api_url() -> Optional[str]:
    """The Prefect API URL from the environment or the active Prefect profile, if any."""
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return str(value) if value else None


def find_api_url() -> Optional[str]:
    """A configured Prefect server, else `gdflow server` on the default local port, else None."""
    url = configured_api_url()
    if url:
        return url
    local = local_api_url()
    return local if server_is_healthy(local) else None


def ui_url(api_url: str) -> str:
    """The dashboard's address for an API URL (http://host:port/api -> http://host:port)."""
    return api_url.rstrip("/").removesuffix("/api")


def server_command(host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The `prefect server start` command line and environment behind `gdflow server`."""
    import shutil
    import sys

    prefect = shutil.which("prefect", path=os.path.dirname(sys.executable)) or "prefect"
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The dashboard's browser code must call this server, not the default port.
        "PREFECT_SERVER_UI_API_URL": local_api_url(host, port),
    }
    env.setdefault(LEASE_STORAGE_SETTING, LEASE_STORAGE)
    return [prefect, "server", "start", "--host", host, "--port", str(port)], env


def is_loopback(host: str) -> bool:
    """True for a host name or address that only this machine can reach."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, env: dict[str, str]) -> Optional[str]:
    """A warning when `gdflow server` would listen beyond loopback without basic auth."""
    if is_loopback(host) or env.get("PREFECT_SERVER_API_AUTH_STRING"):
        return None
    return (
        f"--host {host} exposes the Prefect API and UI (runs, parameters, logs) beyond this "
        "machine with no authentication; set PREFECT_SERVER_API_AUTH_STRING=user:password "
        "for the server and PREFECT_API_AUTH_STRING for its clients first"
    )


def runner_limit(deployments: list[Any]) -> Optional[int]:
    """How many flow runs `gdflow serve`'s runner starts at once: as many as its deployments
    may run together (one each, unless one has no concurrency limit: then no limit).
    `prefect.serve` gives its runner no limit otherwise (PREFECT_RUNNER_PROCESS_LIMIT is not
    read), and with a queue of scheduled runs the runner then proposes every one of them each
    poll, all but one refused by the deployment's limit: a dozen refused state changes a second
    on Prefect's database in the soak, which made its SQLite server answer 503."""
    limits = [deployment.concurrency_limit for deployment in deployments]
    if any(limit is None for limit in limits):
        return None
    return sum(getattr(limit, "limit", limit) for limit in limits)


def build_deployments(
    config: TrainConfig,
    *,
    cron: str,
    timezone: str,
    interval: Optional[float],
    allow_overlap: bool,
) -> list[Any]:
    """The scheduled and the on-demand deployment of the train flow, for `prefect.serve`."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    from gdflow.flows.train import train_flow

    limit = None
    if not allow_overlap:
        limit = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    schedule = Interval(interval, timezone=timezone) if interval else Cron(cron, timezone=timezone)
    parameters = {"config": config.model_dump(mode="json")}
    common: dict[str, Any] = {
        "parameters": parameters,
        "concurrency_limit": limit,
        "entrypoint_type": EntrypointType.MODULE_PATH,
        "tags": ["gdflow"],
    }
    nightly = config
    if "skip_unchanged" not in config.model_fields_set:  # on by default when nobody watches
        nightly = config.model_copy(update={"skip_unchanged": True})
    scheduled = train_flow.to_deployment(
        name=NIGHTLY,
        schedules=[schedule],
        description=(
            "Retrain on a schedule with the configured data (skipped when the data and the "
            "options are those of the last completed run)."
        ),
        **{**common, "parameters": {"config": nightly.model_dump(mode="json")}},
    )
    on_demand = train_flow.to_deployment(
        name=ON_DEMAND,
        description="Train once on request: CLI, `prefect deployment run` or the UI's run form.",
        **common,
    )
    return [scheduled, on_demand]
