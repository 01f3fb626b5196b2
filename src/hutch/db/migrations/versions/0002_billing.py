"""Billing: accounts, sandbox meters, usage records, credit grants, invoices, billing events.

Revision ID: 0002_billing
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_billing"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_accounts",
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payment_method", sa.String(length=16), nullable=True),
        sa.Column("customer_id", sa.String(length=64), nullable=True),
        sa.Column("billing_email", sa.String(length=254), nullable=True),
        sa.Column("warned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("depleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("team_id", name=op.f("pk_billing_accounts")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_billing_accounts_customer_id")),
    )
    op.create_table(
        "billing_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=300), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_events")),
    )
    with op.batch_alter_table("billing_events", schema=None) as batch_op:
        batch_op.create_index("ix_billing_events_team_id_at", ["team_id", "at"], unique=False)

    op.create_table(
        "credit_grants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
    )
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.create_index("ix_credit_grants_team_id", ["team_id"], unique=False)

    op.create_table(
        "invoices",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subtotal_micros", sa.BigInteger(), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("total_micros", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("team_id", "period", name="uq_invoices_team_id_period"),
    )
    op.create_table(
        "sandbox_meters",
        sa.Column("sandbox_id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("billed_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("sandbox_id", name=op.f("pk_sandbox_meters")),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("meter", sa.String(length=120), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("sandbox_id", sa.String(length=40), nullable=True),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("vcpu", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("vcpu_ms", sa.BigInteger(), nullable=False),
        sa.Column("mib_ms", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("price_version", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index("ix_usage_records_reported_at", ["reported_at"], unique=False)
        batch_op.create_index("ix_usage_records_sandbox_id", ["sandbox_id"], unique=False)
        batch_op.create_index("ix_usage_records_team_id_hour", ["team_id", "hour"], unique=False)
        batch_op.create_index(
            "ix_usage_records_team_id_period", ["team_id", "period"], unique=False
        )
        batch_op.create_index(
            "ix_usage_records_period_team_id", ["period", "team_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_period_team_id")
        batch_op.drop_index("ix_usage_records_team_id_period")
        batch_op.drop_index("ix_usage_records_team_id_hour")
        batch_op.drop_index("ix_usage_records_sandbox_id")
        batch_op.drop_index("ix_usage_records_reported_at")

    op.drop_table("usage_records")
    op.drop_table("sandbox_meters")
    op.drop_table("invoices")
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_grants_team_id")

    op.drop_table("credit_grants")
    with op.batch_alter_table("billing_events", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_events_team_id_at")

    op.drop_table("billing_events")
    op.drop_table("billing_accounts")
