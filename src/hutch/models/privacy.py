"""Wire models for project secrets and data-subject rights (export, rectify, restrict, object,
erase)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import Field, field_validator

from hutch.models.common import WireModel

SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
SECRET_NAME_RE = re.compile(SECRET_NAME_PATTERN)
SECRET_VALUE_MAX = 64 * 1024
MAX_SANDBOX_SECRETS = 64
# No control characters (PostgreSQL text refuses NUL; none belongs in an address).
EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$"


# --- secrets ---


class SecretPut(WireModel):
    """Write a secret value (write-only: no route ever returns it)."""

    value: str = Field(max_length=SECRET_VALUE_MAX, description="At most 64 KiB, no NUL byte")

    @field_validator("value")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\0" in v:
            raise ValueError("a secret value cannot contain a NUL byte (it becomes an env value)")
        return v


class Secret(WireModel):
    """A secret as listed: its name and metadata, never its value."""

    project_id: str
    name: str
    version: int = Field(description="Bumped by every write")
    kek_id: str = Field(description="Which key-encryption key wraps its data key")
    created_at: datetime
    updated_at: datetime


class RewrapRequest(WireModel):
    """Rewrap every secret's data key under the current key-encryption key."""

    rotate: bool = Field(
        default=False, description="First make a new KEK version (local key file and Vault)"
    )


class RewrapResult(WireModel):
    """What a rewrap did."""

    kek_id: str
    rotated: bool
    rewrapped: int
    already_current: int


def check_secret_refs(v: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
    """Secret names to inject: a list (env name = secret name) or {ENV_NAME: SECRET_NAME}."""
    pairs = [(n, n) for n in v] if isinstance(v, list) else list(v.items())
    if len(pairs) > MAX_SANDBOX_SECRETS:
        raise ValueError(f"{len(pairs)} secrets asked for; at most {MAX_SANDBOX_SECRETS}")
    for env, name in pairs:
        for what, s in (("environment variable name", env), ("secret name", name)):
            if not SECRET_NAME_RE.match(s):
                raise ValueError(
                    f"{what} {s!r} is not allowed: 1-64 letters, digits and underscores, "
                    "not starting with a digit"
                )
    if isinstance(v, list) and len(set(v)) != len(v):
        raise ValueError("a secret is named twice")
    return v


def secret_pairs(v: list[str] | dict[str, str]) -> list[tuple[str, str]]:
    """(env name, secret name) pairs of a validated reference list or mapping."""
    return [(n, n) for n in v] if isinstance(v, list) else list(v.items())


# --- data-subject rights ---


class Purpose(StrEnum):
    """Optional processing a user may object to."""

    exec_audit = "exec_audit"  # the per-project exec audit trail
    usage_analytics = "usage_analytics"  # aggregated product analytics
    marketing = "marketing"  # product news by email


class ProfileUpdate(WireModel):
    """Correct the profile (rectification); omitted fields stay as they are."""

    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    email: str | None = Field(default=None, min_length=3, max_length=254, pattern=EMAIL_PATTERN)


class Objections(WireModel):
    """The purposes the user objects to (replaces the previous list)."""

    purposes: list[Purpose] = Field(default_factory=list, max_length=len(Purpose))


class PrivacyStatus(WireModel):
    """Where a user's account stands on restriction, objection and erasure."""

    user_id: str
    restricted_at: datetime | None = None
    objections: list[Purpose] = Field(default_factory=list)
    erased_at: datetime | None = None
    purge_after: datetime | None = Field(
        default=None, description="When the purge job removes the personal data"
    )
    purged_at: datetime | None = None
