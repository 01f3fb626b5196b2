"""What the API server needs from a runner; `hutch.runner.client.RunnerClient` provides it."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from hutch.models.common import ExecUser
from hutch.models.events import StateEvent, UsageHeartbeat
from hutch.models.exec import (
    ExecRequest,
    ExecResult,
    ProcessInfo,
    SignalRequest,
    StdinRequest,
)
from hutch.models.files import Exists, FileInfo, MakeDir, Rename, WriteInfo
from hutch.models.network import NetworkPolicy
from hutch.models.sandbox import (
    RunnerCreate,
    RunnerInfo,
    SandboxInfo,
    SandboxStats,
    SetTimeout,
    TemplateInfo,
)


class RunnerSocket(Protocol):
    """One open WebSocket to the runner (the `websockets` client connection satisfies this)."""

    async def send(self, message: str | bytes) -> None:
        """Send a text (str) or binary (bytes) frame."""
        ...

    async def recv(self) -> str | bytes:
        """Next frame; raises when the connection is closed."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection."""
        ...


class PortStream(Protocol):
    """A byte tunnel to a TCP port in a sandbox (`RunnerClient.open_port` gives one)."""

    async def read(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` bytes; b"" once the sandbox side has closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Send bytes; raises ConnectionError once closed."""
        ...

    def at_eof(self) -> bool:
        """Whether the tunnel has ended."""
        ...

    async def aclose(self) -> None:
        """Close the tunnel."""
        ...


class RunnerPort(Protocol):
    """The runner protocol as async calls; problem responses raise `HutchError`."""

    async def info(self) -> RunnerInfo:
        """`GET /v1/health`."""
        ...

    async def templates(self) -> builtins.list[TemplateInfo]:
        """Templates on this runner."""
        ...

    async def create(self, req: RunnerCreate) -> SandboxInfo:
        """`POST /v1/sandboxes`."""
        ...

    async def get(self, sandbox_id: str) -> SandboxInfo:
        """`GET /v1/sandboxes/{id}`."""
        ...

    async def list(self) -> builtins.list[SandboxInfo]:
        """`GET /v1/sandboxes`."""
        ...

    async def kill(self, sandbox_id: str) -> None:
        """`DELETE /v1/sandboxes/{id}`."""
        ...

    async def set_timeout(self, sandbox_id: str, req: SetTimeout) -> SandboxInfo:
        """`POST /v1/sandboxes/{id}/timeout`."""
        ...

    async def stats(self, sandbox_id: str) -> SandboxStats:
        """`GET /v1/sandboxes/{id}/stats`."""
        ...

    async def set_network(self, sandbox_id: str, req: NetworkPolicy) -> SandboxInfo:
        """`PUT /v1/sandboxes/{id}/network`."""
        ...

    async def exec(self, sandbox_id: str, req: ExecRequest) -> ExecResult | ProcessInfo:
        """`POST /v1/sandboxes/{id}/exec`: a result, or a ProcessInfo when background."""
        ...

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """`GET /v1/sandboxes/{id}/processes`."""
        ...

    async def signal(self, sandbox_id: str, pid: int, req: SignalRequest) -> None:
        """`POST /v1/sandboxes/{id}/processes/{pid}/signal`."""
        ...

    async def stdin(self, sandbox_id: str, pid: int, req: StdinRequest) -> None:
        """`POST /v1/sandboxes/{id}/processes/{pid}/stdin`."""
        ...

    async def wait(self, sandbox_id: str, pid: int) -> ExecResult:
        """`POST /v1/sandboxes/{id}/processes/{pid}/wait`."""
        ...

    def read_file(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        """`GET /v1/sandboxes/{id}/files`: the body in chunks; errors raise on first `anext`."""
        ...

    async def write_file(
        self, sandbox_id: str, path: str, body: AsyncIterable[bytes], user: ExecUser
    ) -> WriteInfo:
        """`PUT /v1/sandboxes/{id}/files`, streaming `body`."""
        ...

    async def list_files(self, sandbox_id: str, path: str, depth: int) -> builtins.list[FileInfo]:
        """`GET /v1/sandboxes/{id}/files/list`."""
        ...

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """`GET /v1/sandboxes/{id}/files/stat`."""
        ...

    async def exists(self, sandbox_id: str, path: str) -> Exists:
        """`GET /v1/sandboxes/{id}/files/exists`."""
        ...

    async def mkdir(self, sandbox_id: str, req: MakeDir) -> FileInfo:
        """`POST /v1/sandboxes/{id}/files/mkdir`."""
        ...

    async def rename(self, sandbox_id: str, req: Rename) -> FileInfo:
        """`POST /v1/sandboxes/{id}/files/rename`."""
        ...

    async def remove(self, sandbox_id: str, path: str, recursive: bool) -> None:
        """`DELETE /v1/sandboxes/{id}/files`."""
        ...

    def websocket(self, path: str) -> AbstractAsyncContextManager[RunnerSocket]:
        """Open a raw WebSocket to `path` on the runner (for 1:1 proxying)."""
        ...

    async def open_port(self, sandbox_id: str, port: int) -> PortStream:
        """`WS /v1/sandboxes/{id}/ports/{port}/connect`: a byte tunnel the caller closes."""
        ...

    def events(self) -> AsyncIterator[StateEvent | UsageHeartbeat]:
        """`WS /v1/events`: state changes and usage heartbeats until the connection drops."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def connect_runner(socket_path: Path) -> RunnerPort:
    """The runner client for a socket."""
    from hutch.runner.client import RunnerClient

    client: RunnerPort = RunnerClient(socket_path)
    return client
