"""ORM tables for metering, credits and invoices.

Billing rows name teams, projects and sandboxes by id without foreign keys: they are kept seven
years, also after the account they describe is deleted (then pseudonymised).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hutch.db.base import Base, UTCDateTime

ID = String(40)


class BillingAccountRow(Base):
    """A team's billing account: payment method, processor customer, enforcement state."""

    __tablename__ = "billing_accounts"

    team_id: Mapped[str] = mapped_column(ID, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="active")
    payment_method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    customer_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    billing_email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    depleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SandboxMeterRow(Base):
    """How far a sandbox's usage has been recorded (the high-water mark replays are cut at)."""

    __tablename__ = "sandbox_meters"

    sandbox_id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID)
    project_id: Mapped[str] = mapped_column(ID)
    mode: Mapped[str] = mapped_column(String(8))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    billed_until: Mapped[datetime] = mapped_column(UTCDateTime)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)


class UsageRecordRow(Base):
    """One metered span (or model call): exact integer quantities, priced at `price_version`."""

    __tablename__ = "usage_records"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    meter: Mapped[str] = mapped_column(String(120))
    team_id: Mapped[str] = mapped_column(ID)
    project_id: Mapped[str] = mapped_column(ID)
    sandbox_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    mode: Mapped[str] = mapped_column(String(8))
    vcpu: Mapped[int] = mapped_column(Integer, default=0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    vcpu_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    mib_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    units: Mapped[int] = mapped_column(BigInteger, default=0)
    price_version: Mapped[str] = mapped_column(String(32))
    period: Mapped[str] = mapped_column(String(7))
    hour: Mapped[datetime] = mapped_column(UTCDateTime)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_usage_records_team_id_period", "team_id", "period"),
        Index("ix_usage_records_period_team_id", "period", "team_id"),
        Index("ix_usage_records_team_id_hour", "team_id", "hour"),
        Index("ix_usage_records_sandbox_id", "sandbox_id"),
        Index("ix_usage_records_reported_at", "reported_at"),
    )


class CreditGrantRow(Base):
    """Credit given to a team: drawn by priority, then earliest expiry."""

    __tablename__ = "credit_grants"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(Integer, default=100)
    kind: Mapped[str] = mapped_column(String(16))
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str] = mapped_column(String(200))
    created_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_credit_grants_team_id", "team_id"),)


class InvoiceRow(Base):
    """A team's invoice for one calendar month; never changed after it is finalized."""

    __tablename__ = "invoices"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID)
    period: Mapped[str] = mapped_column(String(7))
    status: Mapped[str] = mapped_column(String(16))
    subtotal_micros: Mapped[int] = mapped_column(BigInteger)
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    total_micros: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    external_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("team_id", "period", name="uq_invoices_team_id_period"),)


class BillingEventRow(Base):
    """Something the account holder should know: low balance, depleted, stopped, payments."""

    __tablename__ = "billing_events"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID)
    type: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(300))
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_billing_events_team_id_at", "team_id", "at"),)
