"""Data lineage: each run's data fingerprint (content hash, size, rows, columns and types), the
model name it trains, and for a run skipped by --skip-unchanged the run it matched.

Nullable columns: runs recorded before this revision have no fingerprint.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _columns() -> list[sa.Column]:
    """The new columns of `runs` (fresh objects on every call)."""
    return [
        sa.Column("data_fingerprint", sa.JSON, nullable=True),
        sa.Column("data_hash", sa.String(80), nullable=True),
        sa.Column("model_name", sa.String(200), nullable=True),
        sa.Column("skipped_for", sa.Integer, nullable=True),
    ]


_INDEXES = (
    ("ix_runs_data_hash", ["data_hash"]),
    ("ix_runs_model_name", ["model_name"]),
)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = {c["name"] for c in inspector.get_columns("runs")}
    for column in _columns():
        if column.name not in present:
            op.add_column("runs", column)
    indexes = {i["name"] for i in inspector.get_indexes("runs")}
    for name, columns in _INDEXES:
        if name not in indexes:
            op.create_index(name, "runs", columns)


def downgrade() -> None:
    for name, _columns_of in _INDEXES:
        op.drop_index(name, table_name="runs")
    with op.batch_alter_table("runs") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
