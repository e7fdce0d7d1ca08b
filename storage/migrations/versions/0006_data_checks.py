"""Data checks: each run's profile of its features (mean, deviation, decile bins) and the
checks of its data against the champion's training data (schema changes, drift per feature).

Nullable columns: runs recorded before this revision have neither.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _columns() -> list[sa.Column]:
    """The new columns of `runs` (fresh objects on every call)."""
    return [
        sa.Column("data_profile", sa.JSON, nullable=True),
        sa.Column("data_checks", sa.JSON, nullable=True),
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
