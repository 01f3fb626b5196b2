"""A sandbox's transparent HTTP/HTTPS proxy: lets a connection through only when its
Host header / TLS SNI is allowed and really resolves to the address the sandbox dialled.

The packet filter redirects the sandbox's TCP 80/443 here; the kernel keeps the original
destination (SO_ORIGINAL_DST). We connect to that original address, and only after checking it
is among the addresses the sandbox's own resolver gives for the name. Connecting to the
original address (rather than re-resolving and picking one) keeps the client's choice among
several A records and its connection reuse; the check makes a forged SNI/Host on a raw-IP
connection useless, since the address must belong to the allowed name. TLS is never
terminated: the bytes pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from hutch.runtime.network.dns import Resolver
from hutch.runtime.network.httpstream import Refused, forward_requests
from hutch.runtime.network.policy import CompiledPolicy
from hutch.runtime.network.sniff import Malformed, NeedMore, server_name

log = structlog.get_logger("hutch.runner.proxy")
IPv4 = ipaddress.IPv4Address
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
CHUNK = 256 * 1024
MAX_CONNECTIONS = 1024  # per sandbox: bounds the runner's file descriptors and memory
FORBIDDEN = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 39\r\n\r\nblocked by the sandbox's egress policy\n"
)


def original_dst(sock: socket.socket) -> tuple[IPv4, int]:
    """Where the sandbox meant to connect before the redirect."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return IPv4(raw[4:8]), int.from_bytes(raw[2:4], "big")


@dataclass(eq=False)
class _Conn:
    names: set[str | None]  # every Host seen on the connection (one for TLS)
    ip: IPv4
    resolved: dict[str | None, frozenset[IPv4]]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def close(self) -> None:
        for w in self.writers:
            with contextlib.suppress(Exception):
                sock = w.get_extra_info("socket")
                if sock is not None:  # RST rather than FIN: the stream is cut, not finished
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                w.close()


class Proxy:
    """Listens on the sandbox link's host end."""

    def __init__(
        self,
        sandbox_id: str,
        bind: str,
        port: int,
        policy: Callable[[], CompiledPolicy],
        resolver: Resolver,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.bind, self.port, self.policy, self.resolver = bind, port, policy, resolver
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_server(self._client, self.bind, self.port)

    async def stop(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.close()
        for t in list(self._handlers):
            t.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    def recheck(self) -> int:
        """Cut connections the current policy no longer allows; how many were cut."""
        cp = self.policy()
        cut = [
            c
            for c in self._conns
            if not all(cp.proxy_allowed(n, c.ip, c.resolved[n]) for n in c.names)
        ]
        for c in cut:
            c.close()
            self._conns.discard(c)
        return len(cut)

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._handlers) >= MAX_CONNECTIONS:
            w.close()
            return
        self._handlers.add(task)
        try:
            await self._serve(r, w)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, Refused):
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ip, port = original_dst(w.get_extra_info("socket"))
        if str(ip) == self.bind:
            return  # someone dialled the proxy itself
        head = b""
        kind, name = "unknown", None
        async with asyncio.timeout(HEAD_TIMEOUT):
            while True:
                chunk = await r.read(CHUNK)
                if not chunk:
                    return
                head += chunk
                try:
                    kind, name = server_name(head)
                    break
                except NeedMore:
                    continue
                except Malformed:
                    break
        resolved = await self._resolved(name, ip)
        if not self.policy().proxy_allowed(name, ip, resolved):
            log.info("egress_refused", sandbox_id=self.sandbox_id, kind=kind, port=port)
            if kind == "http":
                w.write(FORBIDDEN)
                with contextlib.suppress(OSError):
                    await w.drain()
            return
        async with asyncio.timeout(CONNECT_TIMEOUT):
            ur, uw = await asyncio.open_connection(str(ip), port)
        conn = _Conn({name}, ip, {name: resolved}, [w, uw])
        self._conns.add(conn)

        async def allowed(host: str | None) -> bool:
            if host not in conn.names:
                conn.resolved[host] = await self._resolved(host, ip)
                conn.names.add(host)
            return self.policy().proxy_allowed(host, ip, conn.resolved[host])

        try:
            if kind == "http":
                upstream = forward_requests(head, r, uw, allowed)
            else:
                uw.write(head)
                upstream = _pipe(r, uw)
            await asyncio.gather(upstream, _pipe(ur, w))
        except Refused:
            log.info("egress_refused", sandbox_id=self.sandbox_id, kind=kind, port=port)
            conn.close()
        finally:
            self._conns.discard(conn)
            uw.close()

    async def _resolved(self, name: str | None, ip: IPv4) -> frozenset[IPv4]:
        """What an allowed `name` resolves to (nothing to look up for other names)."""
        if name is not None and self.policy().name_allowed(name):
            return await self.resolver.addresses(name, ip)
        return frozenset()


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side."""
    try:
        while True:
            data = await r.read(CHUNK)
            if not data:
                break
            w.write(data)
            await w.drain()
        if w.can_write_eof():
            w.write_eof()
    except (OSError, RuntimeError):
        w.close()
