"""Sandbox create/info/stats models, shared by the runner protocol, the API and the SDK."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import Field, field_validator

from hutch.models.common import (
    DEFAULT_DISK_MB,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    DEFAULT_VCPU,
    DISK_MB_MAX,
    DISK_MB_MIN,
    MEMORY_MB_MAX,
    MEMORY_MB_MIN,
    TIMEOUT_S_MAX,
    TIMEOUT_S_MIN,
    VCPU_MAX,
    VCPU_MIN,
    IsolationClass,
    SandboxState,
    WireModel,
)
from hutch.models.network import NetworkPolicy

TEMPLATE_NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_BYTES = 128 * 1024


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Validate environment variables: POSIX names, no NUL bytes, bounded total size."""
    total = 0
    for k, v in env.items():
        if not ENV_NAME_RE.match(k):
            raise ValueError(
                f"environment variable name {k!r} is not allowed: use letters, digits and "
                "underscores, not starting with a digit"
            )
        if "\0" in v:
            raise ValueError(f"environment variable {k!r} contains a NUL byte")
        total += len(k) + len(v.encode()) + 2
    if total > MAX_ENV_BYTES:
        raise ValueError(f"environment is {total} bytes; at most {MAX_ENV_BYTES} are allowed")
    return env


class SandboxSpec(WireModel):
    """What a sandbox is made of; the size fields are what it is billed by."""

    template: str = Field(default="base", pattern=TEMPLATE_NAME_RE)
    isolation: IsolationClass = IsolationClass.namespace
    vcpu: int = Field(default=DEFAULT_VCPU, ge=VCPU_MIN, le=VCPU_MAX)
    memory_mb: int = Field(default=DEFAULT_MEMORY_MB, ge=MEMORY_MB_MIN, le=MEMORY_MB_MAX)
    disk_mb: int = Field(default=DEFAULT_DISK_MB, ge=DISK_MB_MIN, le=DISK_MB_MAX)
    timeout_s: int = Field(default=DEFAULT_TIMEOUT_S, ge=TIMEOUT_S_MIN, le=TIMEOUT_S_MAX)
    env: dict[str, str] = Field(default_factory=dict)
    network: NetworkPolicy | None = Field(
        default=None,
        description="Egress policy; none (the default) means no network but loopback",
    )

    _check_env = field_validator("env")(check_env)


class RunnerCreate(SandboxSpec):
    """Runner protocol: create a sandbox. The caller may choose the id (the control plane
    persists it before asking), otherwise the runner makes one."""

    sandbox_id: str | None = Field(default=None, pattern=r"^sbx_[0-9a-z]{26}$")


class SandboxInfo(WireModel):
    """A sandbox as the runner knows it."""

    sandbox_id: str
    template: str
    isolation: IsolationClass
    vcpu: int
    memory_mb: int
    disk_mb: int
    state: SandboxState
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    network: NetworkPolicy | None = None


class SandboxStats(WireModel):
    """Live resource use of one sandbox."""

    sandbox_id: str
    cpu_time_us: int = Field(description="CPU time used by every process of the sandbox")
    memory_bytes: int
    memory_peak_bytes: int
    memory_limit_bytes: int
    disk_used_bytes: int
    disk_limit_bytes: int
    pids: int
    pids_limit: int
    net_tx_bytes: int = Field(default=0, description="Bytes the sandbox sent over its network link")
    net_rx_bytes: int = Field(default=0, description="Bytes the sandbox received over it")


class SetTimeout(WireModel):
    """Set the absolute lifetime: the sandbox is killed `timeout_s` seconds from now."""

    timeout_s: int = Field(ge=TIMEOUT_S_MIN, le=TIMEOUT_S_MAX)


class TemplateInfo(WireModel):
    """A read-only root filesystem layer sandboxes start from."""

    name: str
    ready: bool
    size_bytes: int | None = None
    built_at: datetime | None = None
    description: str | None = None


class IsolationInfo(WireModel):
    """Whether an isolation class can be used on this runner, and if not, why."""

    isolation: IsolationClass
    available: bool
    reason: str | None = None


class RunnerInfo(WireModel):
    """What a runner offers."""

    version: str
    cgroup_version: int
    cgroup_favor_dynmods: bool = False  # cgroup moves need not wait for RCU (see RunnerSettings)
    isolation: list[IsolationInfo]
    templates: list[TemplateInfo]
    sandboxes: int
