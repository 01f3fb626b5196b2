"""Public API wire models beyond the shared runner ones: tenancy, keys, sandboxes, pages."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hutch.models.common import IsolationClass, SandboxState, WireModel
from hutch.models.network import NetworkPolicy
from hutch.models.privacy import check_secret_refs
from hutch.models.sandbox import SandboxSpec

T = TypeVar("T")


class Role(StrEnum):
    """A user's role in a team, strongest first."""

    owner = "owner"
    admin = "admin"
    member = "member"
    viewer = "viewer"


class Mode(StrEnum):
    """Live or test: test-mode keys see only test-mode data."""

    live = "live"
    test = "test"


class Scope(StrEnum):
    """What an API key may do; its effective rights are its scopes ∩ its owner's role."""

    sandboxes_read = "sandboxes:read"
    sandboxes_write = "sandboxes:write"
    ports_access = "ports:access"
    keys_write = "keys:write"
    keys_admin = "keys:admin"
    projects_read = "projects:read"
    projects_admin = "projects:admin"
    members_read = "members:read"
    members_admin = "members:admin"
    teams_admin = "teams:admin"
    billing_read = "billing:read"
    billing_write = "billing:write"
    users_admin = "users:admin"


MAX_METADATA_ENTRIES = 32
MAX_METADATA_VALUE_LEN = 512
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_METADATA_KEY_RE = re.compile(METADATA_KEY_PATTERN)
NAME_FIELD = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
# Ids in bodies: printable ASCII without spaces (a NUL byte would reach the database otherwise).
ID_PATTERN = r"^[\x21-\x7e]+$"


def check_metadata(v: dict[str, str]) -> dict[str, str]:
    """Bounded user metadata: few entries, short keys of a safe alphabet, short values."""
    if len(v) > MAX_METADATA_ENTRIES:
        raise ValueError(f"metadata has {len(v)} entries; at most {MAX_METADATA_ENTRIES} allowed")
    for k, val in v.items():
        if not _METADATA_KEY_RE.match(k):
            raise ValueError(
                f"metadata key {k!r} is not allowed: 1-64 characters of letters, digits, '_.:-'"
            )
        if len(val) > MAX_METADATA_VALUE_LEN or "\0" in val:
            raise ValueError(
                f"metadata value for {k!r} must be at most {MAX_METADATA_VALUE_LEN} characters "
                "without NUL bytes"
            )
    return v


class Page(BaseModel, Generic[T]):
    """One page of a list; pass `next_cursor` back as `cursor` for the next one (null: done)."""

    items: list[T]
    next_cursor: str | None = None


# --- sandboxes ---


class SandboxCreate(SandboxSpec):
    """Create a sandbox: its spec plus free-form metadata to find it again."""

    metadata: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] | dict[str, str] = Field(
        default_factory=list,
        description="Project secrets to inject as environment variables: names (the env name is "
        "the secret name) or {ENV_NAME: SECRET_NAME}",
    )

    _check_metadata = field_validator("metadata")(check_metadata)
    _check_secrets = field_validator("secrets")(check_secret_refs)


class Sandbox(WireModel):
    """A sandbox as the API shows it."""

    sandbox_id: str
    project_id: str
    mode: Mode
    template: str
    isolation: IsolationClass
    vcpu: int
    memory_mb: int
    disk_mb: int
    state: SandboxState
    metadata: dict[str, str]
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    network: NetworkPolicy | None = Field(
        default=None, description="Egress policy; null: no network but loopback"
    )


# --- accounts ---


class User(WireModel):
    """A person (or service identity) that owns API keys."""

    user_id: str
    email: str
    name: str
    is_admin: bool
    created_at: datetime


class UserCreate(WireModel):
    """Create a user (server administrators only)."""

    email: str = Field(
        min_length=3, max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"
    )
    name: str = NAME_FIELD
    is_admin: bool = False


class Team(WireModel):
    """A group of users sharing projects."""

    team_id: str
    name: str
    created_at: datetime
    role: Role | None = Field(default=None, description="The caller's role in this team")


class TeamCreate(WireModel):
    """Create a team; the caller becomes its owner."""

    name: str = NAME_FIELD


class Member(WireModel):
    """A user's membership of a team."""

    team_id: str
    user_id: str
    role: Role
    created_at: datetime


class MemberAdd(WireModel):
    """Add a user to a team."""

    user_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    role: Role = Role.member


class MemberUpdate(WireModel):
    """Change a member's role."""

    role: Role


class Project(WireModel):
    """Every sandbox and key belongs to a project; a project belongs to a team."""

    project_id: str
    team_id: str
    name: str
    created_at: datetime
    audit_exec: bool = Field(
        default=False,
        description="Keep an exec audit trail (command name, exit code, times; never content)",
    )


class ProjectCreate(WireModel):
    """Create a project (in the caller's team unless `team_id` names another of theirs)."""

    name: str = NAME_FIELD
    team_id: str | None = Field(default=None, max_length=64, pattern=ID_PATTERN)


class ProjectUpdate(WireModel):
    """Rename a project and/or change its settings (fields left out stay as they are)."""

    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    audit_exec: bool | None = Field(
        default=None, description="Record each exec's command name, exit code and times"
    )

    @model_validator(mode="after")
    def _something(self) -> ProjectUpdate:
        if self.name is None and self.audit_exec is None:
            raise ValueError("give at least one of: name, audit_exec")
        return self


# --- API keys ---

KEY_GRACE_MAX_S = 7 * 86400


class ApiKey(WireModel):
    """An API key as listed: never the secret, only what identifies it to a person."""

    key_id: str
    name: str
    user_id: str
    project_id: str
    mode: Mode
    scopes: list[Scope]
    display: str = Field(description="Prefix and last four characters, e.g. sk_live_AbCd…wxyz")
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    replaced_by: str | None = None


class ApiKeyCreated(ApiKey):
    """A new key: `key` is shown this once and never again."""

    key: str


class ApiKeyCreate(WireModel):
    """Create a key. Scopes default to everything the owner's role allows."""

    name: str = NAME_FIELD
    mode: Mode = Mode.live
    scopes: list[Scope] | None = Field(default=None, max_length=len(Scope))
    user_id: str | None = Field(
        default=None, max_length=64, pattern=ID_PATTERN, description="Default: the caller"
    )
    project_id: str | None = Field(
        default=None, max_length=64, pattern=ID_PATTERN, description="Default: the key's"
    )


class ApiKeyRotate(WireModel):
    """Rotate a key: the old one keeps working for `grace_s` seconds, then answers key_expired."""

    grace_s: int = Field(default=86400, ge=0, le=KEY_GRACE_MAX_S)


class Me(WireModel):
    """Who the calling key belongs to and what it may do."""

    user: User
    key: ApiKey
    project: Project
    role: Role | None
    effective_scopes: list[Scope]


class Health(WireModel):
    """Liveness of the API server."""

    model_config = ConfigDict(extra="forbid")

    status: str = "ok"
    database: bool
    runner: bool | None = Field(default=None, description="null when no runner is configured")
