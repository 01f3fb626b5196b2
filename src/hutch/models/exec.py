"""Command execution models: one-shot requests, results, and the streaming frame protocol.

Streaming (runner and API WebSocket): control messages are JSON text frames; output and input are
binary frames whose first byte names the stream (see `Stream`) followed by the raw bytes.
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator

from hutch.models.common import ExecUser, WireModel
from hutch.models.sandbox import check_env

MAX_ARGV_BYTES = 128 * 1024
EXEC_TIMEOUT_MAX_S = 86400


class Stream(IntEnum):
    """First byte of a binary frame."""

    stdin = 0
    stdout = 1
    stderr = 2
    pty = 3  # PTY output (and input, when sent by the client)


class PtySize(WireModel):
    """Terminal size."""

    cols: int = Field(default=80, ge=1, le=1000)
    rows: int = Field(default=24, ge=1, le=1000)


class ExecRequest(WireModel):
    """Run a command. `cmd` is an argv list, or a string run by `/bin/bash -lc`."""

    cmd: list[str] | str
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: ExecUser = ExecUser.user
    stdin: str | None = Field(default=None, description="Text written to stdin, then closed")
    timeout_s: float | None = Field(default=60, gt=0, le=EXEC_TIMEOUT_MAX_S)
    background: bool = False
    pty: PtySize | None = None
    tag: str | None = Field(default=None, max_length=128)

    _check_env = field_validator("env")(check_env)

    @field_validator("cmd")
    @classmethod
    def _check_cmd(cls, v: list[str] | str) -> list[str] | str:
        parts = [v] if isinstance(v, str) else v
        if not parts or (isinstance(v, list) and not v[0]):
            raise ValueError("cmd must be a non-empty argv list or a non-empty shell string")
        if isinstance(v, str) and not v.strip():
            raise ValueError("cmd must be a non-empty argv list or a non-empty shell string")
        if any("\0" in p for p in parts):
            raise ValueError("cmd contains a NUL byte")
        if sum(len(p.encode()) + 1 for p in parts) > MAX_ARGV_BYTES:
            raise ValueError(f"cmd is longer than {MAX_ARGV_BYTES} bytes")
        return v

    @field_validator("cwd")
    @classmethod
    def _check_cwd(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v):
            raise ValueError("cwd must be an absolute path inside the sandbox")
        return v

    def argv(self) -> list[str]:
        """The argv to execute."""
        if isinstance(self.cmd, str):
            return ["/bin/bash", "-lc", self.cmd]
        return list(self.cmd)


class ExecResult(WireModel):
    """Outcome of a finished command."""

    pid: int
    exit_code: int = Field(description="Exit status; 128+N when killed by signal N")
    signal: int | None = Field(default=None, description="Terminating signal, if any")
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    started_at: datetime
    ended_at: datetime


class ProcessInfo(WireModel):
    """A process started through exec that the runner still tracks."""

    pid: int
    cmd: list[str]
    tag: str | None = None
    pty: bool = False
    running: bool
    exit_code: int | None = None
    signal: int | None = None
    started_at: datetime


class SignalRequest(WireModel):
    """Send a signal to a process (default SIGKILL)."""

    signal: int = Field(default=9, ge=1, le=64)


class StdinRequest(WireModel):
    """Write to a background process's stdin; `eof` closes it afterwards."""

    data: str = ""
    eof: bool = False


# --- streaming control frames (JSON text frames) ---


class StartFrame(WireModel):
    """Client → server, first frame on an exec stream."""

    type: Literal["start"] = "start"
    request: ExecRequest


class AttachFrame(WireModel):
    """Client → server, first frame to reconnect to a running process's output."""

    type: Literal["attach"] = "attach"
    pid: int


class ResizeFrame(WireModel):
    """Client → server: PTY size change."""

    type: Literal["resize"] = "resize"
    cols: int = Field(ge=1, le=1000)
    rows: int = Field(ge=1, le=1000)


class CloseStdinFrame(WireModel):
    """Client → server: close the process's stdin."""

    type: Literal["close_stdin"] = "close_stdin"


class SignalFrame(WireModel):
    """Client → server: signal the process."""

    type: Literal["signal"] = "signal"
    signal: int = Field(ge=1, le=64)


ClientFrame = Annotated[
    StartFrame | AttachFrame | ResizeFrame | CloseStdinFrame | SignalFrame,
    Field(discriminator="type"),
]


class StartedFrame(WireModel):
    """Server → client: the process is running."""

    type: Literal["started"] = "started"
    pid: int


class ExitFrame(WireModel):
    """Server → client: the process ended; last frame of the stream."""

    type: Literal["exit"] = "exit"
    exit_code: int
    signal: int | None = None
    timed_out: bool = False


class ErrorFrame(WireModel):
    """Server → client: the request failed; last frame of the stream."""

    type: Literal["error"] = "error"
    code: str
    detail: str


ServerFrame = Annotated[StartedFrame | ExitFrame | ErrorFrame, Field(discriminator="type")]


def exit_code_for(status_code: int | None, signal: int | None) -> int:
    """Shell convention: a process killed by signal N reports exit code 128+N."""
    if signal:
        return 128 + signal
    return status_code or 0


