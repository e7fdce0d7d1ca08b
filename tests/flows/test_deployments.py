"""Scheduled and manual runs against a real `prefect server`: serve, deploy, worker, artifacts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.processes import (
    PrefectServer,
    Served,
    copy_project,
    scheduled,
    start_background,
    stop_process,
    venv_command,
    wait_for,
)

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _rows(database: Path, sql: str, *args: object) -> list[tuple]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as conn:
        return conn.execute(sql, args).fetchall()


def _flow_run(server: PrefectServer, flow_run_id: str):  # type: ignore[no-untyped-def]
    with server.client() as client:
        return client.read_flow_run(flow_run_id)


def _wait_final(server: PrefectServer, flow_run_id: str, timeout: float = 180):  # type: ignore[no-untyped-def]
    def done():  # type: ignore[no-untyped-def]
        run = _flow_run(server, flow_run_id)
        return run if run.state and run.state.type.value in FINAL else None

    return wait_for(done, timeout=timeout, what=f"flow run {flow_run_id} to finish")


def _wait_for_metrics(served: Served, flow_run_id: str) -> None:
    """Wait until the run of this flow run has written at least one epoch."""

    def epochs_written() -> int:
        rows = _rows(
            served.database, "SELECT epochs_done FROM runs WHERE flow_run_id = ?", flow_run_id
        )
        return rows[0][0] if rows else 0

    wait_for(epochs_written, timeout=120, what="the long run to write metrics")


def _wait_recorded_status(served: Served, flow_run_id: str) -> tuple:
    """Wait until gdflow's run of this flow run has left `running`; return (status,)."""
    (status,) = wait_for(
        lambda: [
            row
            for row in _rows(
                served.database, "SELECT status FROM runs WHERE flow_run_id = ?", flow_run_id
            )
            if row[0] != "running"
        ],
        timeout=60,
        what="gdflow to record how the run ended",
    )
    return status


def _trigger(server: PrefectServer, deployment: str, config: Optional[dict], cwd: Path) -> str:
    """`prefect deployment run` as a user types it (with the deployment's own parameters when
    `config` is None); return the new flow run's id."""
    params = ["--params", json.dumps({"config": config})] if config is not None else []
    done = server.cli(venv_command("prefect"), "deployment", "run", deployment, *params, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"UUID: *([0-9a-f-]{36})", done.stdout)
    assert match, done.stdout
    return match.group(1)


@contextlib.contextmanager
def _process_worker(
    server: PrefectServer, *, cwd: Path, env: dict[str, str]
) -> Iterator[Callable[[str], None]]:
    """`prefect worker start` on the process pool, as a user starts it, until the end of the
    block; yield `completes(flow_run_id)`, which waits for that flow run to complete."""
    log = cwd / "worker.log"
    worker = start_background(
        [venv_command("prefect"), "worker", "start", "--pool", "gdflow-process"],
        env={**server.env, **env},
        cwd=cwd,
        log=log,
    )

    def completes(flow_run_id: str) -> None:
        def final():  # type: ignore[no-untyped-def]
            assert worker.poll() is None, log.read_text()[-3000:]  # the worker never ends
            run = _flow_run(server, flow_run_id)
            return run if run.state and run.state.type.value in FINAL else None

        run = wait_for(final, timeout=300, what=f"flow run {flow_run_id} to finish")
        assert run.state.type.value == "COMPLETED", log.read_text()[-3000:]

    try:
        yield completes
    finally:
        stop_process(worker)


def test_gdflow_serve_uses_the_deployment_names_of_prefect_yaml() -> None:
    """One set of names: `gdflow serve` registers prefect.yaml's scheduled and on-demand names."""
    import yaml

    from gdflow.config.train import TrainConfig
    from gdflow.flows.deployments import GPU, NIGHTLY, ON_DEMAND, build_deployments

    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    scheduled = {d["name"] for d in declared if d.get("schedules")}
    unscheduled = {d["name"] for d in declared if not d.get("schedules")}
    served = build_deployments(
        TrainConfig(), cron="0 2 * * *", timezone="UTC", interval=None, allow_overlap=False
    )
    names = {d.name: bool(d.schedules) for d in served}
    assert names == {NIGHTLY: True, ON_DEMAND: False}
    # Nobody watches the schedule: it skips unchanged data unless told otherwise.
    skips = {d.name: d.parameters["config"]["skip_unchanged"] for d in served}
    assert skips == {NIGHTLY: True, ON_DEMAND: False}
    (yaml_nightly,) = [d for d in declared if d["name"] == NIGHTLY]
    assert yaml_nightly["parameters"]["config"]["skip_unchanged"] is True
    told = build_deployments(
        TrainConfig(skip_unchanged=False),
        cron="0 2 * * *",
        timezone="UTC",
        interval=None,
        allow_overlap=False,
    )
    assert {d.parameters["config"]["skip_unchanged"] for d in told} == {False}
    assert scheduled == {NIGHTLY, "gdflow-predict"}
    assert unscheduled == {ON_DEMAND, GPU}


def test_manual_run_through_prefect_records_rows_and_artifacts(served: Served) -> None:
    server = served.server
    flow_run_id = _trigger(
        server, "train/gdflow-on-demand", {"lr": 0.02, "epochs": 120}, served.workdir
    )
    run = _wait_final(server, flow_run_id)
    assert run.state.type.value == "COMPLETED", run.state
    assert run.name == "toy-lr0.02-cpu-120ep"
    assert {"data:toy", "lr:0.02", "device:cpu"} <= set(run.tags)

    ((run_id, status, epochs, config),) = _rows(
        served.database,
        "SELECT id, status, epochs_done, config FROM runs WHERE flow_run_id = ?",
        flow_run_id,
    )
    assert (status, epochs, json.loads(config)["lr"]) == ("completed", 120, 0.02)
    assert _rows(
        served.database, "SELECT count(*) FROM epoch_metrics WHERE run_id = ?", run_id
    ) == [(120,)]

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with server.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_type: dict[str, list] = {}
    for artifact in artifacts:
        by_type.setdefault(artifact.type, []).append(artifact)
    assert [a.data for a in by_type["progress"]] == [100.0]
    markdown = [str(a.data) for a in by_type["markdown"]]
    assert any(f"Run {run_id}" in text and "f(5) =" in text for text in markdown)
    assert any("data:image/svg+xml;base64," in text for text in markdown)
    assert any(a.key and a.key.startswith("gdflow-trend-") for a in by_type["markdown"])
    (table,) = by_type["table"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows[0]["epoch"] == 1 and rows[-1]["epoch"] == 120 and "w" in rows[0]


def test_invalid_parameters_are_rejected_before_any_run(served: Served) -> None:
    done = served.server.cli(
        venv_command("prefect"),
        "deployment",
        "run",
        "train/gdflow-on-demand",
        "--params",
        json.dumps({"config": {"lr": -1}}),
        cwd=served.workdir,
    )
    assert done.returncode != 0
    assert "lr" in done.stdout + done.stderr


def test_the_schedule_creates_runs_and_they_execute(served: Served) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    def scheduled_runs():  # type: ignore[no-untyped-def]
        with served.server.client() as client:
            return client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["gdflow-nightly"])
                )
            )

    with scheduled(served):
        wait_for(
            lambda: any(r.state.type.value == "SCHEDULED" for r in scheduled_runs()),
            timeout=60,
            what="scheduled runs",
        )
        completed = wait_for(
            lambda: [r for r in scheduled_runs() if r.state.type.value == "COMPLETED"],
            timeout=120,
            what="a scheduled run to complete",
        )
    ids = [str(r.id) for r in completed]
    recorded = _rows(
        served.database,
        f"SELECT status, epochs_done FROM runs WHERE flow_run_id IN ({','.join('?' * len(ids))})",
        *ids,
    )
    assert recorded and all(row == ("completed", 50) for row in recorded)


def test_cancelling_a_run_records_it_cancelled_with_its_partial_metrics(served: Served) -> None:
    server = served.server
    flow_run_id = _trigger(
        server, "train/gdflow-on-demand", {"epochs": 100_000_000, "log_every": 0}, served.workdir
    )

    _wait_for_metrics(served, flow_run_id)
    done = server.cli(
        venv_command("prefect"), "flow-run", "cancel", flow_run_id, cwd=served.workdir
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run = _wait_final(server, flow_run_id, timeout=120)
    assert run.state.type.value == "CANCELLED"
    assert _wait_recorded_status(served, flow_run_id) == ("cancelled",)
    ((count,),) = _rows(
        served.database,
        "SELECT count(*) FROM epoch_metrics m JOIN runs r ON r.id = m.run_id "
        "WHERE r.flow_run_id = ?",
        flow_run_id,
    )
    assert count >= 1


def test_prefect_yaml_deploys_and_a_worker_runs_it(
    own_prefect_server: PrefectServer, tmp_path: Path
) -> None:
    prefect_server = own_prefect_server  # its deployments must not meet `gdflow serve`'s
    project, env = copy_project(tmp_path)
    database = tmp_path / "metrics.db"
    prefect = venv_command("prefect")

    created = prefect_server.cli(
        prefect,
        "work-pool",
        "create",
        "gdflow-process",
        "--type",
        "process",
        cwd=project,
        extra_env=env,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_server.cli(
        prefect,
        "--no-prompt",
        "deploy",
        "--name",
        "gdflow-nightly",
        "--name",
        "gdflow-on-demand",
        "--name",
        "gdflow-predict",
        cwd=project,
        extra_env=env,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    with prefect_server.client() as client:
        nightly = client.read_deployment_by_name("train/gdflow-nightly")
        (schedule,) = nightly.schedules
        assert schedule.schedule.cron == "0 2 * * *"
        assert schedule.schedule.timezone == "Europe/London"
        assert nightly.work_pool_name == "gdflow-process"
        assert nightly.global_concurrency_limit.limit == 1
        assert nightly.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert nightly.parameters["config"]["data"] == "examples/linear.csv"

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    def nightly_runs():  # type: ignore[no-untyped-def]
        with prefect_server.client() as client:
            return client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id]))
            )

    wait_for(nightly_runs, timeout=60, what="the nightly schedule to create runs")

    flow_run_id = _trigger(
        prefect_server,
        "train/gdflow-nightly",
        {
            "data": "examples/linear.csv",
            "bias": True,
            "lr": 0.1,
            "epochs": 3000,
            "tolerance": 1e-9,
            "predict": [[1, 0]],
        },
        project,
    )
    # One worker runs both flow runs, as on a host.
    with _process_worker(prefect_server, cwd=tmp_path, env=env) as completes:
        completes(flow_run_id)
        ((status, stop_reason, params),) = _rows(
            database,
            "SELECT status, stop_reason, final_params FROM runs WHERE flow_run_id = ?",
            flow_run_id,
        )
        assert (status, stop_reason) == ("completed", "converged")
        final = json.loads(params)
        assert final["w_a"] == pytest.approx(3.0, abs=0.05) and final["b"] == pytest.approx(
            1.0, abs=0.1
        )

        # The nightly run saved model `linear` version 1 (its champion); gdflow-predict scores the
        # example file with it on the worker, as its schedule does after the retrain.
        ((version, path),) = _rows(
            database, "SELECT version, path FROM model_versions WHERE name = 'linear'"
        )
        assert version == 1 and path.endswith(".safetensors")
        predict_run_id = _trigger(prefect_server, "predict/gdflow-predict", None, project)
        completes(predict_run_id)
    scored = pd.read_csv(project / "examples" / "linear.predictions.csv")
    source = pd.read_csv(project / "examples" / "linear.csv")
    assert list(scored.columns) == [*source.columns, "prediction"]
    expected = final["w_a"] * source["a"] + final["w_b"] * source["b"] + final["b"]
    assert scored["prediction"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-6)
    ((name, rows_out, status),) = _rows(
        database,
        "SELECT name || ':' || version, rows_out, status FROM prediction_batches "
        "WHERE flow_run_id = ?",
        predict_run_id,
    )
    assert (name, rows_out, status) == ("linear:1", len(source), "completed")


def _flow_run_pids(flow_run_id: str) -> list[int]:
    """Processes whose environment names this flow run (the runner's child process)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


@pytest.mark.extended  # CI: a SIGKILL mid-run in test_faults.py, test_orphans.py
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_run_is_recorded_crashed_and_keeps_its_metrics(served: Served) -> None:
    server = served.server
    flow_run_id = _trigger(
        server, "train/gdflow-on-demand", {"epochs": 100_000_000, "log_every": 0}, served.workdir
    )

    _wait_for_metrics(served, flow_run_id)
    pids = wait_for(lambda: _flow_run_pids(flow_run_id), timeout=30, what="the run's process")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    run = _wait_final(server, flow_run_id, timeout=120)
    assert run.state.type.value == "CRASHED"
    assert _wait_recorded_status(served, flow_run_id) == ("crashed",)
    ((count, done),) = _rows(
        served.database,
        "SELECT count(*), max(r.epochs_done) FROM epoch_metrics m JOIN runs r "
        "ON r.id = m.run_id WHERE r.flow_run_id = ?",
        flow_run_id,
    )
    assert count == done >= 1
    assert _rows(served.database, "PRAGMA integrity_check") == [("ok",)]
