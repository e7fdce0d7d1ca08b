"""gdflow storage: runs and per-epoch metrics in any SQLAlchemy database (SQLite by default).

This package knows nothing of Prefect or torch: it stores plain Python values.
"""

from storage.database import DatabaseError, default_database_url, make_engine, mask_url
from storage.models import Base, EpochMetric, Run
from storage.repository import (
    MetricRow,
    RunStatus,
    append_metrics,
    create_run,
    find_run_id,
    finish_run,
    get_metrics,
    get_metrics_sample,
    get_run,
    latest_run_id,
    list_runs,
    update_run,
)

__all__ = [
    "Base",
    "DatabaseError",
    "EpochMetric",
    "MetricRow",
    "Run",
    "RunStatus",
    "append_metrics",
    "create_run",
    "default_database_url",
    "find_run_id",
    "finish_run",
    "get_metrics",
    "get_metrics_sample",
    "get_run",
    "latest_run_id",
    "list_runs",
    "make_engine",
    "mask_url",
    "update_run",
]
