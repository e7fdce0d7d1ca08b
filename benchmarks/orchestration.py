"""Orchestration overhead: wall time of `gdflow run` (defaults) against a bare Prefect flow and
against the seed script.

The bare flow (`bare_flow.py`: five empty tasks, `import torch`) is what any Prefect user pays:
Python, torch and Prefect imported, a flow run and its task runs recorded, Prefect's exit. What
`gdflow run` takes beyond it is gdflow's own (its imports, bookkeeping, checks, artifacts, and the
training itself: `torch.optim` imports `torch._dynamo`, which the seed script pays too). The seed
script is the plain PyTorch program gdflow grew from.

The three programs run in turn, the order rotated each round, after one warm-up run of each (it
creates the databases and byte-compiles the modules); the median of the per-round ratios is
reported, with the median wall and CPU times (user + system, children included). Once in
ephemeral mode (no server: Prefect, and gdflow, start a temporary one) and once against a
`prefect server start` on a free loopback port. All use one temporary database and
PREFECT_HOME.
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from benchmarks.common import REPO, Result
from gdflow.flows.deployments import local_api_url, server_command, server_is_healthy

#: The seed script beside the checkout, else the copy kept with the benchmarks.
SHARED_SEED = REPO.parent / "shared" / "reference" / "seed_script.py"
SEED = SHARED_SEED if SHARED_SEED.exists() else Path(__file__).with_name("seed_script.py")
BARE_FLOW = Path(__file__).with_name("bare_flow.py")
#: Targets: gdflow's own share over the bare flow (issue 15), and the ratios to the seed.
TARGET_BARE = 1.15
TARGET_SEED = {"ephemeral": 2.5, "server": 1.3}


def programs() -> dict[str, list[str]]:
    """The command line of each program measured, by name."""
    gdflow = str(Path(sys.executable).with_name("gdflow"))
    return {
        "gdflow": [gdflow, "run"],
        "bare flow": [sys.executable, str(BARE_FLOW)],
        "seed script": [sys.executable, str(SEED)],
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the process and the children it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{tail}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def rotated(names: Sequence[str], round_: int) -> list[str]:
    """`names` starting at position `round_` (each program leads one round in turn)."""
    k = round_ % len(names)
    return [*names[k:], *names[:k]]


def _compare(mode: str, env: dict[str, str], repeats: int, *, warm_up: bool = True) -> list[Result]:
    commands = programs()
    if warm_up:  # creates the databases and .pyc files, so that no measured run does
        for command in commands.values():
            _timed(command, env)
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    loads = [os.getloadavg()[0]]
    for round_ in range(repeats):
        for name in rotated(list(commands), round_):
            seconds, used = _timed(commands[name], env)
            wall[name].append(seconds)
            cpu[name].append(used)
        loads.append(os.getloadavg()[0])
    median = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    load = f"load {min(loads):.1f}-{max(loads):.1f}"
    results = []
    for other, target in (("bare flow", TARGET_BARE), ("seed script", TARGET_SEED[mode])):
        ratios = [g / o for g, o in zip(wall["gdflow"], wall[other])]
        results.append(
            Result(
                f"orchestration, {mode}: gdflow / {other}",
                statistics.median(ratios),
                target,
                False,
                f"gdflow run {median['gdflow']:.2f} s, {other} {median[other]:.2f} s (cpu "
                f"{median_cpu['gdflow']:.2f} s, {median_cpu[other]:.2f} s; medians of "
                f"{repeats}, {load})",
            )
        )
    return results


def _environment(folder: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_")
        and key != "GDFLOW_DATABASE_URL"
        # As installed packages are: each module byte-compiled once (the warm-up), not on
        # every run (this machine's environment sets it; the Makefile unexports it too).
        and key != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        PREFECT_HOME=str(folder / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GDFLOW_DATABASE_URL=f"sqlite:///{folder / 'gdflow.db'}",
        # Prefect gives its temporary server 10 s to start: too little on a loaded machine.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    return env


def _with_server(env: dict[str, str], repeats: int) -> list[Result]:
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
            results += [
                Result(
                    f"orchestration, ephemeral: gdflow / {other} (skipped: a server answers "
                    "on port 4200)",
                    float("nan"),
                    target,
                    False,
                    "stop that server to measure ephemeral mode",
                )
                for other, target in (
                    ("bare flow", TARGET_BARE),
                    ("seed script", TARGET_SEED["ephemeral"]),
                )
            ]
        else:
            # --quick (the test suite's smoke run): no warm-up; its figures include creating
            # the databases and compiling the modules
            results += _compare("ephemeral", env, repeats, warm_up=not quick)
        if not quick:
            results += _with_server(env, repeats)
    return results
