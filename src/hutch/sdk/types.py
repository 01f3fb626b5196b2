"""Public result types of the SDK (commands, sandboxes, pages)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from hutch.models.common import IsolationClass, SandboxState
from hutch.models.exec import ExecResult, ExitFrame
from hutch.models.network import NetworkPolicy
from hutch.sdk.exceptions import CommandTimeoutError, HutchSDKError


@dataclass
class CommandResult:
    """What a finished command printed and how it ended (like e2b's `CommandResult`)."""

    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None
    pid: int | None = None
    signal: int | None = None
    timed_out: bool = False

    @classmethod
    def from_exec(cls, r: ExecResult) -> CommandResult:
        """From the JSON answer of a one-shot exec (or a wait)."""
        return cls(
            stdout=r.stdout,
            stderr=r.stderr,
            exit_code=r.exit_code,
            error=describe_end(r.exit_code, r.signal, r.timed_out),
            pid=r.pid,
            signal=r.signal,
            timed_out=r.timed_out,
        )

    @classmethod
    def from_exit(cls, pid: int | None, stdout: str, stderr: str, f: ExitFrame) -> CommandResult:
        """From a stream's final ExitFrame and the output gathered before it."""
        return cls(
            stdout=stdout,
            stderr=stderr,
            exit_code=f.exit_code,
            error=describe_end(f.exit_code, f.signal, f.timed_out),
            pid=pid,
            signal=f.signal,
            timed_out=f.timed_out,
        )


def describe_end(exit_code: int, signal: int | None, timed_out: bool) -> str | None:
    """A short human reason for an unsuccessful end, None on success."""
    if timed_out:
        return "command timed out and was killed"
    if signal:
        return f"killed by signal {signal}"
    if exit_code:
        return f"exited with code {exit_code}"
    return None


class CommandExitException(HutchSDKError):
    """A command exited with a non-zero code; carries the whole `CommandResult`."""

    def __init__(self, result: CommandResult) -> None:
        msg = f"Command exited with code {result.exit_code}"
        if result.stderr:
            msg += f" and error:\n{result.stderr[-2000:]}"
        super().__init__(msg, code="command_exit")
        self.result = result
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exit_code = result.exit_code
        self.error = result.error

    def __str__(self) -> str:
        return self.detail


# Kept as an alias so both naming styles work.
CommandExitError = CommandExitException


def check_result(result: CommandResult) -> CommandResult:
    """Raise for a timed-out or non-zero command (e2b semantics), else return it."""
    if result.timed_out:
        raise CommandTimeoutError(
            "command timed out and was killed; pass a larger timeout= (0 for none)",
            result=result,
        )
    if result.exit_code != 0:
        raise CommandExitException(result)
    return result


class SandboxInfo(BaseModel):
    """A sandbox as the API reports it. Unknown fields are kept, so newer servers still parse."""

    model_config = ConfigDict(extra="allow")

    sandbox_id: str
    project_id: str | None = None
    mode: str | None = None
    template: str
    isolation: IsolationClass
    vcpu: int
    memory_mb: int
    disk_mb: int
    state: SandboxState
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    network: NetworkPolicy | None = None


class SandboxPage(BaseModel):
    """One page of `GET /v1/sandboxes`."""

    model_config = ConfigDict(extra="allow")

    items: list[SandboxInfo]
    next_cursor: str | None = None
