"""Wire models of the audit trails, their verification, and account suspension."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from hutch.models.common import WireModel


class ExecRecord(WireModel):
    """One command run in a sandbox: metadata only, never arguments, environment or output."""

    id: str
    project_id: str
    sandbox_id: str
    command: str = Field(description="Basename of argv[0] only (e.g. 'bash', 'python3')")
    kind: str = Field(description="exec (to completion), background, or stream")
    pid: int | None = None
    exit_code: int | None = Field(default=None, description="null while running or unknown")
    started_at: datetime
    ended_at: datetime | None = None


class AdminLogEntry(WireModel):
    """One administrative action in the tamper-evident admin log."""

    seq: int
    id: str
    at: datetime
    actor_user_id: str | None = Field(description="null for actions the server took itself")
    action: str
    target_type: str
    target_id: str
    source_ip: str | None = None
    details: dict[str, str]
    hash: str


class AdminLogPage(BaseModel):
    """Entries in chain order; pass `next_after_seq` as `after_seq` for more (null: done)."""

    items: list[AdminLogEntry]
    next_after_seq: int | None = None


class AuditVerification(WireModel):
    """Result of checking the admin log's hash chain and signed checkpoints."""

    ok: bool
    entries: int
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int
    latest_checkpoint_seq: int | None = None
    public_key_id: str
    problems: list[str]


class SuspensionState(StrEnum):
    """Suspended accounts can be reinstated; termination is final."""

    suspended = "suspended"
    terminated = "terminated"


class SubjectType(StrEnum):
    """What an administrator suspends."""

    user = "user"
    team = "team"


class SuspendRequest(WireModel):
    """Why the account is suspended or terminated (goes to the admin log)."""

    reason: str = Field(min_length=1, max_length=500, pattern=r"^[^\x00]+$")


class Suspension(WireModel):
    """A suspended or terminated user or team."""

    subject_type: SubjectType
    subject_id: str
    state: SuspensionState
    reason: str
    at: datetime
    by_user_id: str | None = None
    sandboxes_killed: int = Field(default=0, description="Running sandboxes stopped (terminate)")
    keys_revoked: int = Field(default=0, description="API keys revoked (terminate)")
