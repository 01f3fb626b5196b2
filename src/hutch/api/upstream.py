"""HTTP/1.1 to a sandbox port over runner tunnels, full duplex, with kept-alive tunnels.

Written on h11 rather than a client library because a proxy must read the app's answer while
it still sends the request body: an app that answers as it reads (an echo, a stream transform,
an early 413) would otherwise deadlock with a client that first sends everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import h11
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from hutch.services.runner_port import PortStream, RunnerPort

CHUNK = 256 * 1024
IDLE_S = 15.0
MAX_IDLE_PER_PORT = 16
MAX_HEADER_BYTES = 64 * 1024

Key = tuple[str, int]
StartResponse = Callable[[int, list[tuple[bytes, bytes]]], Awaitable[None]]
SendBody = Callable[[bytes, bool], Awaitable[None]]


class UpstreamBroken(Exception):
    """The app closed or garbled the connection before a complete answer began."""


class TunnelPool:
    """Idle, kept-alive tunnels per sandbox port (at most 16 each, for 15 s)."""

    def __init__(self, runner: Callable[[], RunnerPort]) -> None:
        self.runner = runner
        self._idle: dict[Key, list[tuple[PortStream, float]]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _close_later(self, stream: PortStream) -> None:
        t = asyncio.get_running_loop().create_task(stream.aclose())
        self._closing.add(t)
        t.add_done_callback(self._closing.discard)

    def _sweep(self, now: float) -> None:
        for key in list(self._idle):
            keep = []
            for stream, since in self._idle[key]:
                if now - since > IDLE_S or stream.at_eof():
                    self._close_later(stream)
                else:
                    keep.append((stream, since))
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def acquire(self, key: Key, reuse: bool) -> tuple[PortStream, bool]:
        """A tunnel to the port: an idle one when `reuse` allows, else a new one."""
        self._sweep(time.monotonic())
        idle = self._idle.get(key)
        if reuse and idle:
            return idle.pop()[0], True
        return await self.runner().open_port(*key), False

    def release(self, key: Key, stream: PortStream) -> None:
        """Keep a tunnel whose last exchange ended cleanly."""
        now = time.monotonic()
        self._sweep(now)
        idle = self._idle.setdefault(key, [])
        if len(idle) >= MAX_IDLE_PER_PORT:
            self._close_later(stream)
        else:
            idle.append((stream, now))

    async def sweep_periodically(self) -> None:
        """Close tunnels idle for too long even when no request comes (runs with the app)."""
        while True:
            await asyncio.sleep(IDLE_S / 3)
            self._sweep(time.monotonic())

    async def aclose(self) -> None:
        """Close every idle tunnel."""
        for idle in self._idle.values():
            for stream, _ in idle:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        self._idle.clear()
        for t in list(self._closing):
            with contextlib.suppress(BaseException):
                await t


async def exchange(
    pool: TunnelPool,
    key: Key,
    request: h11.Request,
    has_body: bool,
    receive: Receive,
    start: StartResponse,
    send_body: SendBody,
) -> None:
    """One request and its answer. A bodiless request may reuse a kept-alive tunnel and is
    retried once on a fresh one if that tunnel turns out dead; a request with a body always
    gets a fresh tunnel (it cannot be replayed). Raises UpstreamBroken before any answer."""
    for attempt in (0, 1):
        stream, reused = await pool.acquire(key, reuse=not has_body and attempt == 0)
        try:
            clean = await _one(stream, request, has_body, receive, start, send_body)
        except UpstreamBroken:
            await stream.aclose()
            if reused:
                continue
            raise
        except BaseException:
            await stream.aclose()
            raise
        if clean:
            pool.release(key, stream)
        else:
            await stream.aclose()
        return
    raise UpstreamBroken("no answer")


async def _one(
    stream: PortStream,
    request: h11.Request,
    has_body: bool,
    receive: Receive,
    start: StartResponse,
    send_body: SendBody,
) -> bool:
    """Run one exchange on `stream`; True if the tunnel may be kept for another."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
    head = conn.send(request)
    if not has_body:  # the whole request in one write; nothing left for the client side
        head += conn.send(h11.EndOfMessage())
    try:
        await stream.write(head)
    except ConnectionError as e:
        raise UpstreamBroken(str(e)) from None
    gone = asyncio.Event()  # the client disconnected
    client = asyncio.create_task(_client_side(stream, conn, has_body, receive, gone))
    started = False
    try:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                if started:
                    return False
                raise UpstreamBroken(f"not HTTP/1.1: {e}") from None
            if event is h11.NEED_DATA:
                data = await stream.read(CHUNK)
                if gone.is_set():
                    return False
                conn.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and the like: the API server speaks for itself
            if isinstance(event, h11.Response):
                await start(event.status_code, list(event.headers.raw_items()))
                started = True
            elif isinstance(event, h11.Data):
                await send_body(bytes(event.data), True)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                if not started:
                    raise UpstreamBroken("the connection closed before an answer")
                # Stop watching the client first: finishing the response makes the server
                # report a disconnect, which must not close a tunnel that is fine.
                await _stop(client)
                await send_body(b"", False)
                break
    finally:
        await _stop(client)
    return (
        conn.our_state is h11.DONE
        and conn.their_state is h11.DONE
        and not conn.trailing_data[0]
        and not gone.is_set()
    )


async def _stop(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def _client_side(
    stream: PortStream, conn: h11.Connection, has_body: bool, receive: Receive, gone: asyncio.Event
) -> None:
    """Send the request body as it arrives, then wait for the client to leave; if it leaves
    early, close the tunnel so the answer stops (an endless stream would otherwise go on)."""
    try:
        try:
            if has_body:
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        raise ClientDisconnect()
                    if msg.get("body"):
                        await stream.write(conn.send(h11.Data(data=msg["body"])))
                    if not msg.get("more_body", False):
                        break
                await stream.write(conn.send(h11.EndOfMessage()))
        except (ConnectionError, h11.LocalProtocolError):
            pass  # the app stopped taking the body; its answer (if any) is still read
        while (await receive())["type"] != "http.disconnect":
            pass
        raise ClientDisconnect()
    except ClientDisconnect:
        gone.set()
        await stream.aclose()
