"""The tables of the tuning database (SQLAlchemy 2, typed), portable to SQLite and PostgreSQL.

Optuna's RDB storage lives in the same database and owns `studies`, `trials`, `trial_*`,
`version_info` and `alembic_version`; ours never use those names.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from db.clock import utcnow

# the tables of Optuna's RDB storage that must exist before a worker opens it (search/studies.py)
OPTUNA_TABLES = ("studies", "trials", "trial_params", "trial_values", "trial_heartbeats", "version_info",
                 "alembic_version")


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime on every backend. SQLite keeps no offset: without this a row read
    back there is naive and comparing it with `utcnow()` raises, while PostgreSQL's is aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given for a UTC column; use db.clock.utcnow()")
        # SQLite stores the wall-clock fields as text, so they must already be UTC
        return value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


class DeviceClass(Base):
    __tablename__ = "device_classes"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    vendor: Mapped[str] = mapped_column(String(16))
    arch: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(120))
    compute_units: Mapped[int] = mapped_column(Integer)
    memory_gb: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # what torch.cuda.get_device_name() reported on the class's workers, first seen first (names
    # drift between drivers); vLLM and SGLang name their config files by it (revision 0004)
    device_names: Mapped[list[str] | None] = mapped_column(JSON, default=None)


class StackFingerprint(Base):
    __tablename__ = "stack_fingerprints"
    id: Mapped[int] = mapped_column(primary_key=True)
    hash: Mapped[str] = mapped_column(String(16), unique=True)
    driver: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(64))
    triton: Mapped[str] = mapped_column(String(64))
    torch: Mapped[str] = mapped_column(String(64))
    fields: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    hostname: Mapped[str | None] = mapped_column(String(200))
    pid: Mapped[int | None]
    device: Mapped[str | None] = mapped_column(String(32))
    device_class_id: Mapped[int | None] = mapped_column(ForeignKey("device_classes.id"))
    fingerprint_id: Mapped[int | None] = mapped_column(ForeignKey("stack_fingerprints.id"))
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    # the job key whose batch (or finalization) the worker runs now, rewritten with every heartbeat:
    # a key held by a live worker is never re-sent by the janitor, however slow its trial
    holding_key_id: Mapped[int | None]


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # tune | retune
    origin: Mapped[str] = mapped_column(String(16))  # local | queued
    kernel: Mapped[str] = mapped_column(String(100))
    kernel_version: Mapped[str] = mapped_column(String(32))
    device_class_id: Mapped[int | None] = mapped_column(ForeignKey("device_classes.id"))
    device_selector: Mapped[str | None] = mapped_column(String(80))  # alias or slug a queued job targets
    state: Mapped[str] = mapped_column(String(16), index=True)
    sampler: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int | None]
    budget_trials: Mapped[int]
    request: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobKey(Base):
    __tablename__ = "job_keys"
    # ix_job_keys_state: the retune report's token counts keys by state (revision 0009)
    __table_args__ = (UniqueConstraint("job_id", "key_hash"), Index("ix_job_keys_key_hash", "key_hash"),
                      Index("ix_job_keys_state", "state"))
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(16))
    key: Mapped[dict[str, Any]]
    study_name: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(16))  # running | finalizing | done | failed
    trials_done: Mapped[int] = mapped_column(default=0)
    enqueued_at: Mapped[datetime | None]  # last time a batch was sent or started: the janitor's clock
    # each claim of the key's finalization counts; the count is also the finalizer's fencing token
    finalize_attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)  # why the key failed, when it did


class TuningTrial(Base):
    __tablename__ = "tuning_trials"
    # the read paths at fleet scale (a key of 100,000 trials, a million in all; revision 0006):
    # a key's page counts and pages its trials, a job's progress groups its key's trials by outcome
    # and finds the fastest, /metrics counts the last minute's
    __table_args__ = (
        Index("ix_trials_key_order", "kernel", "key_hash", "id"),
        Index("ix_trials_progress", "job_key_id", "status", "median_ms",
              postgresql_include=["device_class_id", "worker_id", "config_hash"]),
        Index("ix_trials_created", "created_at"),
        Index("ix_trials_worker", "worker_id"),  # pruning gone workers (revision 0007)
        # a finished job key's newest trial, the token its held tally stands on (revision 0009)
        Index("ix_trials_job_key_order", "job_key_id", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    job_key_id: Mapped[int | None] = mapped_column(ForeignKey("job_keys.id", ondelete="CASCADE"))
    kernel: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(16), index=True)
    device_class_id: Mapped[int] = mapped_column(ForeignKey("device_classes.id"))
    fingerprint_id: Mapped[int] = mapped_column(ForeignKey("stack_fingerprints.id"))
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"))
    study_name: Mapped[str | None] = mapped_column(String(200), index=True)
    optuna_number: Mapped[int | None]
    config: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(20))
    message: Mapped[str | None] = mapped_column(Text)
    median_ms: Mapped[float | None] = mapped_column(Float)
    p20_ms: Mapped[float | None] = mapped_column(Float)
    p80_ms: Mapped[float | None] = mapped_column(Float)
    cv: Mapped[float | None] = mapped_column(Float)
    reps: Mapped[int | None]
    compile_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrialClaim(Base):
    """A configuration of a study taken for measurement, one row per (study, configuration), so no
    two workers ever measure the same one. The stored trial fills `trial_row_id` in the transaction
    that inserts it, and only while the claim is still the claimant's (`trial_number`); the claim
    of a trial that Optuna's heartbeat found dead is deleted, so the configuration can be proposed
    again and a late result of a stopped worker is dropped, never stored twice."""
    __tablename__ = "trial_claims"
    __table_args__ = (Index("ix_claims_worker", "worker_id"),)  # pruning gone workers (revision 0007)
    study_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    config_hash: Mapped[str] = mapped_column(String(16), primary_key=True)
    trial_number: Mapped[int] = mapped_column(Integer)  # the claimant's Optuna trial in the study
    job_key_id: Mapped[int | None] = mapped_column(ForeignKey("job_keys.id", ondelete="CASCADE"))
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id", ondelete="SET NULL"))
    trial_row_id: Mapped[int | None] = mapped_column(ForeignKey("tuning_trials.id", ondelete="CASCADE"))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)


class TuningKeyColumns:
    """The columns that name a tuning key (kernel, its version, the key's hash and JSON, dtype), in
    every table that stores something per key."""
    kernel: Mapped[str] = mapped_column(String(100))
    kernel_version: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(16))
    key: Mapped[dict[str, Any]]
    dtype: Mapped[str] = mapped_column(String(16))


class BestConfig(TuningKeyColumns, Base):
    """Never overwritten: a new best supersedes the old one (superseded_at), so history stays."""
    __tablename__ = "best_configs"
    __table_args__ = (
        Index("uq_best_current", "kernel", "kernel_version", "key_hash", "device_class_id", "fingerprint_id",
              unique=True, sqlite_where=text("superseded_at IS NULL"),
              postgresql_where=text("superseded_at IS NULL")),
        Index("ix_best_lookup", "kernel", "key_hash", "device_class_id"),
        Index("ix_best_kernel_class", "kernel", "device_class_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    device_class_id: Mapped[int] = mapped_column(ForeignKey("device_classes.id"))
    fingerprint_id: Mapped[int] = mapped_column(ForeignKey("stack_fingerprints.id"))
    config: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(16))
    median_ms: Mapped[float] = mapped_column(Float)
    default_ms: Mapped[float | None] = mapped_column(Float)
    speedup: Mapped[float | None] = mapped_column(Float)
    cv: Mapped[float | None] = mapped_column(Float)
    trials: Mapped[int]
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    superseded_at: Mapped[datetime | None]


class Lock(Base):
    """A named lease in the database (e.g. the nightly retune), so two schedulers never both act."""
    __tablename__ = "tuner_locks"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class RuntimeMiss(TuningKeyColumns, Base):
    """How often model processes were served a key from a fallback level (another stack's row, a
    nearest shape, the default): written in batches by the runtime (db.store.record_misses), read
    by `tuner misses` and turned into tuning jobs by `tuner retune --misses`. The class and stack
    are kept as the runtime names them (slug, fingerprint hash): a model process registers no
    identity rows."""
    __tablename__ = "runtime_misses"
    __table_args__ = (
        UniqueConstraint("kernel", "kernel_version", "key_hash", "device_class", "fingerprint", "level",
                         name="uq_runtime_miss"),
        Index("ix_runtime_miss_class", "device_class", "count"),
        Index("ix_runtime_miss_count", "count", "last_seen"),  # the most frequent first, a page at a time
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    device_class: Mapped[str] = mapped_column(String(80))
    fingerprint: Mapped[str] = mapped_column(String(80))
    level: Mapped[str] = mapped_column(String(24))
    count: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]


class ReportedConfig(TuningKeyColumns, Base):
    """The winner a drop-in kernel (@autotune with on_miss="autotune") timed in a model process for
    a key nothing measured was stored for, as the FIRST process to report it reported it: one row
    per kernel version, key, class and stack, never overwritten (db.reported.record_reported
    inserts or does nothing), so every process and rank that asks later is served this one and
    they agree. The runtime serves it below measured bests (level "reported"); a measured best of
    the key always outranks it. Class and stack as the runtime names them (slug, hash)."""
    __tablename__ = "reported_configs"
    __table_args__ = (UniqueConstraint("kernel", "kernel_version", "key_hash", "device_class", "fingerprint",
                                       name="uq_reported_config"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    device_class: Mapped[str] = mapped_column(String(80))
    fingerprint: Mapped[str] = mapped_column(String(80))
    config: Mapped[dict[str, Any]]
    median_ms: Mapped[float] = mapped_column(Float)  # as the reporting process timed it
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImportedConfig(Base):
    """A configuration someone else tuned (a vLLM config file): a seed the search tries first for
    matching and nearby keys, never a measured best. `dims` holds the key's dims the source names
    (vLLM's files: E, N and M); `device_selector` the class or family it was tuned on."""
    __tablename__ = "imported_configs"
    __table_args__ = (UniqueConstraint("kernel", "device_selector", "dtype", "dims_hash"),
                      Index("ix_imported_lookup", "kernel", "dtype"))
    id: Mapped[int] = mapped_column(primary_key=True)
    kernel: Mapped[str] = mapped_column(String(100))
    device_selector: Mapped[str] = mapped_column(String(80))
    dtype: Mapped[str] = mapped_column(String(16))
    dims: Mapped[dict[str, Any]]
    dims_hash: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    source: Mapped[str] = mapped_column(String(300))  # format:file name
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)
