"""The results-database schema (SQLAlchemy 2 declarative, typed).

Every table name starts with ``ebt_`` and the Alembic version table is ``ebt_scale_alembic_version``, so
the schema can share one PostgreSQL database with Optuna (``studies``, ``trials``...) or MLflow (``runs``,
``metrics``... and both use ``alembic_version``). Constraint and index names follow ``NAMING_CONVENTION``
so migrations can refer to them by name on every backend.

Tables::

    ebt_sweeps        one row per sweep (unique name, axis, spec JSON, code version)
    ebt_runs          one row per run (config_hash UNIQUE, status, final metrics, fit eligibility, source);
                      ``sweep_id`` is the sweep that first planned or imported it (its owner), not its membership
    ebt_sweep_runs    membership: the runs of each sweep, with that sweep's axis and x (sweep_id, run_id)
                      (revision 0005): a run trained once is a point of every sweep that links it
    ebt_run_params    parameter counts per group   (run_id, name)        -> count
    ebt_run_flops     FLOPs per token per convention (run_id, convention) -> flops_per_token
    ebt_run_summary   extra final metrics, e.g. imported CSV columns (run_id, name) -> value, kind
    ebt_metrics       metric series                (run_id, name, step)   -> value, kind
    ebt_fits          one stored fit (sweep, axis, family, method, params JSON, fingerprint)
    ebt_fit_runs      the exact runs a fit used     (fit_id, run_id)
    ebt_cancel_requests  a pending `ebt-scale cancel` per sweep  (sweep_id) -> requested_at (revision 0003)
    ebt_calibrations  measured training throughput  (device, family, shape, precision, recipe, threads)
                      -> seconds and FLOPs per step (revision 0004, ``ebt-scale calibrate``)

Non-finite metric values are stored explicitly: ``kind`` is ``finite``/``nan``/``inf``/``-inf`` and
``value`` is NULL unless the kind is ``finite`` (a CHECK constraint enforces it). Timestamps are naive UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ebt_scaling.records import RUN_STATUSES

#: The Alembic revision this code expects (``alembic/versions``); a test checks it equals the script head.
SCHEMA_REVISION = "0005"
#: Every revision this code knows, oldest first; a database at an earlier one needs ``ebt-scale db upgrade``.
KNOWN_REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005")
VERSION_TABLE = "ebt_scale_alembic_version"
TABLE_PREFIX = "ebt_"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VALUE_KINDS = ("finite", "nan", "inf", "-inf")
RUN_SOURCES = ("trained", "imported")
DEVICE_KINDS = ("cpu", "cuda")


def _in(column: str, values: tuple[str, ...]) -> str:
    # An OR chain, not "IN (...)": SQLite evaluates a constant IN list in a CHECK through an ephemeral
    # table per row, which halved metric ingest speed (measured: ~150k vs ~250k rows/s).
    return " OR ".join(f"{column} = '{v}'" for v in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=False)}


class Sweep(Base):
    __tablename__ = "ebt_sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    axis: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    code_version: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]


class Run(Base):
    __tablename__ = "ebt_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        CheckConstraint(_in("source", RUN_SOURCES), name="source"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_ebt_runs_sweep_id_status", "sweep_id", "status"),
        Index("ix_ebt_runs_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("ebt_sweeps.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(String(32))
    axis: Mapped[str] = mapped_column(String(32))
    x: Mapped[float] = mapped_column(Double)
    seed: Mapped[int] = mapped_column(Integer)
    config_hash: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    fit_eligible: Mapped[bool] = mapped_column(Boolean)
    # Final metrics: finite values only (NULL otherwise; the series in ebt_metrics keeps NaN/inf).
    final_train_loss: Mapped[float | None] = mapped_column(Double)
    final_val_loss: Mapped[float | None] = mapped_column(Double)
    final_val_ppl: Mapped[float | None] = mapped_column(Double)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(255))
    checkpoint_dir: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]


class SweepRun(Base):
    """Membership: run ``run_id`` is a point of sweep ``sweep_id`` at that sweep's ``axis`` and ``x`` (a run of
    the params axis is also a point of the flops axis, at another x). Every reader of a sweep's runs goes
    through this table; ``ebt_runs.sweep_id`` only names the run's owner."""

    __tablename__ = "ebt_sweep_runs"

    sweep_id: Mapped[int] = mapped_column(ForeignKey("ebt_sweeps.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ebt_runs.id", ondelete="CASCADE"), primary_key=True,
                                        index=True)
    axis: Mapped[str] = mapped_column(String(32))
    x: Mapped[float] = mapped_column(Double)


class RunParam(Base):
    """Parameter count of one named group (``total``, ``non_embedding``, ...) of one run."""

    __tablename__ = "ebt_run_params"

    run_id: Mapped[int] = mapped_column(ForeignKey("ebt_runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class RunFlops(Base):
    """FLOPs per token of one run under one named convention (``paper``, ``exact``, ...)."""

    __tablename__ = "ebt_run_flops"

    run_id: Mapped[int] = mapped_column(ForeignKey("ebt_runs.id", ondelete="CASCADE"), primary_key=True)
    convention: Mapped[str] = mapped_column(String(64), primary_key=True)
    flops_per_token: Mapped[float] = mapped_column(Double)


class RunSummary(Base):
    """A final value of an extra metric of a run (imported CSV columns, summaries of evaluations)."""

    __tablename__ = "ebt_run_summary"
    __table_args__ = (
        CheckConstraint(_in("kind", VALUE_KINDS), name="kind"),
        CheckConstraint("(kind = 'finite') = (value IS NOT NULL)", name="value_kind"),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("ebt_runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float | None] = mapped_column(Double)
    kind: Mapped[str] = mapped_column(String(8))


class Metric(Base):
    """One point of one metric series; ``final`` means the highest step (MLflow's rule)."""

    __tablename__ = "ebt_metrics"
    __table_args__ = (
        CheckConstraint(_in("kind", VALUE_KINDS), name="kind"),
        CheckConstraint("(kind = 'finite') = (value IS NOT NULL)", name="value_kind"),
        # SQLite: the primary key is the table (one B-tree instead of rowid table + PK index): ~1.5x faster
        # batched inserts (measured in benchmarks/db_ingest.py).
        {"sqlite_with_rowid": False},
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("ebt_runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float | None] = mapped_column(Double)
    kind: Mapped[str] = mapped_column(String(8))


class Fit(Base):
    __tablename__ = "ebt_fits"
    __table_args__ = (
        UniqueConstraint("sweep_id", "axis", "family", "method", "fingerprint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("ebt_sweeps.id", ondelete="CASCADE"))
    axis: Mapped[str] = mapped_column(String(32))
    family: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class FitRun(Base):
    """Association: the exact runs one fit used."""

    __tablename__ = "ebt_fit_runs"

    fit_id: Mapped[int] = mapped_column(ForeignKey("ebt_fits.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ebt_runs.id", ondelete="CASCADE"), primary_key=True,
                                        index=True)


class CancelRequest(Base):
    """A pending ``ebt-scale cancel`` of a sweep: the live driver polls it and stops; the next driver of the
    sweep deletes it."""

    __tablename__ = "ebt_cancel_requests"

    sweep_id: Mapped[int] = mapped_column(ForeignKey("ebt_sweeps.id", ondelete="CASCADE"), primary_key=True)
    requested_at: Mapped[datetime]


class Calibration(Base):
    """A measured training throughput of one (device, family, shape, precision, recipe, threads): the latest
    ``ebt-scale calibrate`` of that key replaces the earlier one. ``recipe`` is '' for a Transformer++ (a NULL
    would not take part in the unique key)."""

    __tablename__ = "ebt_calibrations"
    __table_args__ = (
        # Named by hand: the convention's column list would exceed PostgreSQL's 63-character identifiers.
        UniqueConstraint("device_name", "family", "shape_key", "precision", "recipe", "threads",
                         name="uq_ebt_calibrations_key"),
        CheckConstraint(_in("device_kind", DEVICE_KINDS), name="device_kind"),
        CheckConstraint("seconds_per_step > 0 AND flops_per_step > 0", name="positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_kind: Mapped[str] = mapped_column(String(8))
    device_name: Mapped[str] = mapped_column(String(255))
    family: Mapped[str] = mapped_column(String(32))
    shape_key: Mapped[str] = mapped_column(String(200))
    precision: Mapped[str] = mapped_column(String(8))
    recipe: Mapped[str] = mapped_column(String(32))
    threads: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    flops_per_step: Mapped[float] = mapped_column(Double)
    seconds_per_step: Mapped[float] = mapped_column(Double)
    steps: Mapped[int] = mapped_column(Integer)
    warmup: Mapped[int] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    torch_version: Mapped[str | None] = mapped_column(String(64))
    measured_at: Mapped[datetime]


#: Tables created by revision 0001 (the rest came with 0002 and 0003).
TABLES_0001 = ("ebt_sweeps", "ebt_runs", "ebt_run_params", "ebt_run_flops", "ebt_run_summary", "ebt_metrics")
