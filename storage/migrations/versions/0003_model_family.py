"""Model family: the model and task of a run, a classifier's classes, and per-epoch validation
accuracy.

Nullable: runs recorded before this revision are linear regressions (`model` NULL reads as
`linear`), with no classes and no accuracy.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _columns() -> dict[str, list[sa.Column]]:
    """The new columns by table (fresh objects on every call)."""
    return {
        "runs": [
            sa.Column("model", sa.String(200), nullable=True),
            sa.Column("task", sa.String(20), nullable=True),
            sa.Column("classes", sa.JSON, nullable=True),
        ],
        "epoch_metrics": [sa.Column("val_accuracy", sa.Float, nullable=True)],
    }


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, columns in _columns().items():
        present = {c["name"] for c in inspector.get_columns(table)}
        for column in columns:
            if column.name not in present:
                op.add_column(table, column)


def downgrade() -> None:
    for table, columns in _columns().items():
        with op.batch_alter_table(table) as batch:
            for column in reversed(columns):
                batch.drop_column(column.name)
