"""Shared enums, limits and the problem+json error shape used on every wire."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    """Base for every wire model: unknown fields are refused so typos fail loudly."""

    model_config = ConfigDict(extra="forbid")


class IsolationClass(StrEnum):
    """How strongly a sandbox is isolated from the host."""

    namespace = "namespace"  # Linux namespaces + seccomp + cgroups (default)
    gvisor = "gvisor"  # runsc: a user-space kernel of its own


class SandboxState(StrEnum):
    """Sandbox life cycle; every transition is persisted before it is acted on."""

    creating = "creating"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"
    failed = "failed"


class ExecUser(StrEnum):
    """Who a command runs as inside the sandbox."""

    root = "root"
    user = "user"


# Sizes a sandbox may ask for. Operators may lower the maxima in configuration; these are the
# hard bounds the wire accepts.
VCPU_MIN, VCPU_MAX = 1, 16
MEMORY_MB_MIN, MEMORY_MB_MAX = 128, 65536
DISK_MB_MIN, DISK_MB_MAX = 64, 262144
TIMEOUT_S_MIN, TIMEOUT_S_MAX = 1, 86400
DEFAULT_VCPU, DEFAULT_MEMORY_MB, DEFAULT_DISK_MB, DEFAULT_TIMEOUT_S = 1, 1024, 4096, 300

# In-sandbox identities: `root` is uid 0 and `user` is uid 1000 inside the sandbox's own user
# namespace; neither is a privileged uid on the host.
SANDBOX_USER_UID = 1000
SANDBOX_USER_HOME = "/home/user"


class ErrorCode(StrEnum):
    """Stable machine-readable error codes; the SDK raises one exception type per code."""

    invalid_request = "invalid_request"
    unauthenticated = "unauthenticated"
    key_revoked = "key_revoked"
    key_expired = "key_expired"
    forbidden = "forbidden"
    not_found = "not_found"
    sandbox_not_found = "sandbox_not_found"
    sandbox_not_running = "sandbox_not_running"
    template_not_found = "template_not_found"
    template_not_ready = "template_not_ready"
    isolation_unavailable = "isolation_unavailable"
    capacity_exhausted = "capacity_exhausted"
    path_outside_sandbox = "path_outside_sandbox"
    file_not_found = "file_not_found"
    file_exists = "file_exists"
    not_a_directory = "not_a_directory"
    is_a_directory = "is_a_directory"
    directory_not_empty = "directory_not_empty"
    disk_full = "disk_full"
    file_error = "file_error"
    exec_failed = "exec_failed"
    process_not_found = "process_not_found"
    command_timeout = "command_timeout"
    conflict = "conflict"
    idempotency_conflict = "idempotency_conflict"
    quota_exceeded = "quota_exceeded"
    rate_limited = "rate_limited"
    payment_required = "payment_required"
    webhook_signature_invalid = "webhook_signature_invalid"
    account_restricted = "account_restricted"
    account_suspended = "account_suspended"
    account_erased = "account_erased"
    secrets_unavailable = "secrets_unavailable"
    runner_unavailable = "runner_unavailable"
    billing_unavailable = "billing_unavailable"
    port_unreachable = "port_unreachable"
    ports_unsupported = "ports_unsupported"
    token_invalid = "token_invalid"
    token_expired = "token_expired"
    internal = "internal"


ERROR_STATUS: dict[ErrorCode, int] = {
    ErrorCode.invalid_request: 422,
    ErrorCode.unauthenticated: 401,
    ErrorCode.key_revoked: 401,
    ErrorCode.key_expired: 401,
    ErrorCode.forbidden: 403,
    ErrorCode.not_found: 404,
    ErrorCode.sandbox_not_found: 404,
    ErrorCode.sandbox_not_running: 409,
    ErrorCode.template_not_found: 404,
    ErrorCode.template_not_ready: 409,
    ErrorCode.isolation_unavailable: 422,
    ErrorCode.capacity_exhausted: 503,
    ErrorCode.path_outside_sandbox: 400,
    ErrorCode.file_not_found: 404,
    ErrorCode.file_exists: 409,
    ErrorCode.not_a_directory: 400,
    ErrorCode.is_a_directory: 400,
    ErrorCode.directory_not_empty: 409,
    ErrorCode.disk_full: 507,
    ErrorCode.file_error: 400,
    ErrorCode.exec_failed: 400,
    ErrorCode.process_not_found: 404,
    ErrorCode.command_timeout: 408,
    ErrorCode.conflict: 409,
    ErrorCode.idempotency_conflict: 409,
    ErrorCode.quota_exceeded: 429,
    ErrorCode.rate_limited: 429,
    ErrorCode.payment_required: 402,
    ErrorCode.webhook_signature_invalid: 400,
    ErrorCode.account_restricted: 403,
    ErrorCode.account_suspended: 403,
    ErrorCode.account_erased: 401,
    ErrorCode.secrets_unavailable: 503,
    ErrorCode.runner_unavailable: 503,
    ErrorCode.billing_unavailable: 503,
    ErrorCode.port_unreachable: 502,
    ErrorCode.ports_unsupported: 422,
    ErrorCode.token_invalid: 403,
    ErrorCode.token_expired: 401,
    ErrorCode.internal: 500,
}


class Problem(BaseModel):
    """RFC 9457 problem details, with Hutch's stable `code` and optional field errors."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: ErrorCode
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Per-field problems: loc, msg and, where known, allowed values"
    )


class HutchError(Exception):
    """An error with a stable code; turned into problem+json at the edge of every server."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        *,
        status: int | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status or ERROR_STATUS.get(code, 400)
        self.errors = errors
        self.headers = headers or {}

    def problem(self, instance: str | None = None) -> Problem:
        """The problem+json body for this error."""
        return Problem(
            title=self.code.value.replace("_", " "),
            status=self.status,
            detail=self.detail,
            code=self.code,
            instance=instance,
            errors=self.errors,
        )


_QUOTED = re.compile(r"'([^']*)'")


def field_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as problem `errors`: where, what, and what is allowed. Never the input
    itself: it may be a secret (an environment value, a key)."""
    out = []
    for e in errors:
        loc = [p for p in e.get("loc", ()) if isinstance(p, str | int)]
        item: dict[str, Any] = {
            "loc": loc,
            "field": ".".join(str(p) for p in loc[1:]) or (str(loc[0]) if loc else ""),
            "msg": e.get("msg", "invalid"),
            "type": e.get("type", "invalid"),
        }
        ctx = {
            k: v for k, v in (e.get("ctx") or {}).items() if isinstance(v, str | int | float | bool)
        }
        if "expected" in ctx and isinstance(ctx["expected"], str):
            choices = _QUOTED.findall(ctx["expected"])
            item["allowed"] = choices or ctx["expected"]
        elif ctx:
            item["allowed"] = ctx
        out.append(item)
    return out
