"""A sandbox's resolver: answers only names its policy allows, forwarding them upstream.

It listens on the sandbox link's host end (UDP and TCP 53; the packet filter redirects every
DNS packet of the sandbox here, whatever server the sandbox asks). It remembers the addresses it
handed out so the proxy can check that a TLS SNI / HTTP Host really resolves to the address the
sandbox connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import structlog
from dnslib import QTYPE, RCODE, DNSRecord

from hutch.runtime.network import upstream
from hutch.runtime.network.policy import CompiledPolicy

log = structlog.get_logger("hutch.runner.dns")
IPv4 = ipaddress.IPv4Address
MIN_TTL, MAX_TTL = 60, 3600  # clients keep addresses a while; the proxy must still accept them
UPSTREAM_TIMEOUT = 3.0
MAX_NAMES = 4096  # remembered names per sandbox
MAX_PENDING = 128  # queries in flight per sandbox; more are dropped (clients retry)


def normalize(name: str) -> str:
    """Lower-case name without the trailing dot."""
    return name.rstrip(".").lower()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.resolver.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.resolver.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class Resolver:
    """Per-sandbox policy-checking forwarder on `bind`:`port`."""

    def __init__(
        self,
        bind: str,
        port: int,
        upstream: tuple[str, int],
        policy: Callable[[], CompiledPolicy],
    ) -> None:
        self.bind, self.port, self.upstream, self.policy = bind, port, upstream, policy
        self.cache: dict[str, dict[IPv4, float]] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a reply in the background, tracked so `stop` can cancel it; beyond
        MAX_PENDING the query is dropped, so a flood costs the runner bounded memory."""
        if len(self._tasks) >= MAX_PENDING:
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Listen on UDP and TCP."""
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self.bind, self.port)
        )
        self._tcp = await asyncio.start_server(self._tcp_client, self.bind, self.port)

    async def stop(self) -> None:
        """Stop listening and drop pending replies."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1)
        for t in list(self._tasks):
            t.cancel()

    async def _tcp_client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= MAX_PENDING:
            w.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            while True:
                (n,) = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), 10))
                reply = await self.answer(await asyncio.wait_for(r.readexactly(n), 10))
                if reply is None:
                    break
                w.write(struct.pack("!H", len(reply)) + reply)
                await w.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, struct.error):
            pass
        finally:
            w.close()

    async def answer(self, data: bytes) -> bytes | None:
        """The reply to one query: REFUSED for names the policy does not allow."""
        try:
            q = DNSRecord.parse(data)
        except Exception:  # dnslib raises its own error types for garbage
            return None
        if len(q.questions) != 1:
            reply = q.reply()
            reply.header.rcode = RCODE.FORMERR
            return bytes(reply.pack())
        name = normalize(str(q.q.qname))
        cp = self.policy()
        if not cp.resolvable(name):
            reply = q.reply()
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        if q.q.qtype == QTYPE.AAAA:  # sandboxes speak IPv4 only
            return bytes(q.reply().pack())
        try:
            answer = await self._forward(q)
        except Exception:  # timeout, unreachable, or an upstream reply dnslib cannot parse
            reply = q.reply()
            reply.header.rcode = RCODE.SERVFAIL
            return bytes(reply.pack())
        answer.header.id = q.header.id
        kept = []
        for rr in answer.rr:
            if rr.rtype == QTYPE.A:
                ip = IPv4(str(rr.rdata))
                if not cp.answer_allowed(ip):
                    continue  # no rebinding to the host, its loopback or private ranges
                self._remember(name, ip, rr.ttl)
            elif rr.rtype == QTYPE.AAAA:
                continue
            kept.append(rr)
        answer.rr = kept
        return bytes(answer.pack())

    async def _forward(self, q: DNSRecord) -> DNSRecord:
        """Ask the upstream server (UDP, then TCP if the answer was truncated)."""
        fresh = DNSRecord.question(str(q.q.qname), QTYPE.get(q.q.qtype))
        packet = bytes(fresh.pack())
        reply = DNSRecord.parse(await upstream.udp(self.upstream, packet, UPSTREAM_TIMEOUT))
        if reply.header.tc:
            reply = DNSRecord.parse(await upstream.tcp(self.upstream, packet, UPSTREAM_TIMEOUT))
        return reply

    def _remember(self, name: str, ip: IPv4, ttl: int) -> None:
        if name not in self.cache and len(self.cache) >= MAX_NAMES:
            del self.cache[next(iter(self.cache))]  # oldest first: memory stays bounded
        self.cache.setdefault(name, {})[ip] = time.monotonic() + min(max(ttl, MIN_TTL), MAX_TTL)

    def known(self, name: str) -> frozenset[IPv4]:
        """Addresses handed out for `name` that have not expired."""
        now = time.monotonic()
        entries = self.cache.get(name, {})
        for ip in [ip for ip, exp in entries.items() if exp < now]:
            del entries[ip]
        return frozenset(entries)

    async def addresses(self, name: str, want: IPv4) -> frozenset[IPv4]:
        """Addresses of `name`: from memory if `want` is among them, otherwise asked afresh."""
        name = normalize(name)
        known = self.known(name)
        if want in known:
            return known
        q = DNSRecord.question(name, "A")
        with contextlib.suppress(Exception):  # no answer: the proxy refuses the connection
            reply = await self._forward(q)
            for rr in reply.rr:
                if rr.rtype == QTYPE.A:
                    self._remember(name, IPv4(str(rr.rdata)), rr.ttl)
        return self.known(name)
