"""Sweeps on Dask worker processes: a local cluster, a scheduler by address, and their errors."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gdflow.config.sweep import SweepConfig
from gdflow.config.train import TrainConfig
from gdflow.flows.runners import is_loopback
from gdflow.flows.sweep import sweep_flow
from gdflow.storage import EpochMetric, get_sweep, make_engine, sweep_runs
from tests.processes import free_port, run_cli

pytestmark = pytest.mark.usefixtures("prefect_api_url")

#: Four learning rates: two complete, the best is 0.01, and 0.1 and 1 diverge on the toy data.
LRS = [0.001, 0.01, 0.1, 1.0]


def _check_recorded(database_url: str, sweep_id: int) -> dict[float, int]:
    """Every run of the sweep recorded once, each with all its epoch rows; lr -> run id."""
    engine = make_engine(database_url)
    with Session(engine) as session:
        row = get_sweep(session, sweep_id=sweep_id)
        runs = sweep_runs(session, sweep_id=sweep_id)
        by_lr = {run.config["lr"]: run for run in runs}
        assert row is not None and row.status == "completed"
        assert len(runs) == len(LRS) and sorted(by_lr) == LRS
        assert len({run.flow_run_id for run in runs}) == len(LRS)
        assert [by_lr[lr].status for lr in LRS] == [
            "completed",
            "completed",
            "diverged",
            "diverged",
        ]
        assert by_lr[0.001].epochs_done == by_lr[0.01].epochs_done == 100
        for run in runs:
            count = session.scalar(
                select(func.count()).select_from(EpochMetric).where(EpochMetric.run_id == run.id)
            )
            assert run.epochs_done >= 1 and count == run.epochs_done, (run.id, count)
        assert row.best_run_id == by_lr[0.01].id
        ids = {lr: run.id for lr, run in by_lr.items()}
    engine.dispose()
    return ids


def _worker_pids(outcomes: list[dict]) -> set[int]:
    """The process ids the sweep reports each run trained in ('host pid N')."""
    return {int(str(o["worker"]).rsplit(" ", 1)[1]) for o in outcomes}


def _failure(sweep: SweepConfig) -> str:
    """Run a sweep that must fail; return its one-line error."""
    state = sweep_flow(sweep=sweep, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "\n" not in message
    return message


@pytest.mark.extended  # make test-extended: minutes of CPU on two cores
@pytest.mark.heavy
def test_a_dask_sweep_trains_on_several_local_worker_processes(database_url: str) -> None:
    base = TrainConfig(database_url=database_url, log_every=0)
    sweep = SweepConfig(base=base, lrs=LRS, runner="dask", max_concurrency=2)
    state = sweep_flow(sweep=sweep, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()

    ids = _check_recorded(database_url, summary["sweep_id"])
    assert summary["best_run_id"] == ids[0.01] and summary["best_lr"] == 0.01
    pids = _worker_pids(summary["outcomes"])
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A running Dask scheduler with two worker processes whose default database is their own."""
    from distributed import Client, LocalCluster

    elsewhere = tmp_path_factory.mktemp("dask-workers") / "workers.db"
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"GDFLOW_DATABASE_URL": f"sqlite:///{elsewhere}"},
    )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@pytest.mark.extended  # CI: training on a running scheduler (test_cluster_flow.py), test_sweep.py
def test_gdflow_sweep_on_a_running_dask_scheduler(
    dask_cluster, prefect_api_url: str, database_url: str, tmp_path: Path
) -> None:
    address = dask_cluster.scheduler.address
    done = run_cli(
        ["sweep", "--dask-address", address, "--lrs", *map(str, LRS), "--log-every", "0"]
        + ["--database-url", database_url],
        api_url=prefect_api_url,
        database_url=database_url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert f"on the Dask cluster at {address}" in output
    sweep_id = int(re.search(r"^sweep (\d+): 4 runs", done.stdout, re.M).group(1))
    ids = _check_recorded(database_url, sweep_id)
    assert done.stdout.strip().splitlines()[-1].startswith(f"best: run {ids[0.01]} (lr 0.01")

    # The runs trained in the cluster's worker processes: both of them, and nowhere else.
    reported = {int(pid) for pid in re.findall(r"lr \S+ \w+ on \S+ pid (\d+)", output)}
    workers = set(dask_cluster.run(os.getpid).values())
    assert len(workers) == 2 and reported == workers


def test_workers_that_would_record_elsewhere_refuse_to_train(
    dask_cluster, database_url: str
) -> None:
    # No database in the config: each worker would use its own GDFLOW_DATABASE_URL.
    base = TrainConfig(log_every=0)
    sweep = SweepConfig(base=base, lrs=[0.01, 0.1], dask_address=dask_cluster.scheduler.address)
    message = _failure(sweep)
    assert re.fullmatch(
        r"sweep \d+: no run completed \(none recorded\); first error: the worker on \S+ pid \d+ "
        r"records to sqlite:///\S+/workers\.db, not to the sweep's database "
        + re.escape(database_url)
        + r": set GDFLOW_DATABASE_URL to the sweep's database on every worker",
        message,
    ), message
    for path in dask_cluster.run(lambda: os.environ["GDFLOW_DATABASE_URL"]).values():
        assert not Path(path.removeprefix("sqlite:///")).exists()  # nothing written there


def test_an_unreachable_scheduler_fails_the_sweep_in_one_line(
    prefect_api_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a process of its own: in this one, the Dask client of the dask_cluster fixture would
    # be the default client, and the sweep ran on that cluster instead of failing.
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "2s")
    done = run_cli(
        ["sweep", "--dask-address", address, "--lrs", "0.01", "--log-every", "0"],
        api_url=prefect_api_url,
        database_url=database_url,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gdflow: error: cannot reach the Dask scheduler at {address}: ")
    assert last.endswith("or fix --dask-address")
    engine = make_engine(database_url)
    with Session(engine) as session:
        row = get_sweep(session, sweep_id=1)
        assert row is not None and row.status == "failed"
        assert sweep_runs(session, sweep_id=1) == []
    engine.dispose()


def test_remote_workers_need_a_prefect_api_they_can_reach(database_url: str) -> None:
    base = TrainConfig(database_url=database_url, log_every=0)
    # The harness's API is on loopback; a scheduler on another host could not report to it.
    # (".invalid" never resolves: the check comes first, nothing is contacted.)
    sweep = SweepConfig(base=base, lrs=[0.01], dask_address="tcp://scheduler.invalid:8786")
    message = _failure(sweep)
    assert re.fullmatch(
        r"the Dask workers of tcp://scheduler\.invalid:8786 cannot reach the Prefect API at "
        r"http://127\.0\.0\.1:\d+/api/? \(loopback only\): run a Prefect server they can reach "
        r"and set PREFECT_API_URL to it",
        message,
    ), message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.0.1", True), ("::1", True), ("LocalHost", True)]
    + [("10.0.0.5", False), ("gpu-box", False), ("", False), (None, False)],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback
