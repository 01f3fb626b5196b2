"""Async client of the runner protocol (HTTP + WebSocket over the runner's unix socket)."""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, unix_connect

from hutch.models import (
    ErrorCode,
    ExecRequest,
    ExecResult,
    FileInfo,
    HutchError,
    MakeDir,
    ProcessInfo,
    Rename,
    RunnerCreate,
    RunnerInfo,
    SandboxInfo,
    SandboxStats,
    SetTimeout,
    SignalRequest,
    StdinRequest,
    TemplateInfo,
    WriteInfo,
)
from hutch.models.files import Exists

BASE = "http://runner"


def _raise_for(resp: httpx.Response) -> None:
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
        await self._http.aclose()

    async def _req(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.TransportError as e:
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
        return SandboxInfo.model_validate(r.json())

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

    async def set_timeout(self, sid: str, timeout_s: int) -> SandboxInfo:
        """Move the sandbox's deadline."""
        body = SetTimeout(timeout_s=timeout_s).model_dump()
        r = await self._req("POST", f"/v1/sandboxes/{sid}/timeout", json=body)
        return SandboxInfo.model_validate(r.json())

    async def stats(self, sid: str) -> SandboxStats:
        """Live resource use."""
        r = await self._req("GET", f"/v1/sandboxes/{sid}/stats")
        return SandboxStats.model_validate(r.json())

    # ------------------------------------------------------------------ exec & processes

    async def exec(self, sid: str, req: ExecRequest) -> ExecResult:
        """Run a command to completion."""
        body = req.model_dump(mode="json", exclude_none=True)
        r = await self._req("POST", f"/v1/sandboxes/{sid}/exec", json=body)
        return ExecResult.model_validate(r.json())

    async def start(self, sid: str, req: ExecRequest) -> ProcessInfo:
        """Start a background process."""
        body = req.model_copy(update={"background": True}).model_dump(mode="json")
        r = await self._req("POST", f"/v1/sandboxes/{sid}/exec", json=body)
        return ProcessInfo.model_validate(r.json())

    async def processes(self, sid: str) -> builtins.list[ProcessInfo]:
        """Processes started through exec."""
        r = await self._req("GET", f"/v1/sandboxes/{sid}/processes")
        return [ProcessInfo.model_validate(p) for p in r.json()]

    async def signal(self, sid: str, pid: int, sig: int = 9) -> None:
        """Signal a process."""
        body = SignalRequest(signal=sig).model_dump()
        await self._req("POST", f"/v1/sandboxes/{sid}/processes/{pid}/signal", json=body)

    async def stdin(self, sid: str, pid: int, data: str = "", eof: bool = False) -> None:
        """Write to a process's stdin."""
        body = StdinRequest(data=data, eof=eof).model_dump()
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

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Runner events as they happen."""
        async with self.websocket("/v1/events") as ws:
            conn: ClientConnection = ws
            async for msg in conn:
                yield json.loads(msg)

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
        self, sid: str, path: str, data: bytes | AsyncIterator[bytes], user: str = "user"
    ) -> WriteInfo:
        """Upload a file (streamed when `data` is an async iterator)."""
        r = await self._req(
            "PUT",
            f"/v1/sandboxes/{sid}/files",
            params={"path": path, "user": user},
            content=data,
        )
        return WriteInfo.model_validate(r.json())

    async def list_dir(self, sid: str, path: str, depth: int = 1) -> builtins.list[FileInfo]:
        """Directory entries."""
        r = await self._req(
            "GET", f"/v1/sandboxes/{sid}/files/list", params={"path": path, "depth": depth}
        )
        return [FileInfo.model_validate(f) for f in r.json()]

    async def stat(self, sid: str, path: str) -> FileInfo:
        """One entry."""
        r = await self._req("GET", f"/v1/sandboxes/{sid}/files/stat", params={"path": path})
        return FileInfo.model_validate(r.json())

    async def exists(self, sid: str, path: str) -> bool:
        """Whether a path exists."""
        r = await self._req("GET", f"/v1/sandboxes/{sid}/files/exists", params={"path": path})
        return Exists.model_validate(r.json()).exists

    async def mkdir(self, sid: str, path: str, user: str = "user") -> FileInfo:
        """mkdir -p."""
        body = MakeDir.model_validate({"path": path, "user": user}).model_dump(mode="json")
        r = await self._req("POST", f"/v1/sandboxes/{sid}/files/mkdir", json=body)
        return FileInfo.model_validate(r.json())

    async def rename(self, sid: str, src: str, dst: str, overwrite: bool = False) -> FileInfo:
        """Move an entry."""
        body = Rename(src=src, dst=dst, overwrite=overwrite).model_dump()
        r = await self._req("POST", f"/v1/sandboxes/{sid}/files/rename", json=body)
        return FileInfo.model_validate(r.json())

    async def remove(self, sid: str, path: str, recursive: bool = False) -> None:
        """Remove an entry."""
        params = {"path": path, "recursive": str(recursive).lower()}
        await self._req("DELETE", f"/v1/sandboxes/{sid}/files", params=params)
