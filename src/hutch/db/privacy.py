"""ORM tables for project secrets (envelope-encrypted) and data-subject rights."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hutch.db.base import Base, UTCDateTime

ID = String(40)


class ProjectSecretRow(Base):
    """One secret of a project: ciphertext under its own data key, which a KEK wraps."""

    __tablename__ = "project_secrets"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    kek_id: Mapped[str] = mapped_column(String(300))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_project_secrets_project_id_name"),
        Index("ix_project_secrets_kek_id", "kek_id"),
    )


class UserPrivacyRow(Base):
    """A user's restriction, objections and erasure state (absent row: none of them)."""

    __tablename__ = "user_privacy"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    restricted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    objections: Mapped[list[str]] = mapped_column(JSON, default=list)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    purge_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_user_privacy_purge_after", "purge_after"),)


class SandboxOwnerRow(Base):
    """Which user's key created a sandbox (so an erasure can kill that user's sandboxes)."""

    __tablename__ = "sandbox_owners"

    sandbox_id: Mapped[str] = mapped_column(
        ForeignKey("sandboxes.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))

    __table_args__ = (Index("ix_sandbox_owners_user_id", "user_id"),)
