"""Project secrets (envelope-encrypted), users' privacy state, sandbox owners.

Revision ID: 0005_privacy
Revises: 0004_network
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_privacy"
down_revision = "0004_network"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_secrets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kek_id", sa.String(length=300), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_project_secrets_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_project_secrets")),
        sa.UniqueConstraint("project_id", "name", name="uq_project_secrets_project_id_name"),
    )
    with op.batch_alter_table("project_secrets", schema=None) as batch_op:
        batch_op.create_index("ix_project_secrets_kek_id", ["kek_id"], unique=False)

    op.create_table(
        "user_privacy",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("restricted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("objections", sa.JSON(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purge_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_privacy_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_privacy")),
    )
    with op.batch_alter_table("user_privacy", schema=None) as batch_op:
        batch_op.create_index("ix_user_privacy_purge_after", ["purge_after"], unique=False)

    op.create_table(
        "sandbox_owners",
        sa.Column("sandbox_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["sandbox_id"],
            ["sandboxes.id"],
            name=op.f("fk_sandbox_owners_sandbox_id_sandboxes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_sandbox_owners_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sandbox_id", name=op.f("pk_sandbox_owners")),
    )
    with op.batch_alter_table("sandbox_owners", schema=None) as batch_op:
        batch_op.create_index("ix_sandbox_owners_user_id", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_table("sandbox_owners")
    op.drop_table("user_privacy")
    op.drop_table("project_secrets")
