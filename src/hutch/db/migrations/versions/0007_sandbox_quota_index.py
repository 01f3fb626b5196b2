"""Index active sandboxes by project: the quota check counts them on every create.

Without it the count walked every sandbox the project ever had (through the project index)
and looked each one's state up, so a create got slower with the project's history.

Revision ID: 0007_sandbox_quota_index
Revises: 0006_ports
"""

from __future__ import annotations

from alembic import op

revision = "0007_sandbox_quota_index"
down_revision = "0006_ports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sandboxes_project_id_state", ["project_id", "state"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_index("ix_sandboxes_project_id_state")
