"""ORM table of per-port settings of sandboxes (today: whether a port is public)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from hutch.db.base import Base, UTCDateTime


class SandboxPortRow(Base):
    """A port the user configured; ports without a row are private."""

    __tablename__ = "sandbox_ports"

    sandbox_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("sandboxes.id", ondelete="CASCADE"), primary_key=True
    )
    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
