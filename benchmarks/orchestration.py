"""Orchestration overhead: wall time of `gdflow run` (defaults) against the seed script.

Runs alternate (seed, gdflow, seed, ...) and the median ratio is reported, once with a local
Prefect server started for the benchmark and once in ephemeral mode (no server: Prefect starts
its temporary one). Both use a temporary database and PREFECT_HOME.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import REPO, Result
from gdflow.flows.deployments import local_api_url, server_command, server_is_healthy

#: The seed script beside the checkout, else the copy kept with the benchmarks.
SHARED_SEED = REPO.parent / "shared" / "reference" / "seed_script.py"
SEED = SHARED_SEED if SHARED_SEED.exists() else Path(__file__).with_name("seed_script.py")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def _compare(label: str, env: dict[str, str], repeats: int, *, warm_up: bool = True) -> Result:
    gdflow = str(Path(sys.executable).with_name("gdflow"))
    if warm_up:  # creates the databases, so that no measured run does
        _timed([gdflow, "run"], env)
    seed_times, gdflow_times = [], []
    for _ in range(repeats):
        seed_times.append(_timed([sys.executable, str(SEED)], env))
        gdflow_times.append(_timed([gdflow, "run"], env))
    ratios = [g / s for g, s in zip(gdflow_times, seed_times)]
    return Result(
        f"orchestration, {label}",
        statistics.median(ratios),
        1.3 if label == "server" else 2.5,
        False,
        f"gdflow run {statistics.median(gdflow_times):.2f} s, seed script "
        f"{statistics.median(seed_times):.2f} s (medians of {repeats})",
    )


def _environment(folder: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_") and key != "GDFLOW_DATABASE_URL"
    }
    env.update(
        PREFECT_HOME=str(folder / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GDFLOW_DATABASE_URL=f"sqlite:///{folder / 'gdflow.db'}",
        # Prefect gives its temporary server 10 s to start: too little on a loaded machine.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    return env


def _with_server(env: dict[str, str], repeats: int) -> Result:
    port = _free_port()
    command, server_env = server_command("127.0.0.1", port)
    process = subprocess.Popen(
        command,
        env={**server_env, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    api_url = local_api_url("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 120
        while not server_is_healthy(api_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server on port {port} did not start")
            time.sleep(0.5)
        return _compare("server", {**env, "PREFECT_API_URL": api_url}, repeats)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(*, quick: bool, repeats: Optional[int] = None) -> list[Result]:
    """Ephemeral mode, and (unless quick) with a local server."""
    repeats = repeats or (1 if quick else 5)
    results = []
    with tempfile.TemporaryDirectory(prefix="gdflow-bench-") as folder:
        env = _environment(Path(folder))
        if server_is_healthy(local_api_url()):
            # gdflow run would use that server: ephemeral mode cannot be measured here.
            results.append(
                Result(
                    "orchestration, ephemeral (skipped: a server answers on port 4200)",
                    float("nan"),
                    2.5,
                    False,
                    "stop that server to measure ephemeral mode",
                )
            )
        else:
            # --quick (the test suite's smoke run): no warm-up; its one figure includes
            # creating the databases
            results.append(_compare("ephemeral", env, repeats, warm_up=not quick))
        if not quick:
            results.append(_with_server(env, repeats))
    return results
