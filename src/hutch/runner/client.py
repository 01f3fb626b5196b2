"""Async client of the runner protocol (HTTP + WebSocket over the runner's unix socket)."""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.exceptions import ConnectionClosed

from hutch.models import (
    ErrorCode,
    ExecRequest,
    ExecResult,
    ExecUser,
    FileInfo,
    HutchError,
    MakeDir,
    NetworkPolicy,
    ProcessInfo,
    Rename,
    RunnerCreate,
    RunnerEvent,
    RunnerInfo,
    SandboxInfo,
    SandboxStats,
    SetTimeout,
    SignalRequest,
    StateEvent,
    StdinRequest,
    TemplateInfo,
    UsageHeartbeat,
    WriteInfo,
)
from hutch.models.files import Exists
from hutch.runner.uds_http import Answer, RunnerTransportError, UnixHTTP

BASE = "http://runner"
TUNNEL_FRAME_MAX = 1 << 20


class PortTunnel:
    """An open byte tunnel to a sandbox port (see `hutch.runner.tunnel` for the protocol)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._rest = b""

    async def read(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` bytes; b"" once the sandbox side has closed."""
        while not self._rest:
            try:
                msg = await self._ws.recv()
            except ConnectionClosed:
                return b""
            if isinstance(msg, bytes):
                self._rest = msg
        data, self._rest = self._rest[:max_bytes], self._rest[max_bytes:]
        return data

    async def write(self, data: bytes) -> None:
        """Send bytes; raises ConnectionError once the tunnel is closed."""
        if not data:
            return
        try:
            await self._ws.send(data)
        except ConnectionClosed as e:
            raise ConnectionError("the port tunnel is closed") from e

    def at_eof(self) -> bool:
        """Whether the tunnel has ended (nothing buffered and the WebSocket is closing)."""
        return not self._rest and self._ws.state.name in ("CLOSING", "CLOSED")

    async def aclose(self) -> None:
        """Close the tunnel (and so the TCP connection in the sandbox)."""
        await self._ws.close()


_events: TypeAdapter[StateEvent | UsageHeartbeat] = TypeAdapter(RunnerEvent)


def _raise_for(resp: httpx.Response | Answer) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        code = ErrorCode(body.get("code", "internal"))
        detail = body.get("detail") or body.get("title") or resp.reason_phrase
        errors = body.get("errors")
    except (ValueError, json.JSONDecodeError):
        code, detail, errors = ErrorCode.internal, resp.text[:500], None
    raise HutchError(code, detail, status=resp.status_code, errors=errors)


class RunnerClient:
    """One runner, reached through its unix socket. Use as an async context manager."""

    def __init__(self, socket_path: str | Path, timeout: float = 120.0) -> None:
        self.socket_path = str(socket_path)
        # Short JSON calls (exec, create, kill, ...) go over a lean keep-alive client; streamed
        # file bodies over httpx.
        self._calls = UnixHTTP(self.socket_path, timeout)
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.socket_path),
            base_url=BASE,
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    async def __aenter__(self) -> RunnerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close connections."""
        await self._calls.aclose()
        await self._http.aclose()

    async def _req(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
    ) -> httpx.Response | Answer:
        resp: httpx.Response | Answer
        try:
            if content is not None:
                resp = await self._http.request(method, path, params=params, content=content)
            else:
                resp = await self._calls.request(method, path, params=params, json_body=json)
        except (httpx.TransportError, RunnerTransportError) as e:
            raise HutchError(
                ErrorCode.runner_unavailable,
                f"the runner at {self.socket_path} is unreachable: {e}",
            ) from e
        _raise_for(resp)
        return resp

    # ------------------------------------------------------------------ runner & sandboxes

    async def info(self) -> RunnerInfo:
        """Runner version, isolation classes, templates."""
        return RunnerInfo.model_validate((await self._req("GET", "/v1/health")).json())

    async def templates(self) -> builtins.list[TemplateInfo]:
        """Templates on this runner."""
        r = await self._req("GET", "/v1/templates")
        return [TemplateInfo.model_validate(t) for t in r.json()]

    async def create(self, req: RunnerCreate) -> SandboxInfo:
        """Create a sandbox."""
        r = await self._req("POST", "/v1/sandboxes", json=req.model_dump(mode="json"))
        return SandboxInfo.model_validate_json(r.content)

    async def get(self, sid: str) -> SandboxInfo:
        """One sandbox."""
        return SandboxInfo.model_validate((await self._req("GET", f"/v1/sandboxes/{sid}")).json())

    async def list(self) -> builtins.list[SandboxInfo]:
        """Every sandbox on the runner."""
        r = await self._req("GET", "/v1/sandboxes")
        return [SandboxInfo.model_validate(s) for s in r.json()]

    async def kill(self, sid: str) -> None:
        """Destroy a sandbox."""
        await self._req("DELETE", f"/v1/sandboxes/{sid}")

    async def set_timeout(self, sid: str, req: SetTimeout) -> SandboxInfo:
        """Move the sandbox's deadline."""
        r = await self._req("POST", f"/v1/sandboxes/{sid}/timeout", json=req.model_dump())
        return SandboxInfo.model_validate(r.json())

    async def stats(self, sid: str) -> SandboxStats:
        """Live resource use."""
        r = await self._req("GET", f"/v1/sandboxes/{sid}/stats")
        return SandboxStats.model_validate(r.json())

    async def set_network(self, sid: str, req: NetworkPolicy) -> SandboxInfo:
        """Replace the egress policy of a running sandbox."""
        r = await self._req("PUT", f"/v1/sandboxes/{sid}/network", json=req.model_dump())
        return SandboxInfo.model_validate(r.json())

    # ------------------------------------------------------------------ exec & processes

    async def exec(self, sid: str, req: ExecRequest) -> ExecResult | ProcessInfo:
        """Run a command to completion (an ExecResult), or start it in the background."""
        r = await self._req("POST", f"/v1/sandboxes/{sid}/exec", json=req.model_dump(mode="json"))
        if req.background:
            return ProcessInfo.model_validate_json(r.content)
        return ExecResult.model_validate_json(r.content)

    async def run(self, sid: str, req: ExecRequest) -> ExecResult:
        """Run a command to completion."""
        res = await self.exec(sid, req.model_copy(update={"background": False}))
        assert isinstance(res, ExecResult)
        return res

    async def start(self, sid: str, req: ExecRequest) -> ProcessInfo:
        """Start a background process."""
        res = await self.exec(sid, req.model_copy(update={"background": True}))
        assert isinstance(res, ProcessInfo)
        return res

    async def processes(self, sid: str) -> builtins.list[ProcessInfo]:
        """Processes started through exec."""
        r = await self._req("GET", f"/v1/sandboxes/{sid}/processes")
        return [ProcessInfo.model_validate(p) for p in r.json()]

    async def signal(self, sid: str, pid: int, req: SignalRequest) -> None:
        """Signal a process."""
        body = req.model_dump()
        await self._req("POST", f"/v1/sandboxes/{sid}/processes/{pid}/signal", json=body)

    async def stdin(self, sid: str, pid: int, req: StdinRequest) -> None:
        """Write to a process's stdin."""
        body = req.model_dump()
        await self._req("POST", f"/v1/sandboxes/{sid}/processes/{pid}/stdin", json=body)

    async def wait(self, sid: str, pid: int) -> ExecResult:
        """Wait for a process; output is the last buffered part."""
        r = await self._req("POST", f"/v1/sandboxes/{sid}/processes/{pid}/wait")
        return ExecResult.model_validate(r.json())

    def websocket(self, path: str) -> Any:
        """Open a WebSocket to a runner path (use with `async with`)."""
        return unix_connect(self.socket_path, f"ws://runner{path}", max_size=16 * 1024 * 1024)

    def exec_stream(self, sid: str) -> Any:
        """WebSocket for streaming exec (see hutch.models.exec for the frames)."""
        return self.websocket(f"/v1/sandboxes/{sid}/exec/stream")

    async def open_port(self, sid: str, port: int) -> PortTunnel:
        """A byte tunnel to TCP `port` on the sandbox's loopback; the caller closes it.

        Raises the runner's error (`port_unreachable`, `sandbox_not_running`, …) as HutchError."""
        try:
            ws: ClientConnection = await unix_connect(
                self.socket_path,
                f"ws://runner/v1/sandboxes/{sid}/ports/{port}/connect",
                max_size=TUNNEL_FRAME_MAX,
                max_queue=4,
                compression=None,
            )
        except OSError as e:
            raise HutchError(ErrorCode.runner_unavailable, f"the runner is unreachable: {e}") from e
        try:
            first = await ws.recv()
            frame = json.loads(first) if isinstance(first, str) else {}
        except (ConnectionClosed, ValueError):
            await ws.close()
            raise HutchError(ErrorCode.runner_unavailable, "the runner closed the tunnel") from None
        if frame.get("type") != "connected":
            await ws.close()
            code = frame.get("code", "internal")
            try:
                err = ErrorCode(code)
            except ValueError:
                err = ErrorCode.internal
            raise HutchError(err, str(frame.get("detail") or "the tunnel was refused"))
        return PortTunnel(ws)

    async def events(self) -> AsyncIterator[StateEvent | UsageHeartbeat]:
        """Runner events as they happen, until the connection drops."""
        async with self.websocket("/v1/events") as ws:
            conn: ClientConnection = ws
            async for msg in conn:
                yield _events.validate_json(msg)

    # ------------------------------------------------------------------ files

    async def read_file(self, sid: str, path: str) -> AsyncIterator[bytes]:
        """Stream a file out of the sandbox."""
        req = self._http.build_request("GET", f"/v1/sandboxes/{sid}/files", params={"path": path})
        try:
            resp = await self._http.send(req, stream=True)
        except httpx.TransportError as e:
            raise HutchError(ErrorCode.runner_unavailable, f"the runner is unreachable: {e}") from e
        try:
            if resp.status_code >= 400:
                await resp.aread()
                _raise_for(resp)
            async for chunk in resp.aiter_bytes():
                yield chunk
        finally:
            await resp.aclose()

    async def read_bytes(self, sid: str, path: str) -> bytes:
        """A whole (small) file."""
        return b"".join([c async for c in self.read_file(sid, path)])

    async def write_file(
        self,
        sid: str,
        path: str,
        body: bytes | AsyncIterable[bytes],
        user: ExecUser = ExecUser.user,
    ) -> WriteInfo:
        """Upload a file (streamed when `body` is an async iterable)."""
        r = await self._req(
            "PUT",
            f"/v1/sandboxes/{sid}/files",
            params={"path": path, "user": user.value},
            content=body,
        )
        return WriteInfo.model_validate(r.json())

    async def list_files(self, sid: str, path: str, depth: int = 1) -> builtins.list[FileInfo]:
        """Directory entries."""
        r = await self._req(
            "GET", f"/v1/sandboxes/{sid}/files/list", params={"path": path, "depth": depth}
        )
        return [FileInfo.model_validate(f) for f in r.json()]

    async def stat(self, sid: str, path: str) -> FileInfo:
        """One entry."""
        r = await self._req("GET", f"/v1/sandboxes/{sid}/files/stat", params={"path": path})
        return FileInfo.model_validate(r.json())

    async def exists(self, sid: str, path: str) -> Exists:
        """Whether a path exists."""
        r = await self._req("GET", f"/v1/sandboxes/{sid}/files/exists", params={"path": path})
        return Exists.model_validate(r.json())

    async def mkdir(self, sid: str, req: MakeDir) -> FileInfo:
        """mkdir -p."""
        body = req.model_dump(mode="json")
        r = await self._req("POST", f"/v1/sandboxes/{sid}/files/mkdir", json=body)
        return FileInfo.model_validate(r.json())

    async def rename(self, sid: str, req: Rename) -> FileInfo:
        """Move an entry."""
        r = await self._req("POST", f"/v1/sandboxes/{sid}/files/rename", json=req.model_dump())
        return FileInfo.model_validate(r.json())

    async def remove(self, sid: str, path: str, recursive: bool = False) -> None:
        """Remove an entry."""
        params = {"path": path, "recursive": str(recursive).lower()}
        await self._req("DELETE", f"/v1/sandboxes/{sid}/files", params=params)
