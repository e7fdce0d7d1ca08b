"""Baseline: the schema of gdflow's first release (runs, epoch_metrics, sweeps).

Databases made before gdflow used Alembic have these tables but no `alembic_version`. On them this
revision adopts what is there: it adds the nullable columns that early development versions lacked
and keeps every row; anything it cannot add safely is reported, never guessed.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _tables() -> dict[str, list[sa.Column | sa.Constraint]]:
    """The baseline tables in creation order (fresh Column objects on every call)."""
    tz = sa.DateTime(timezone=True)
    return {
        "sweeps": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("flow_run_id", sa.String(64), nullable=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("started_at", tz, nullable=False),
            sa.Column("finished_at", tz, nullable=True),
            sa.Column("config", sa.JSON, nullable=False),
            sa.Column("best_run_id", sa.Integer, nullable=True),
        ],
        "runs": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("flow_run_id", sa.String(64), nullable=True),
            sa.Column("flow_run_name", sa.String(200), nullable=True),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("started_at", tz, nullable=False),
            sa.Column("finished_at", tz, nullable=True),
            sa.Column("data_source", sa.String(500), nullable=False),
            sa.Column("device", sa.String(40), nullable=True),
            sa.Column("parameter_names", sa.JSON, nullable=False),
            sa.Column("config", sa.JSON, nullable=False),
            sa.Column("epochs_done", sa.Integer, nullable=False),
            sa.Column("final_loss", sa.Float, nullable=True),
            sa.Column("final_params", sa.JSON, nullable=True),
            sa.Column("stop_reason", sa.String(40), nullable=True),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("evaluation", sa.JSON, nullable=True),
            sa.Column("best_epoch", sa.Integer, nullable=True),
            sa.Column("best_loss", sa.Float, nullable=True),
            sa.Column("max_stable_lr", sa.Float, nullable=True),
            sa.Column("condition_number", sa.Float, nullable=True),
            sa.Column("warnings", sa.JSON, nullable=True),
            sa.Column("sweep_id", sa.Integer, nullable=True),
            sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], ondelete="SET NULL"),
        ],
        "epoch_metrics": [
            sa.Column("run_id", sa.Integer, primary_key=True),
            sa.Column("epoch", sa.Integer, primary_key=True),
            sa.Column("loss", sa.Float, nullable=True),
            sa.Column("params", sa.JSON, nullable=False),
            sa.Column("grad_norm", sa.Float, nullable=True),
            sa.Column("lr", sa.Float, nullable=True),
            sa.Column("val_loss", sa.Float, nullable=True),
            sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        ],
    }


_INDEXES = [
    ("ix_sweeps_flow_run_id", "sweeps", ["flow_run_id"]),
    ("ix_runs_flow_run_id", "runs", ["flow_run_id"]),
    ("ix_runs_status", "runs", ["status"]),
    ("ix_runs_sweep_id", "runs", ["sweep_id"]),
    ("ix_runs_started_at", "runs", ["started_at"]),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names())
    for name, items in _tables().items():
        if name not in present:
            op.create_table(name, *items)
        else:
            _adopt(name, items, {c["name"] for c in inspector.get_columns(name)})
    for index, table, columns in _INDEXES:
        existing = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}
        if index not in existing:
            op.create_index(index, table, columns)


def _adopt(table: str, items: list[sa.Column | sa.Constraint], present: set[str]) -> None:
    """Add the baseline's nullable columns missing from a table made before Alembic."""
    for column in items:
        if not isinstance(column, sa.Column) or column.name in present:
            continue
        if not column.nullable or column.primary_key:
            raise RuntimeError(
                f"table {table} lacks column {column.name} and it cannot be added to existing "
                "rows; this database was made by an incompatible gdflow, use a new --database-url"
            )
        op.add_column(table, column)


def downgrade() -> None:
    for _index, _table, _columns in reversed(_INDEXES):
        op.drop_index(_index, table_name=_table)
    for name in reversed(list(_tables())):
        op.drop_table(name)
