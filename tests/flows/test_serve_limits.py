"""`gdflow serve`'s runner starts at most as many flow runs as its deployments may run together:
`prefect.serve` gives it no limit otherwise, and with a queue of scheduled runs it proposed every
queued run each second, all but one refused (the soak counted a dozen a second)."""

from __future__ import annotations

from gdflow.config.train import TrainConfig
from gdflow.flows.deployments import build_deployments, runner_limit


def _deployments(*, allow_overlap: bool) -> list:  # type: ignore[type-arg]
    return build_deployments(
        TrainConfig(), cron="0 2 * * *", timezone="UTC", interval=None, allow_overlap=allow_overlap
    )


def test_one_run_at_a_time_per_deployment_is_two_for_the_runner() -> None:
    deployments = _deployments(allow_overlap=False)
    assert [d.concurrency_limit for d in deployments] == [1, 1]
    assert runner_limit(deployments) == 2


def test_overlapping_runs_leave_the_runner_without_a_limit() -> None:
    assert runner_limit(_deployments(allow_overlap=True)) is None
