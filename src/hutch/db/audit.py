"""ORM tables for audit and retention: the admin log chain and its checkpoints, the sandbox exec
trail, the API usage log and its daily aggregates, account suspensions, scheduler leases."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, BigInteger, Date, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hutch.db.base import Base, UTCDateTime

ID = String(40)
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BIGID = BigInteger().with_variant(Integer, "sqlite")


class AdminLogHeadRow(Base):
    """The chain head (one row, id 1): appends lock it, so entries get gapless sequence numbers."""

    __tablename__ = "admin_log_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AdminLogRow(Base):
    """One administrative action; `hash` chains it to the entry before it."""

    __tablename__ = "admin_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(ID, unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor_user_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(100))
    source_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, str]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_admin_log_at", "at"),
        Index("ix_admin_log_target", "target_type", "target_id"),
        Index("ix_admin_log_actor_user_id", "actor_user_id"),
    )


class AdminLogCheckpointRow(Base):
    """A signed statement that entry `seq` had hash `hash`; the anchor once older entries go."""

    __tablename__ = "admin_log_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))


class ExecAuditRow(Base):
    """One command run in a sandbox of a project that opted in: metadata only."""

    __tablename__ = "exec_audit"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID)
    mode: Mapped[str] = mapped_column(String(8))
    sandbox_id: Mapped[str] = mapped_column(ID)
    command: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_exec_audit_project_id_id", "project_id", "id"),
        Index("ix_exec_audit_sandbox_id_pid", "sandbox_id", "pid"),
    )


class UsageRow(Base):
    """One API request (kept 90 days)."""

    __tablename__ = "api_usage"

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_prefix: Mapped[str | None] = mapped_column(String(16), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    latency_us: Mapped[int] = mapped_column(BigInteger)
    sandbox_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_api_usage_at", "at"),)


class UsageDailyRow(Base):
    """Anonymous daily counts of requests older than the raw log keeps: no user, key or IP."""

    __tablename__ = "api_usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    method: Mapped[str] = mapped_column(String(8), primary_key=True)
    route: Mapped[str] = mapped_column(String(200), primary_key=True)
    status_class: Mapped[str] = mapped_column(String(3), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    latency_us_sum: Mapped[int] = mapped_column(BigInteger)


class SuspensionRow(Base):
    """A suspended or terminated user or team (acceptable-use enforcement)."""

    __tablename__ = "account_suspensions"

    subject_type: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject_id: Mapped[str] = mapped_column(ID, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    by_user_id: Mapped[str | None] = mapped_column(ID, nullable=True)


class SchedulerJobRow(Base):
    """When a scheduled job is next due and which process holds its lease."""

    __tablename__ = "scheduler_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_ok: Mapped[bool | None] = mapped_column(nullable=True)
