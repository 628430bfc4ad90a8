"""The catalog's tables, declared once; the migrations under `migrations/` create them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    """A training job and its place in the queue; the version is the model's version."""

    __tablename__ = "jobs"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed | cancelled
    request: Mapped[dict[str, Any]]
    labels: Mapped[dict[str, Any]]  # also in `labels`, for filtering; immutable after submit
    layers: Mapped[list[Any]]
    progress: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None]
    history: Mapped[list[Any]]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)  # attempts started; fences every write of a worker
    lost: Mapped[int] = mapped_column(default=0)  # attempts whose worker was lost (SCV_MAX_ATTEMPTS)
    worker: Mapped[dict[str, Any] | None]
    resumed_from: Mapped[dict[str, Any] | None]
    stopped_early: Mapped[dict[str, Any] | None]  # {epoch, reason} when early stopping ended the job
    lease_until: Mapped[float | None] = mapped_column(Float)  # database clock, seconds since the epoch
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    revision: Mapped[int] = mapped_column(default=0)  # +1 on every change: the SSE event id
    created_at: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[str | None] = mapped_column(String(32))
    finished_at: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        Index("jobs_by_created", "created_at", "version"),
        Index("jobs_by_status", "status", "created_at", "version"),  # pages by status, and the queue (FIFO)
        Index("jobs_by_dataset", "dataset", "created_at", "version"),
        Index("jobs_by_lease", "status", "lease_until"),
    )


class CheckpointRow(Base):
    """The stored checkpoints of a job: the latest complete one and the one before (used when the latest is bad).

    A row outlives its job's end until housekeeping has removed the objects it names."""

    __tablename__ = "checkpoints"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    latest: Mapped[dict[str, Any]]  # {key, sha256, size, epoch, step, attempt}
    previous: Mapped[dict[str, Any] | None]


class Label(Base):
    """One `key: value` label of a version (its job and its model), for `label=key:value` filters."""

    __tablename__ = "labels"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))

    __table_args__ = (Index("labels_by_pair", "key", "value", "version"),)


class Model(Base):
    """A stored model: listing fields and the whole metadata.json; present only once its bytes are stored."""

    __tablename__ = "models"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    epochs: Mapped[int | None]
    num_parameters: Mapped[int | None] = mapped_column(BigInteger)
    labels: Mapped[dict[str, Any]]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)

    __table_args__ = (
        Index("models_by_created", "created_at", "version"),
        Index("models_by_dataset", "dataset", "created_at", "version"),
        Index("models_by_accuracy", "test_accuracy", "version"),
        Index("models_by_dataset_accuracy", "dataset", "test_accuracy", "version"),
    )


class Alias(Base):
    """A name for a model (`production`, `mnist-best`); an aliased model never expires and cannot be deleted."""

    __tablename__ = "aliases"

    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), index=True)
    updated_at: Mapped[str] = mapped_column(String(32))


class Deletion(Base):
    """A delete in progress: its rows are gone, its objects are being removed; finished later if interrupted."""

    __tablename__ = "deletions"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    requested_at: Mapped[str] = mapped_column(String(32))


class EndedSession(Base):
    """A dashboard session signed out before its cookie expired: its cookie is refused until then."""

    __tablename__ = "ended_sessions"

    session: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the session's CSRF token
    until: Mapped[float] = mapped_column(Float)  # when its cookie expires anyway (seconds since the epoch)


# -- sweeps (app/sweeps/catalog.py writes these) -------------------------------------------------------------


class Sweep(Base):
    """A sweep: its request as resolved at submission (base, space, strategy, seeds, metric, early_stop, labels, the
    random draw's seed); its status follows from its trials' jobs, but for a cancel, which is recorded here."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[str] = mapped_column(String(32))
    cancelled_at: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (Index("sweeps_by_created", "created_at", "id"),)


class SweepTrial(Base):
    """One trial of a sweep: a configuration and seed, trained as the job `version`."""

    __tablename__ = "sweep_trials"

    sweep: Mapped[str] = mapped_column(String(64), primary_key=True)
    trial: Mapped[int] = mapped_column(primary_key=True)  # 1, 2, …
    version: Mapped[str] = mapped_column(String(128), unique=True)
    config: Mapped[dict[str, Any]]
    seed: Mapped[int] = mapped_column(BigInteger)


class SweepDecision(Base):
    """An ASHA decision: a trial reached a rung with a metric and went on or stopped; `id` orders them as made."""

    __tablename__ = "sweep_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep: Mapped[str] = mapped_column(String(64))
    rung: Mapped[int]  # k: the rung at min_epochs·η^k
    trial: Mapped[int]
    epoch: Mapped[int]
    metric: Mapped[float | None] = mapped_column(Float)  # null when the metric was NaN
    decision: Mapped[str] = mapped_column(String(8))  # continue | stop

    __table_args__ = (UniqueConstraint("sweep", "rung", "trial", name="sweep_decisions_once"),)
