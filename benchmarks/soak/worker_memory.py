"""Resident memory of a Prefect process worker over many flow runs, with and without a
one-certificate PREFECT_API_SSL_CERT_FILE (RELIABILITY.md, "The soak"; docs/deployment.md,
"Workers that run for months").

Every Prefect API client loads its CA file into a new SSL context, even for an http:// server;
a process worker opens clients for every flow run it executes. This runs the same trivial flow
(five empty tasks: the worker's work does not depend on what the flow does) N times through one
`prefect worker start --limit 1`, against a real Prefect server on loopback, once with Prefect's
default (certifi's bundle) and once with a CA file of one certificate, and prints the worker's
VmRSS after runs 1, 10 and N side by side:

    python -m benchmarks.soak.worker_memory --runs 40 [--format json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from prefect import flow, task

#: The module's path inside the repository: the deployment's entrypoint.
ENTRYPOINT = "benchmarks/soak/worker_memory.py:trivial"
REPOSITORY = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@task
def _step(value: int) -> int:
    return value + 1


@flow
def trivial() -> int:
    """Five empty tasks in a row: what the worker executes, run after run."""
    value = 0
    for _ in range(5):
        value = _step(value)
    return value


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    from gdflow.flows.deployments import server_is_healthy

    deadline = time.monotonic() + 180
    while not server_is_healthy(url, timeout=2.0):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker_memory: the Prefect server did not start; see {log}")
        time.sleep(0.5)


def measure(runs: int, ca_file: Optional[Path], root: Path) -> dict[str, Any]:
    """Run `runs` flow runs through one worker; return its VmRSS (KiB) after each."""
    from prefect.client.orchestration import SyncPrefectClient

    from benchmarks.soak.processes import free_port, kill_tree, rss_kib, venv_command

    root.mkdir(parents=True)
    port, prefect = free_port(), venv_command("prefect")
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    log = root / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [prefect, "server", "start", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker: Optional[subprocess.Popen[bytes]] = None
    try:
        _wait_healthy(api, server, log)
        subprocess.run(
            [prefect, "work-pool", "create", "memory", "--type", "process"],
            env=env,
            check=True,
            capture_output=True,
        )
        deploy = (
            "from prefect import flow\n"
            f"flow.from_source(source={str(REPOSITORY)!r}, entrypoint={ENTRYPOINT!r})"
            ".deploy(name='memory', work_pool_name='memory', print_next_steps=False,"
            " ignore_warnings=True)\n"
        )
        done = subprocess.run(
            [venv_command("python"), "-c", deploy], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"worker_memory: deploying the trivial flow failed:\n{done.stderr}")
        with SyncPrefectClient(api=api) as client:
            deployment = client.read_deployment_by_name("trivial/memory")
            ids = {client.create_flow_run_from_deployment(deployment.id).id for _ in range(runs)}
            worker_env = env | ({"PREFECT_API_SSL_CERT_FILE": str(ca_file)} if ca_file else {})
            with (root / "worker.log").open("wb") as out:
                worker = subprocess.Popen(
                    [prefect, "worker", "start", "--pool", "memory", "--limit", "1"],
                    env=worker_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            ended: set[Any] = set()
            rss: list[int] = []
            started = time.monotonic()
            while len(ended) < runs:
                if worker.poll() is not None or time.monotonic() - started > 60 * runs:
                    raise SystemExit(f"worker_memory: the worker stopped; see {root}/worker.log")
                runs_now = client.read_flow_runs(limit=runs)
                states = {run.id: run.state_type.value for run in runs_now if run.state_type}
                for run_id in ids - ended:
                    if states.get(run_id) in FINAL:
                        ended.add(run_id)
                        rss.append(rss_kib(worker.pid) or 0)
                time.sleep(0.3)
        return {"runs": runs, "seconds": round(time.monotonic() - started, 1), "rss_kib": rss}
    finally:
        for process in (worker, server):
            if process is not None:
                kill_tree(process.pid)
                process.wait()


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="flow runs per setting (10-200)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    if not 10 <= args.runs <= 200:
        parser.error("--runs must be between 10 and 200 (the API lists at most 200 runs)")
    from benchmarks.soak.cluster import write_api_ca_file

    with tempfile.TemporaryDirectory(prefix="gdflow-worker-memory-") as folder:
        root = Path(folder)
        ca = write_api_ca_file(root / "api-ca.pem")
        results = {
            "default (certifi's bundle)": measure(args.runs, None, root / "default"),
            "PREFECT_API_SSL_CERT_FILE, one certificate": measure(args.runs, ca, root / "one"),
        }
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    print(f"prefect worker, process pool, --limit 1: VmRSS after flow runs ({args.runs} each)")
    header = f"{'setting':<44} {'run 1':>10} {'run 10':>10} {'run ' + str(args.runs):>10}"
    print(header + f" {'10 -> end':>10}")
    for name, result in results.items():
        rss = result["rss_kib"]
        growth = (rss[-1] - rss[9]) / rss[9]
        print(
            f"{name:<44} {_mib(rss[0]):>10} {_mib(rss[9]):>10} {_mib(rss[-1]):>10} {growth:>+10.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
