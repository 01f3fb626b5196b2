"""Byte tunnels to a TCP port on a sandbox's loopback, carried over a WebSocket.

Protocol of `WS /v1/sandboxes/{id}/ports/{port}/connect`:
- the runner connects to the port first, then sends one text frame `{"type": "connected"}`,
  or an error frame `{"type": "error", "code", "detail"}` and closes with 4000 + HTTP status
  (4404 unknown sandbox, 4409 not running, 4422 isolation class without ports, 4502 nothing
  listening);
- afterwards binary frames carry the bytes, in order, both ways (at most 256 KiB per frame from
  the runner); text frames from the client are ignored;
- there is no half-close: when the sandbox side closes, the runner sends what it read and closes
  the WebSocket (1000); when the client closes, the runner closes the TCP connection; when the
  sandbox stops, the runner closes the WebSocket with 1001.
Each direction holds at most one frame in flight: reading waits until the previous frame was
written, so a slow reader slows the writer instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import structlog
from fastapi import WebSocket, WebSocketDisconnect

from hutch.models import ErrorCode, HutchError, SandboxState, StateEvent
from hutch.models.exec import ErrorFrame
from hutch.runner.manager import SandboxManager

log = structlog.get_logger("hutch.runner.tunnel")
CHUNK = 256 * 1024
WS_REFUSED_BASE = 4000
CLOSE_SANDBOX_GONE = 1001


class Tunnels:
    """Open tunnels per sandbox, so stopping a sandbox ends its tunnels at once."""

    def __init__(self) -> None:
        self._open: dict[str, set[asyncio.Event]] = {}

    def count(self, sandbox_id: str | None = None) -> int:
        """Open tunnels (of one sandbox, or all)."""
        if sandbox_id is not None:
            return len(self._open.get(sandbox_id, ()))
        return sum(len(s) for s in self._open.values())

    def sandbox_gone(self, sandbox_id: str) -> None:
        """Signal every tunnel of the sandbox to close."""
        for ev in self._open.get(sandbox_id, set()):
            ev.set()

    async def watch(self, manager: SandboxManager) -> None:
        """Close tunnels of sandboxes as they stop (runs for the app's lifetime)."""
        q = manager.subscribe()
        try:
            while True:
                ev = await q.get()
                if isinstance(ev, StateEvent) and ev.state in (
                    SandboxState.stopping,
                    SandboxState.stopped,
                    SandboxState.failed,
                ):
                    self.sandbox_gone(ev.sandbox_id)
        finally:
            manager.unsubscribe(q)

    async def serve(
        self,
        ws: WebSocket,
        sandbox_id: str,
        port: int,
        connect: Callable[[], Awaitable[socket.socket]],
    ) -> None:
        """Connect, confirm, relay until either side ends or the sandbox stops."""
        await ws.accept()
        try:
            sock = await connect()
        except HutchError as e:
            await _refuse(ws, e)
            return
        except OSError as e:
            await _refuse(ws, HutchError(ErrorCode.internal, f"connect failed: {e.strerror}"))
            return
        gone = asyncio.Event()
        self._open.setdefault(sandbox_id, set()).add(gone)
        try:
            await ws.send_json({"type": "connected"})
            code = await _relay(ws, sock, gone)
            with contextlib.suppress(Exception):
                await ws.close(code=code)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            sock.close()
            live = self._open.get(sandbox_id)
            if live is not None:
                live.discard(gone)
                if not live:
                    del self._open[sandbox_id]


async def _refuse(ws: WebSocket, err: HutchError) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(ErrorFrame(code=err.code.value, detail=err.detail).model_dump_json())
        await ws.close(code=WS_REFUSED_BASE + err.status % 1000)


async def _relay(ws: WebSocket, sock: socket.socket, gone: asyncio.Event) -> int:
    """Pump bytes both ways; returns the WebSocket close code to use."""
    loop = asyncio.get_running_loop()

    async def from_sandbox() -> None:
        while data := await loop.sock_recv(sock, CHUNK):
            await ws.send_bytes(data)

    async def to_sandbox() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data:
                await loop.sock_sendall(sock, data)

    up = asyncio.create_task(from_sandbox())
    down = asyncio.create_task(to_sandbox())
    stop = asyncio.create_task(gone.wait())
    try:
        done, _ = await asyncio.wait({up, down, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (up, down, stop):
            t.cancel()
        for t in (up, down, stop):
            with contextlib.suppress(BaseException):
                await t
    return CLOSE_SANDBOX_GONE if stop in done else 1000
