"""Audit and retention: admin log chain and checkpoints, exec trail, API usage log and daily
aggregates, account suspensions, scheduler leases, the per-project `audit_exec` setting.

Revision ID: 0003_audit
Revises: 0002_billing
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_audit"
down_revision = "0002_billing"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "admin_log_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_log_head")),
    )
    op.create_table(
        "admin_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor_user_id", sa.String(length=40), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=100), nullable=False),
        sa.Column("source_ip", sa.String(length=64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_admin_log")),
        sa.UniqueConstraint("id", name=op.f("uq_admin_log_id")),
    )
    with op.batch_alter_table("admin_log", schema=None) as batch_op:
        batch_op.create_index("ix_admin_log_at", ["at"], unique=False)
        batch_op.create_index("ix_admin_log_target", ["target_type", "target_id"], unique=False)
        batch_op.create_index("ix_admin_log_actor_user_id", ["actor_user_id"], unique=False)
    op.create_table(
        "admin_log_checkpoints",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_admin_log_checkpoints")),
    )
    op.create_table(
        "exec_audit",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("sandbox_id", sa.String(length=40), nullable=False),
        sa.Column("command", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exec_audit")),
    )
    with op.batch_alter_table("exec_audit", schema=None) as batch_op:
        batch_op.create_index("ix_exec_audit_project_id_id", ["project_id", "id"], unique=False)
        batch_op.create_index("ix_exec_audit_sandbox_id_pid", ["sandbox_id", "pid"], unique=False)
    op.create_table(
        "api_usage",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=True),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_us", sa.BigInteger(), nullable=False),
        sa.Column("sandbox_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_usage")),
    )
    with op.batch_alter_table("api_usage", schema=None) as batch_op:
        batch_op.create_index("ix_api_usage_at", ["at"], unique=False)
    op.create_table(
        "api_usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("status_class", sa.String(length=3), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("latency_us_sum", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "method", "route", "status_class", name=op.f("pk_api_usage_daily")
        ),
    )
    op.create_table(
        "account_suspensions",
        sa.Column("subject_type", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("by_user_id", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("subject_type", "subject_id", name=op.f("pk_account_suspensions")),
    )
    op.create_table(
        "scheduler_jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("next_due_at", TS, nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("last_run_at", TS, nullable=True),
        sa.Column("last_ok", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_jobs")),
    )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("audit_exec", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("audit_exec")
    op.drop_table("scheduler_jobs")
    op.drop_table("account_suspensions")
    op.drop_table("api_usage_daily")
    with op.batch_alter_table("api_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_api_usage_at")
    op.drop_table("api_usage")
    with op.batch_alter_table("exec_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_exec_audit_sandbox_id_pid")
        batch_op.drop_index("ix_exec_audit_project_id_id")
    op.drop_table("exec_audit")
    op.drop_table("admin_log_checkpoints")
    with op.batch_alter_table("admin_log", schema=None) as batch_op:
        batch_op.drop_index("ix_admin_log_actor_user_id")
        batch_op.drop_index("ix_admin_log_target")
        batch_op.drop_index("ix_admin_log_at")
    op.drop_table("admin_log")
    op.drop_table("admin_log_head")
