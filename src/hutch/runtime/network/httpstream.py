"""Forward a client's HTTP/1 requests one by one, checking the Host of every request.

Without this, a connection opened for an allowed name could carry a second, keep-alive or
pipelined request for another name served from the same address. Request bodies are delimited
by Content-Length or chunked encoding (RFC 9112 §6); after an Upgrade or CONNECT request the
stream is no longer HTTP and passes through unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hutch.runtime.network.sniff import MAX_HEAD, Malformed, http_host

CHUNK = 256 * 1024


class Refused(Exception):
    """A request the policy does not allow (or that cannot be read as HTTP/1)."""


class _Buffered:
    """A reader with bytes already read in front of it."""

    def __init__(self, buf: bytes, r: asyncio.StreamReader) -> None:
        self.buf, self.r = buf, r

    async def more(self) -> bool:
        chunk = await self.r.read(CHUNK)
        self.buf += chunk
        return bool(chunk)

    async def line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD or not await self.more():
                raise Refused("bad chunked body")
        out, self.buf = self.buf[: i + 2], self.buf[i + 2 :]
        return out

    async def copy(self, n: int, w: asyncio.StreamWriter) -> None:
        while n > 0:
            if not self.buf and not await self.more():
                raise Refused("body ended early")
            part, self.buf = self.buf[:n], self.buf[n:]
            w.write(part)
            n -= len(part)
            await w.drain()


def _framing(head: bytes) -> tuple[int, bool, bool]:
    """(content length, chunked, switches protocol) of a request head."""
    lines = head.split(b"\r\n")
    method = lines[0].split(b" ", 1)[0].upper()
    length, chunked, upgrade = 0, False, method == b"CONNECT"
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == b"content-length":
            if not value.isdigit():
                raise Refused("bad Content-Length")
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        elif key == b"upgrade":
            upgrade = True
    return length, chunked, upgrade


async def forward_requests(
    buf: bytes,
    r: asyncio.StreamReader,
    w: asyncio.StreamWriter,
    allowed: Callable[[str | None], Awaitable[bool]],
) -> None:
    """Copy requests from `r` (after `buf`) to `w`, each only if `allowed(its Host)`."""
    src = _Buffered(buf, r)
    while True:
        while (end := src.buf.find(b"\r\n\r\n")) < 0:
            if len(src.buf) > MAX_HEAD:
                raise Refused("request head too long")
            if not await src.more():
                if src.buf:
                    raise Refused("connection ended inside a request head")
                if w.can_write_eof():
                    w.write_eof()
                return
        head, src.buf = src.buf[: end + 4], src.buf[end + 4 :]
        try:
            host = http_host(head)
        except Malformed as e:
            raise Refused(str(e)) from None
        if not await allowed(host):
            raise Refused("host not allowed")
        length, chunked, upgrade = _framing(head)
        w.write(head)
        if upgrade:  # not HTTP from here on
            w.write(src.buf)
            while data := await r.read(CHUNK):
                w.write(data)
                await w.drain()
            if w.can_write_eof():
                w.write_eof()
            return
        if chunked:
            while True:
                size_line = await src.line()
                w.write(size_line)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise Refused("bad chunk size") from None
                if size == 0:
                    while (trailer := await src.line()) != b"\r\n":
                        w.write(trailer)
                    w.write(b"\r\n")
                    break
                await src.copy(size + 2, w)
        else:
            await src.copy(length, w)
        await w.drain()
