"""After a run is recorded: delete its model name's old runs as `--prune-keep-last` and
`--prune-older-than-days` say (`storage.retention`), best effort, without VACUUM.

A failure is a warning in the run's log, never the run's failure. No VACUUM here: rewriting the
database after every run costs time proportional to its size and holds SQLite's write lock
meanwhile; the deleted rows' pages are reused by the next runs' rows (SQLite's free pages,
PostgreSQL's autovacuum), so the size stays flat. `gdflow db prune` vacuums.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Optional

from prefect import get_run_logger

from gdflow.config.train import TrainConfig
from gdflow.runs.recording import RunRef, open_database
from gdflow.storage.retention import PruneResult, prune


def prune_after_run(
    config: TrainConfig, run: RunRef, *, in_sweep: bool = False
) -> Optional[PruneResult]:
    """Prune the runs of `config.model_name` if the config asks for it (not for a sweep's
    runs, which would prune each other); log what went, or why nothing could."""
    keep_last, days = config.prune_keep_last, config.prune_older_than_days
    if (keep_last is None and days is None) or in_sweep:
        return None
    logger = get_run_logger()
    cutoff = datetime.now(UTC) - timedelta(days=days) if days is not None else None
    try:
        result = prune(
            open_database(run.database_url),
            keep_last=keep_last,
            older_than=cutoff,
            model_name=config.model_name,
            vacuum=False,
        )
    except Exception as exc:  # noqa: BLE001 - retention is housekeeping, never the run's failure
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        logger.warning("Could not prune the old runs of %s: %s", config.model_name, reason)
        return None
    if result.runs:
        logger.info(
            "Pruned %d old run(s) of %s (%d epoch rows); %d kept, %d protected",
            result.runs,
            config.model_name,
            result.epoch_rows,
            result.runs_kept,
            len(result.protected),
        )
    return result
