"""WebSocket shells for the exec stream: `SyncExecStream` (websockets.sync) and
`AsyncExecStream` (websockets.asyncio). They only move frames; `_frames` gives them meaning."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sconnect

from hutch.models.exec import StartedFrame
from hutch.sdk import _frames
from hutch.sdk._ops import sbx_path
from hutch.sdk.config import ConnectionConfig, tls_context
from hutch.sdk.exceptions import (
    APIConnectionError,
    HutchSDKError,
    RequestTimeoutError,
    error_from_problem,
)

# Output frames can be large (a chunk of a big file being cat'ed); the server bounds them.
MAX_MESSAGE = 16 * 1024 * 1024


def _connect_kwargs(config: ConnectionConfig) -> dict[str, Any]:
    secure = config.api_url.startswith("https://")
    return {
        "ssl": tls_context() if secure else None,
        "additional_headers": config.headers(),
        "open_timeout": config.request_timeout,
        "max_size": MAX_MESSAGE,
        "compression": None,
        "user_agent_header": None,
    }


def _handshake_error(e: Exception, config: ConnectionConfig) -> HutchSDKError:
    if isinstance(e, InvalidStatus):
        r = e.response
        return error_from_problem(r.status_code, bytes(r.body or b""), dict(r.headers.raw_items()))
    if isinstance(e, TimeoutError):
        return RequestTimeoutError("opening the exec stream timed out")
    return APIConnectionError(f"cannot open the exec stream at {config.api_url}: {e}")


class SyncExecStream:
    """One exec stream over a blocking WebSocket; safe to send from one thread while another
    reads (websockets' sync connection locks each direction)."""

    def __init__(self, ws: SyncConnection, pid: int, pending: _frames.Event | None) -> None:
        self._ws = ws
        self.pid = pid
        self._pending = pending

    @classmethod
    def open(
        cls, config: ConnectionConfig, sandbox_id: str, first: str, attach_pid: int | None = None
    ) -> SyncExecStream:
        """Connect, send the start/attach frame, and read the server's 'started' answer."""
        url = config.ws_url(sbx_path(sandbox_id, "/exec/stream"))
        try:
            ws = sconnect(url, **_connect_kwargs(config))
            ws.__enter__()  # marks the connection as managed (websockets >= 17 warns otherwise)
        except (InvalidHandshake, OSError, TimeoutError) as e:
            raise _handshake_error(e, config) from e
        try:
            # Refused at once? Then the server's error frame is still there to read below.
            with contextlib.suppress(ConnectionClosed):
                ws.send(first)
            try:
                event = _frames.decode(ws.recv())
            except ConnectionClosed as e:
                raise _closed_error(e) from e
            pid, pending = _first(event, attach_pid)
        except BaseException:
            ws.close()
            raise
        return cls(ws, pid, pending)

    def events(self) -> Iterator[_frames.Event]:
        """Server events until the stream closes."""
        if self._pending is not None:
            ev, self._pending = self._pending, None
            yield ev
        while True:
            try:
                msg = self._ws.recv()
            except ConnectionClosed:
                return
            yield _frames.decode(msg)

    def send_input(self, data: bytes | str, pty: bool = False) -> None:
        """Write to the process's stdin (or PTY)."""
        try:
            self._ws.send(_frames.stdin(data, pty))
        except ConnectionClosed as e:
            raise _frames.stream_closed_early() from e

    def send_control(self, frame: str) -> None:
        """Send a JSON control frame (resize, close_stdin, signal)."""
        try:
            self._ws.send(frame)
        except ConnectionClosed as e:
            raise _frames.stream_closed_early() from e

    def close(self) -> None:
        """Close the stream; a background process keeps running."""
        self._ws.close()


class AsyncExecStream:
    """The asyncio twin of `SyncExecStream`."""

    def __init__(self, ws: AsyncConnection, pid: int, pending: _frames.Event | None) -> None:
        self._ws = ws
        self.pid = pid
        self._pending = pending

    @classmethod
    async def open(
        cls, config: ConnectionConfig, sandbox_id: str, first: str, attach_pid: int | None = None
    ) -> AsyncExecStream:
        """Connect, send the start/attach frame, and read the server's 'started' answer."""
        url = config.ws_url(sbx_path(sandbox_id, "/exec/stream"))
        try:
            ws = await aconnect(url, **_connect_kwargs(config))
        except (InvalidHandshake, OSError, TimeoutError) as e:
            raise _handshake_error(e, config) from e
        try:
            # Refused at once? Then the server's error frame is still there to read below.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(first)
            try:
                event = _frames.decode(await ws.recv())
            except ConnectionClosed as e:
                raise _closed_error(e) from e
            pid, pending = _first(event, attach_pid)
        except BaseException:
            await ws.close()
            raise
        return cls(ws, pid, pending)

    async def events(self) -> AsyncIterator[_frames.Event]:
        """Server events until the stream closes."""
        if self._pending is not None:
            ev, self._pending = self._pending, None
            yield ev
        while True:
            try:
                msg = await self._ws.recv()
            except ConnectionClosed:
                return
            yield _frames.decode(msg)

    async def send_input(self, data: bytes | str, pty: bool = False) -> None:
        """Write to the process's stdin (or PTY)."""
        try:
            await self._ws.send(_frames.stdin(data, pty))
        except ConnectionClosed as e:
            raise _frames.stream_closed_early() from e

    async def send_control(self, frame: str) -> None:
        """Send a JSON control frame (resize, close_stdin, signal)."""
        try:
            await self._ws.send(frame)
        except ConnectionClosed as e:
            raise _frames.stream_closed_early() from e

    async def close(self) -> None:
        """Close the stream; a background process keeps running."""
        await self._ws.close()


# The API closes a refused stream with 4000 + the HTTP status the refusal would have had.
WS_REFUSED_BASE = 4000


def _closed_error(e: ConnectionClosed) -> HutchSDKError:
    """The stream closed before 'started': typed by the close code when the server gave one."""
    code = e.rcvd.code if e.rcvd is not None else None
    if code is not None and WS_REFUSED_BASE + 400 <= code < WS_REFUSED_BASE + 600:
        reason = e.rcvd.reason if e.rcvd is not None else ""
        return error_from_problem(code - WS_REFUSED_BASE, reason or None)
    return _frames.stream_closed_early()


def _first(event: _frames.Event, attach_pid: int | None) -> tuple[int, _frames.Event | None]:
    """pid and any event to replay. An attach may go straight to output; its pid is known."""
    if attach_pid is None or isinstance(event, StartedFrame | _frames.ErrorFrame):
        return _frames.expect_started(event), None
    return attach_pid, event
