"""Model registry: model versions, their aliases and the aliases' history, prediction batches.

New tables only: runs recorded before this revision are untouched, and the registry starts
empty. A table already there (a database whose tables were created from the models) is kept.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _tables() -> dict[str, list[sa.Column | sa.Constraint]]:
    """The new tables in creation order (fresh Column objects on every call)."""
    tz = sa.DateTime(timezone=True)
    return {
        "model_versions": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("run_id", sa.Integer, nullable=True),
            sa.Column("flow_run_id", sa.String(64), nullable=True),
            sa.Column("created_at", tz, nullable=False),
            sa.Column("scheduled_at", tz, nullable=True),
            sa.Column("family", sa.String(200), nullable=False),
            sa.Column("task", sa.String(20), nullable=False),
            sa.Column("architecture", sa.JSON, nullable=False),
            sa.Column("feature_names", sa.JSON, nullable=False),
            sa.Column("target_name", sa.String(500), nullable=True),
            sa.Column("classes", sa.JSON, nullable=True),
            sa.Column("standardization", sa.JSON, nullable=True),
            sa.Column("data_fingerprint", sa.String(100), nullable=True),
            sa.Column("metrics", sa.JSON, nullable=True),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("store", sa.Text, nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("checksum", sa.String(80), nullable=False),
            sa.Column("promotion", sa.JSON, nullable=True),
            sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
            sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
        ],
        "model_aliases": [
            sa.Column("name", sa.String(200), primary_key=True),
            sa.Column("alias", sa.String(50), primary_key=True),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("updated_at", tz, nullable=False),
        ],
        "model_alias_changes": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("alias", sa.String(50), nullable=False),
            sa.Column("from_version", sa.Integer, nullable=True),
            sa.Column("to_version", sa.Integer, nullable=True),
            sa.Column("changed_at", tz, nullable=False),
            sa.Column("reason", sa.String(40), nullable=False),
            sa.Column("detail", sa.Text, nullable=True),
            sa.Column("champion_loss", sa.Float, nullable=True),
            sa.Column("challenger_loss", sa.Float, nullable=True),
            sa.Column("run_id", sa.Integer, nullable=True),
            sa.Column("flow_run_id", sa.String(64), nullable=True),
        ],
        "prediction_batches": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("created_at", tz, nullable=False),
            sa.Column("flow_run_id", sa.String(64), nullable=True),
            sa.Column("input_path", sa.Text, nullable=False),
            sa.Column("input_fingerprint", sa.String(100), nullable=True),
            sa.Column("output_path", sa.Text, nullable=True),
            sa.Column("rows_in", sa.Integer, nullable=False),
            sa.Column("rows_out", sa.Integer, nullable=False),
            sa.Column("rows_skipped", sa.Integer, nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("error", sa.Text, nullable=True),
        ],
    }


_INDEXES = [
    ("ix_model_versions_name", "model_versions", ["name"]),
    ("ix_model_alias_changes_name", "model_alias_changes", ["name"]),
    ("ix_prediction_batches_name", "prediction_batches", ["name"]),
]


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    for name, items in _tables().items():
        if name not in present:
            op.create_table(name, *items)
    for index, table, columns in _INDEXES:
        existing = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}
        if index not in existing:
            op.create_index(index, table, columns)


def downgrade() -> None:
    for index, table, _columns in reversed(_INDEXES):
        op.drop_index(index, table_name=table)
    for name in reversed(list(_tables())):
        op.drop_table(name)
