"""The reference of the orchestration benchmark: a bare Prefect flow of five empty tasks that
imports torch, as a user would write it by hand (`python benchmarks/bare_flow.py`).

Whatever `gdflow run` takes beyond this flow, in the same environment and the same mode, is
gdflow's own: its bookkeeping, checks, artifacts and imports (the training itself is a few
milliseconds of a default run).
"""

import torch
from prefect import flow, task


@task
def load_data() -> None:
    """Empty."""


@task
def initialize_weight() -> None:
    """Empty."""


@task
def train() -> None:
    """Empty."""


@task
def evaluate_prediction() -> None:
    """Empty."""


@task
def persist() -> None:
    """Empty."""


@flow
def bare_flow() -> str:
    """The five tasks of a run, in order, doing nothing."""
    load_data()
    initialize_weight()
    train()
    evaluate_prediction()
    persist()
    return torch.__version__


if __name__ == "__main__":
    bare_flow()
