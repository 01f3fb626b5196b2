"""ORM tables: tenancy (users, teams, projects), API keys, sandboxes, idempotency records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hutch.db.base import Base, UTCDateTime

ID = String(40)


class UserRow(Base):
    """A user."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TeamRow(Base):
    """A team."""

    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MemberRow(Base):
    """A user's role in a team."""

    __tablename__ = "team_members"

    team_id: Mapped[str] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_team_members_user_id", "user_id"),)


class ProjectRow(Base):
    """A project."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    audit_exec: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_projects_team_id_name"),)


class ApiKeyRow(Base):
    """An API key: only its keyed hash is stored, plus what a person needs to recognise it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    mode: Mapped[str] = mapped_column(String(8))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    last4: Mapped[str] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    replaced_by: Mapped[str | None] = mapped_column(ID, nullable=True)

    __table_args__ = (Index("ix_api_keys_project_id_id", "project_id", "id"),)


class SandboxRow(Base):
    """A sandbox and where it is in its life cycle."""

    __tablename__ = "sandboxes"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(8))
    template: Mapped[str] = mapped_column(String(64))
    isolation: Mapped[str] = mapped_column(String(16))
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer)
    timeout_s: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # egress policy (NetworkPolicy as JSON); NULL: no network but loopback
    network: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)

    meta: Mapped[list[SandboxMetadataRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="SandboxMetadataRow.key"
    )

    __table_args__ = (
        Index("ix_sandboxes_project_id_mode_id", "project_id", "mode", "id"),
        Index("ix_sandboxes_state", "state"),
        # The quota check on every create counts a project's active sandboxes.
        Index("ix_sandboxes_project_id_state", "project_id", "state"),
    )


class SandboxMetadataRow(Base):
    """One metadata entry of a sandbox, in its own table so filters are plain indexed SQL."""

    __tablename__ = "sandbox_metadata"

    sandbox_id: Mapped[str] = mapped_column(
        ForeignKey("sandboxes.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))

    __table_args__ = (Index("ix_sandbox_metadata_key_value", "key", "value"),)


class IdempotencyRow(Base):
    """The first response to a create carrying an Idempotency-Key (status null: in progress)."""

    __tablename__ = "idempotency_records"

    scope: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_idempotency_records_created_at", "created_at"),)


# Tables kept in modules of their own, imported here so the metadata (and Alembic) see them.
from hutch.db import audit as _audit  # noqa: E402, F401
from hutch.db import billing as _billing  # noqa: E402, F401
from hutch.db import ports as _ports  # noqa: E402, F401
from hutch.db import privacy as _privacy  # noqa: E402, F401
