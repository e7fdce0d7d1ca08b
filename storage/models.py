"""SQLAlchemy 2.0 typed models: one row per training run, one row per run and epoch, and the
model registry (versions, aliases and their history, prediction batches)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of gdflow's schema (a class, so flows pickle with cloudpickle)."""


class Sweep(Base):
    """A set of runs of one configuration with one setting varied (e.g. the learning rate)."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow_run_id: Mapped[Optional[str]] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    best_run_id: Mapped[Optional[int]] = mapped_column(Integer)


class Run(Base):
    """One training run: its configuration, lifecycle and summary."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow_run_id: Mapped[Optional[str]] = mapped_column(String(64), index=True)
    flow_run_name: Mapped[Optional[str]] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    data_source: Mapped[str] = mapped_column(String(500))
    device: Mapped[Optional[str]] = mapped_column(String(40))
    parameter_names: Mapped[list[str]] = mapped_column(JSON)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    final_loss: Mapped[Optional[float]] = mapped_column(Float)
    final_params: Mapped[Optional[dict[str, float]]] = mapped_column(JSON)
    stop_reason: Mapped[Optional[str]] = mapped_column(String(40))
    error: Mapped[Optional[str]] = mapped_column(Text)
    evaluation: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    best_epoch: Mapped[Optional[int]] = mapped_column(Integer)
    best_loss: Mapped[Optional[float]] = mapped_column(Float)
    max_stable_lr: Mapped[Optional[float]] = mapped_column(Float)
    condition_number: Mapped[Optional[float]] = mapped_column(Float)
    warnings: Mapped[Optional[list[str]]] = mapped_column(JSON)
    #: The model family (NULL: a linear regression recorded before families existed), its task
    #: and, for a classifier, its classes in order (a class index is a position in this list).
    model: Mapped[Optional[str]] = mapped_column(String(200))
    task: Mapped[Optional[str]] = mapped_column(String(20))
    classes: Mapped[Optional[list[Any]]] = mapped_column(JSON)
    sweep_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL"), index=True
    )
    #: The data's fingerprint (`sha256`, `bytes`, `rows`, `columns`: names and types), its
    #: hash on its own for lookups, the model name the run trains, and for a run skipped by
    #: --skip-unchanged the completed run whose data and configuration it matched.
    data_fingerprint: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    data_hash: Mapped[Optional[str]] = mapped_column(String(80), index=True)
    model_name: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    skipped_for: Mapped[Optional[int]] = mapped_column(Integer)
    #: The features' profile (mean, deviation, decile bins) and the checks of the data against
    #: the champion's training data: schema changes and drift per feature, and what they did.
    data_profile: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    data_checks: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    # The process that executes the run, so a run left `running` by a killed process can be
    # told apart from one still training (`pid_started` tells a reused pid from the original).
    host: Mapped[Optional[str]] = mapped_column(String(255))
    pid: Mapped[Optional[int]] = mapped_column(Integer)
    pid_started: Mapped[Optional[str]] = mapped_column(String(80))

    __table_args__ = (Index("ix_runs_started_at", "started_at"),)


class EpochMetric(Base):
    """Metrics of one epoch: loss before the update, parameters after it (as the seed prints)."""

    __tablename__ = "epoch_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[Optional[float]] = mapped_column(Float)
    params: Mapped[dict[str, float]] = mapped_column(JSON)
    grad_norm: Mapped[Optional[float]] = mapped_column(Float)
    lr: Mapped[Optional[float]] = mapped_column(Float)
    val_loss: Mapped[Optional[float]] = mapped_column(Float)
    #: A classifier's share of validation rows classified right after the epoch's update.
    val_accuracy: Mapped[Optional[float]] = mapped_column(Float)


class ModelVersion(Base):
    """One registered version of a named model: what it is, where its file lives, how it did.

    Versions of a name are numbered 1, 2, ... (`add_model_version` assigns the next one); the
    run that trained it may be deleted later (`run_id` becomes NULL), the version stays.
    """

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    flow_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: When the flow run that trained the version was scheduled to start (its nightly date).
    scheduled_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    #: The model family (`linear`, `logistic`, `softmax`, `mlp` or a user reference) and task.
    family: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(20))
    architecture: Mapped[dict[str, Any]] = mapped_column(JSON)
    feature_names: Mapped[list[str]] = mapped_column(JSON)
    target_name: Mapped[Optional[str]] = mapped_column(String(500))
    classes: Mapped[Optional[list[Any]]] = mapped_column(JSON)
    standardization: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    data_fingerprint: Mapped[Optional[str]] = mapped_column(String(100))
    #: {"train": {...}, "validation": {...}}
    metrics: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    #: The key of the model file inside its store, the store's URL (as shown), the file's size
    #: in bytes and checksum (e.g. `sha256:<hex>`).
    path: Mapped[str] = mapped_column(Text)
    store: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(80))
    #: How the champion decision went, written after the version is recorded.
    promotion: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)

    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)


class ModelAlias(Base):
    """An alias of a named model (e.g. `champion`) and the version it points at."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(String(50), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AliasChange(Base):
    """One move of an alias: from which version (None: it did not exist) to which, and why."""

    __tablename__ = "model_alias_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    alias: Mapped[str] = mapped_column(String(50))
    from_version: Mapped[Optional[int]] = mapped_column(Integer)
    to_version: Mapped[Optional[int]] = mapped_column(Integer)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: `first version`, `promoted`, `manual promote`, `rollback`.
    reason: Mapped[str] = mapped_column(String(40))
    detail: Mapped[Optional[str]] = mapped_column(Text)
    champion_loss: Mapped[Optional[float]] = mapped_column(Float)
    challenger_loss: Mapped[Optional[float]] = mapped_column(Float)
    run_id: Mapped[Optional[int]] = mapped_column(Integer)
    flow_run_id: Mapped[Optional[str]] = mapped_column(String(64))


class PredictionBatch(Base):
    """One batch prediction with a model version: its input, output and row counts."""

    __tablename__ = "prediction_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    flow_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    input_path: Mapped[str] = mapped_column(Text)
    input_fingerprint: Mapped[Optional[str]] = mapped_column(String(100))
    output_path: Mapped[Optional[str]] = mapped_column(Text)
    rows_in: Mapped[int] = mapped_column(Integer)
    rows_out: Mapped[int] = mapped_column(Integer)
    rows_skipped: Mapped[int] = mapped_column(Integer, default=0)
    #: `completed` or `failed`.
    status: Mapped[str] = mapped_column(String(20))
    error: Mapped[Optional[str]] = mapped_column(Text)
