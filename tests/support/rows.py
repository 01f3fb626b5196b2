"""Rows written straight into the database, for tests and benchmarks that need something to refer
to (a sandbox to bill, audit or proxy to) without a runner making it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hutch.db.models import SandboxRow
from hutch.db.session import Database
from hutch.ids import new_id


def sandbox_row(
    project_id: str,
    at: datetime,
    *,
    state: str = "running",
    mode: str = "live",
    vcpu: int = 1,
    memory_mb: int = 256,
    disk_mb: int = 256,
    timeout_s: int = 300,
) -> SandboxRow:
    """A base-template namespace sandbox in `state`, created at `at`, expiring `timeout_s` later
    (not yet added to any session)."""
    return SandboxRow(
        id=new_id("sbx"),
        project_id=project_id,
        mode=mode,
        template="base",
        isolation="namespace",
        vcpu=vcpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        timeout_s=timeout_s,
        state=state,
        created_at=at,
        updated_at=at,
        expires_at=at + timedelta(seconds=timeout_s),
    )


def add_sandbox(db: Database, project_id: str, at: datetime, **spec: Any) -> str:
    """Commit a `sandbox_row(project_id, at, **spec)` in its own session; its id."""
    row = sandbox_row(project_id, at, **spec)
    sid = row.id
    with db.session() as s:
        s.add(row)
        s.commit()
    return sid
