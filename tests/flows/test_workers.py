"""Work pools against a real `prefect server`: several process workers, and the GPU deployment."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.processes import (
    PrefectServer,
    copy_project,
    start_background,
    stop_process,
    venv_command,
    wait_for,
)

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CUDA = torch.cuda.is_available()


def _rows(database: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        return conn.execute(sql, args).fetchall()


def _wait_final(server: PrefectServer, ids: list, timeout: float = 300) -> list:  # type: ignore[type-arg]
    """Wait until every flow run has finished; return them in order."""

    def done():  # type: ignore[no-untyped-def]
        with server.client() as client:
            runs = [client.read_flow_run(i) for i in ids]
        return runs if all(r.state and r.state.type.value in FINAL for r in runs) else None

    return wait_for(done, timeout=timeout, what=f"{len(ids)} flow run(s) to finish")


def _create_process_pool(server: PrefectServer, name: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with server.client() as client:
        client.create_work_pool(
            WorkPoolCreate(name=name, type="process", base_job_template=template), overwrite=True
        )


@pytest.mark.extended  # make test-extended: minutes of CPU on two cores
@pytest.mark.heavy
def test_several_process_workers_share_one_pool_and_one_database(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    pool = "gdflow-test"
    database = tmp_path / "metrics.db"
    _create_process_pool(prefect_server, pool)
    with prefect_server.client() as client:
        deployment_id = client.create_deployment(
            flow_id=client.create_flow_from_name("train"),
            name="gdflow-pool-test",
            entrypoint="flows/train.py:train_flow",
            work_pool_name=pool,
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ],
        )
    env = {**prefect_server.env, "GDFLOW_DATABASE_URL": f"sqlite:///{database}"}
    names = ["gdflow-worker-a", "gdflow-worker-b"]
    workers = [
        start_background(
            # --limit 1: a busy worker leaves the next run to the other one.
            [venv_command("prefect"), "worker", "start", "--pool", pool, "--name", name]
            + ["--type", "process", "--limit", "1"],
            env=env,
            cwd=tmp_path,
            log=tmp_path / f"{name}.log",
        )
        for name in names
    ]
    try:

        def both_online() -> bool:
            for worker in workers:
                assert worker.poll() is None, (tmp_path / f"{names[0]}.log").read_text()[-3000:]
            with prefect_server.client() as client:
                online = {w.name for w in client.read_workers_for_work_pool(pool)}
            return set(names) <= online

        wait_for(both_online, timeout=120, what="both workers to poll the pool")
        lrs = [0.005, 0.01, 0.02]  # with --limit 1, one worker cannot take all three at once
        with prefect_server.client() as client:
            ids = [
                client.create_flow_run_from_deployment(
                    deployment_id, parameters={"config": {"lr": lr, "epochs": 200, "log_every": 0}}
                ).id
                for lr in lrs
            ]
        runs = _wait_final(prefect_server, ids)
    finally:
        for worker in workers:
            stop_process(worker)

    assert [r.state.type.value for r in runs] == ["COMPLETED"] * len(lrs), [r.state for r in runs]
    assert {r.labels.get("prefect.worker.name") for r in runs} == set(names)  # both took runs
    recorded = _rows(
        database,
        "SELECT r.flow_run_id, r.status, r.epochs_done, count(m.epoch) FROM runs r "
        "JOIN epoch_metrics m ON m.run_id = r.id GROUP BY r.id",
    )
    assert sorted(recorded) == sorted((str(i), "completed", 200, 200) for i in ids)
    assert _rows(database, "PRAGMA integrity_check") == [("ok",)]


@dataclass(frozen=True)
class GpuDeployment:
    """The gdflow-gpu deployment of prefect.yaml, deployed to the real server."""

    server: PrefectServer
    project: Path
    env: dict[str, str]
    database: Path


@pytest.fixture(scope="module")
def gpu(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GpuDeployment]:
    """`prefect work-pool create gdflow-gpu`, `prefect deploy --name gdflow-gpu` (as documented)."""
    root = tmp_path_factory.mktemp("gpu")
    project, env = copy_project(root)
    prefect = venv_command("prefect")
    for command in (
        [prefect, "work-pool", "create", "gdflow-gpu", "--type", "process"],
        [prefect, "--no-prompt", "deploy", "--name", "gdflow-gpu"],
    ):
        done = prefect_server.cli(*command, cwd=project, extra_env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield GpuDeployment(prefect_server, project, env, root / "metrics.db")


def _run_on_the_gpu_pool(gpu: GpuDeployment) -> tuple:  # type: ignore[type-arg]
    """Trigger the deployment on its defaults, let one gdflow-gpu worker run it; (run, row)."""
    with gpu.server.client() as client:
        deployment = client.read_deployment_by_name("train/gdflow-gpu")
        flow_run = client.create_flow_run_from_deployment(deployment.id)
    worker = gpu.server.cli(
        venv_command("prefect"),
        "worker",
        "start",
        "--pool",
        "gdflow-gpu",
        "--run-once",
        cwd=gpu.project.parent,
        extra_env=gpu.env,
        timeout=300,
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    (run,) = _wait_final(gpu.server, [flow_run.id])
    (row,) = _rows(
        gpu.database,
        "SELECT status, error, device, epochs_done FROM runs WHERE flow_run_id = ?",
        str(flow_run.id),
    )
    return run, row


@pytest.mark.extended  # deploys prefect.yaml's GPU deployment (minutes of CPU)
def test_the_gpu_deployment_targets_the_gpu_pool_with_device_cuda(gpu: GpuDeployment) -> None:
    with gpu.server.client() as client:
        deployment = client.read_deployment_by_name("train/gdflow-gpu")
    assert deployment.work_pool_name == "gdflow-gpu"
    assert deployment.parameters == {"config": {"device": "cuda"}}
    assert {"gdflow", "gpu"} <= set(deployment.tags)
    assert deployment.global_concurrency_limit.limit == 1


@pytest.mark.skipif(CUDA, reason="checks the error of a machine without a GPU")
@pytest.mark.extended  # deploys prefect.yaml's GPU deployment (minutes of CPU)
def test_a_gpu_run_on_a_machine_without_one_fails_with_the_device_error(
    gpu: GpuDeployment,
) -> None:
    run, (status, error, _, epochs) = _run_on_the_gpu_pool(gpu)
    message = f"device 'cuda' is not available (torch {torch.__version__}: "
    assert run.state.type.value == "FAILED" and message in (run.state.message or "")
    assert status == "failed" and error.startswith(message) and "\n" not in error
    assert epochs == 0


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_a_gpu_run_trains_on_cuda(gpu: GpuDeployment) -> None:
    run, (status, error, device, epochs) = _run_on_the_gpu_pool(gpu)
    assert run.state.type.value == "COMPLETED", run.state
    assert (status, error, epochs) == ("completed", None, 100) and device.startswith("cuda")
