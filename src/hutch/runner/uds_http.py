"""A small HTTP/1.1 client for the runner's short JSON calls over its unix socket.

Every exec, create and kill crosses this socket, so its cost is on the API's hot path. A
general client (httpx) spends about 2 ms of CPU per request on layers this path does not use
(URL merging, auth and redirect handling, async-library detection, a generic pool). This one
writes the request in one buffer and reads a Content-Length or chunked answer from a pool of
keep-alive connections. Streamed file bodies and WebSockets stay on httpx and websockets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

# The runner's server closes idle keep-alive connections after 5 s; reuse them well before, so
# a request never races that close (a request that might have reached the runner is never
# sent twice).
IDLE_S = 2.0
MAX_IDLE = 64
MAX_CONNECTIONS = 256  # at once; an exec holds its connection until the command ends
HEAD_MAX = 64 * 1024


class RunnerTransportError(OSError):
    """The runner could not be reached, or its answer was cut off or malformed."""


class Answer:
    """A complete response: status, headers (lower-case names) and body."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code")

    def __init__(
        self, status_code: int, reason_phrase: str, headers: dict[str, str], content: bytes
    ) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class UnixHTTP:
    """Requests with small bodies to one unix-socket HTTP server, over reused connections."""

    def __init__(self, socket_path: str, timeout: float, connect_timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._idle: list[_Conn] = []
        self._closed = False
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
    ) -> Answer:
        """Send one request and read the whole answer (raises RunnerTransportError)."""
        target = quote(path, safe="/:@-._~!$&'()*+,;=")
        if params:
            target += "?" + urlencode({k: str(v) for k, v in params.items()})
        body = b"" if json_body is None else json.dumps(json_body).encode()
        head = f"{method} {target} HTTP/1.1\r\nHost: runner\r\nContent-Length: {len(body)}\r\n"
        if json_body is not None:
            head += "Content-Type: application/json\r\n"
        data = (head + "\r\n").encode("latin-1") + body
        async with self._slots:
            return await self._exchange(method, data)

    async def _exchange(self, method: str, data: bytes) -> Answer:
        conn = await self._checkout()
        try:
            async with asyncio.timeout(self.timeout):
                conn.writer.write(data)
                answer, reusable = await _read_answer(conn.reader, method)
        except BaseException as e:
            conn.close()
            if isinstance(e, TimeoutError):  # (an OSError too: test it first)
                raise RunnerTransportError(
                    f"the runner did not answer within {self.timeout:g} s"
                ) from e
            if isinstance(e, (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)):
                raise RunnerTransportError(f"the runner connection failed: {e!r}") from e
            raise
        if reusable and not self._closed and len(self._idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    async def _checkout(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < IDLE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        if self._closed:
            raise RunnerTransportError("the runner client is closed")
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_unix_connection(
                    self.socket_path, limit=HEAD_MAX
                )
        except (OSError, TimeoutError) as e:
            raise RunnerTransportError(f"cannot connect to {self.socket_path}: {e!r}") from e
        return _Conn(reader, writer)

    async def aclose(self) -> None:
        """Close every idle connection; later requests fail."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def _read_answer(reader: asyncio.StreamReader, method: str) -> tuple[Answer, bool]:
    """Read one response; returns it and whether the connection may carry another request."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise RunnerTransportError(f"malformed status line from the runner: {lines[0][:80]!r}")
        status = int(parts[1])
        if not 100 <= status < 200 or status == 101:
            break
        # An interim answer (100 Continue, 103 Early Hints): the real one follows.
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise RunnerTransportError(f"malformed header from the runner: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
    if status == 101:
        raise RunnerTransportError("the runner switched protocols on a plain request")
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit():
            raise RunnerTransportError(f"malformed Content-Length from the runner: {length!r}")
        body = await reader.readexactly(int(length))
    else:  # delimited by the end of the connection
        body, keep = await reader.read(), False
    return Answer(status, parts[2] if len(parts) > 2 else "", headers, body), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = (await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise RunnerTransportError(
                f"malformed chunk size from the runner: {size_line!r}"
            ) from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise RunnerTransportError("malformed chunk from the runner")
