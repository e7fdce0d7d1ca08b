"""gdflow storage: runs and per-epoch metrics in any SQLAlchemy database (SQLite by default).

This package knows nothing of Prefect or torch: it stores plain Python values.
"""

from gdflow.storage.database import (
    DatabaseError,
    dispose_engines,
    engine_for,
    make_engine,
    mask_url,
)
from gdflow.storage.models import Base, EpochMetric, Run, Sweep
from gdflow.storage.repository import (
    MetricBatch,
    MetricRow,
    RunOutcome,
    RunStatus,
    append_metric_batch,
    append_metrics,
    create_run,
    create_sweep,
    find_run_id,
    finish_run,
    finish_sweep,
    get_metrics,
    get_metrics_sample,
    get_run,
    get_sweep,
    latest_run_id,
    list_runs,
    restart_run,
    running_runs,
    sweep_runs,
    update_run,
)
from gdflow.storage.retry import is_transient, retry_transient

__all__ = [
    "Base",
    "DatabaseError",
    "EpochMetric",
    "MetricBatch",
    "MetricRow",
    "Run",
    "RunOutcome",
    "RunStatus",
    "Sweep",
    "append_metric_batch",
    "append_metrics",
    "create_run",
    "create_sweep",
    "dispose_engines",
    "engine_for",
    "find_run_id",
    "finish_run",
    "finish_sweep",
    "get_metrics",
    "get_metrics_sample",
    "get_run",
    "get_sweep",
    "is_transient",
    "latest_run_id",
    "list_runs",
    "restart_run",
    "retry_transient",
    "running_runs",
    "sweep_runs",
    "make_engine",
    "mask_url",
    "update_run",
]
