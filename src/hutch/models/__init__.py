"""Pydantic wire models: the one source of truth for the API, the SDK and the runner protocol."""

from hutch.models.common import (
    ErrorCode,
    ExecUser,
    HutchError,
    IsolationClass,
    Problem,
    SandboxState,
)
from hutch.models.events import RunnerEvent, StateEvent, UsageHeartbeat
from hutch.models.exec import (
    ExecRequest,
    ExecResult,
    ProcessInfo,
    PtySize,
    SignalRequest,
    StdinRequest,
    Stream,
)
from hutch.models.files import FileInfo, FileType, MakeDir, Rename, WriteInfo
from hutch.models.network import NetworkPolicy
from hutch.models.sandbox import (
    IsolationInfo,
    RunnerCreate,
    RunnerInfo,
    SandboxInfo,
    SandboxSpec,
    SandboxStats,
    SetTimeout,
    TemplateInfo,
)

__all__ = [
    "ErrorCode",
    "ExecRequest",
    "ExecResult",
    "ExecUser",
    "FileInfo",
    "FileType",
    "HutchError",
    "IsolationClass",
    "IsolationInfo",
    "MakeDir",
    "NetworkPolicy",
    "Problem",
    "ProcessInfo",
    "PtySize",
    "Rename",
    "RunnerCreate",
    "RunnerEvent",
    "RunnerInfo",
    "SandboxInfo",
    "SandboxSpec",
    "SandboxState",
    "SandboxStats",
    "SetTimeout",
    "SignalRequest",
    "StateEvent",
    "StdinRequest",
    "Stream",
    "TemplateInfo",
    "UsageHeartbeat",
    "WriteInfo",
]
