"""Run owner: the host, pid and pid start time of the process executing a run.

They let gdflow tell a run left `running` by a killed process from one still training, and mark
the former `crashed`. Nullable: runs recorded before this revision have no owner and are never
reconciled.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _columns() -> list[sa.Column]:
    """The new columns of `runs` (fresh objects on every call)."""
    return [
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("pid_started", sa.String(80), nullable=True),
    ]


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    for column in _columns():
        if column.name not in present:
            op.add_column("runs", column)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
