"""Per-sandbox egress: the link, the packet filter, the resolver and the proxy, as one unit the
runner attaches, updates and detaches. Nothing here outlives `detach` or survives `reconcile`
unless its sandbox does."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import structlog

from hutch.models import ErrorCode, HutchError
from hutch.models.network import NetworkPolicy
from hutch.runtime.network import veth
from hutch.runtime.network.dns import Resolver
from hutch.runtime.network.nft import Link, Table, nft
from hutch.runtime.network.policy import CompiledPolicy
from hutch.runtime.network.proxy import Proxy

log = structlog.get_logger("hutch.runner.network")


def system_resolver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str:
    """The first nameserver the host is configured with."""
    with contextlib.suppress(OSError):
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                return parts[1]
    return "127.0.0.53"


def parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    """`1.2.3.4` or `1.2.3.4:5353`."""
    host, _, port = value.partition(":")
    return host, int(port) if port else default_port


@dataclass
class Attached:
    """One sandbox's live egress."""

    sandbox_id: str
    link: Link
    cp: CompiledPolicy
    resolver: Resolver
    proxy: Proxy


@dataclass(frozen=True)
class LiveSandbox:
    """What reconcile needs to know about an adopted sandbox with a policy."""

    sandbox_id: str
    slot: int
    pid: int
    policy: NetworkPolicy


class Egress:
    """All sandbox links of one runner (tagged so two runners on a host never collide)."""

    def __init__(
        self,
        tag: str,
        pool: str,
        proxy_port: int,
        dns_upstream: str | None,
        forbidden: tuple[str, ...] = (),
    ) -> None:
        self.pool = ipaddress.IPv4Network(pool)
        self.forbidden = tuple(ipaddress.IPv4Network(n) for n in forbidden)
        self.table = Table(tag, pool, proxy_port)
        self.prefix = self.table.prefix
        self.proxy_port = proxy_port
        self.upstream = parse_hostport(dns_upstream or system_resolver(), 53)
        self.attached: dict[int, Attached] = {}
        self._base_ready = False
        self._lock = asyncio.Lock()

    def link(self, slot: int) -> Link:
        """The link a slot uses."""
        return veth.link_for(self.prefix, self.pool, slot)

    async def _compile(self, policy: NetworkPolicy) -> CompiledPolicy:
        return CompiledPolicy(policy, await veth.host_addresses(), self.pool, self.forbidden)

    def _listeners(self, sandbox_id: str, link: Link, cp: CompiledPolicy) -> Attached:
        holder: list[Attached] = []
        resolver = Resolver(link.gateway, 53, self.upstream, lambda: holder[0].cp)
        proxy = Proxy(sandbox_id, link.gateway, self.proxy_port, lambda: holder[0].cp, resolver)
        holder.append(Attached(sandbox_id, link, cp, resolver, proxy))
        return holder[0]

    async def _ensure_base(self) -> None:
        if not self._base_ready:
            if not await self.table.exists():
                await nft(self.table.base_script())
            veth.enable_forwarding()
            self._base_ready = True

    async def attach(self, sandbox_id: str, slot: int, pid: int, policy: NetworkPolicy) -> None:
        """Give a running sandbox a link governed by `policy`; on failure nothing remains."""
        link = self.link(slot)
        cp = await self._compile(policy)
        async with self._lock:
            await self._ensure_base()
        a = self._listeners(sandbox_id, link, cp)
        try:
            # Rules first: the link never carries a packet they have not seen.
            await nft(self.table.sandbox_script(link, cp))
            await veth.create(link, pid)
            await a.resolver.start()
            await a.proxy.start()
            self.attached[slot] = a
            await veth.configure_inside(link, pid)
            await veth.up(link)
        except BaseException:
            self.attached.pop(slot, None)
            await self._teardown(a)
            raise
        log.info("egress_attached", sandbox_id=sandbox_id)

    async def update(self, slot: int, policy: NetworkPolicy) -> None:
        """Swap the policy: new connections see it at once; connections it no longer allows
        are cut (forwarded ones by a TCP reset on their next packet, proxied ones here)."""
        a = self.attached.get(slot)
        if a is None:
            raise HutchError(ErrorCode.internal, "the sandbox has no network link")
        cp = await self._compile(policy)
        await nft(self.table.sandbox_script(a.link, cp))
        a.cp = cp
        a.proxy.recheck()

    async def detach(self, slot: int) -> None:
        """Remove the sandbox's link, rules, counters and listeners. Idempotent; a slot never
        attached costs nothing (after a crash, `reconcile` removes what was left)."""
        a = self.attached.pop(slot, None)
        if a is not None:
            await self._teardown(a)

    async def _teardown(self, a: Attached) -> None:
        with contextlib.suppress(Exception):
            await a.proxy.stop()
        with contextlib.suppress(Exception):
            await a.resolver.stop()
        await self._remove(a.link)

    async def _remove(self, link: Link) -> None:
        await veth.delete(link.ifname)
        with contextlib.suppress(HutchError):
            await nft(self.table.remove_script(link))

    async def reconcile(self, live: list[LiveSandbox]) -> None:
        """After a restart: rebuild the table for the sandboxes still running (one atomic
        transaction), restart their listeners, delete every other link of ours."""
        keep = {self.link(s.slot).ifname for s in live}
        for name in await veth.list_links(self.prefix):
            if name not in keep:
                await veth.delete(name)
        if not live:
            if await self.table.exists():
                await self.table.drop()
            return
        counts = await self.table.counters() if await self.table.exists() else {}
        script = self.table.base_script()
        pending = []
        for s in live:
            link = self.link(s.slot)
            cp = await self._compile(s.policy)
            carry = (counts.get(f"tx_{s.slot}", 0), counts.get(f"rx_{s.slot}", 0))
            script += self.table.sandbox_script(link, cp, carry)
            pending.append(self._listeners(s.sandbox_id, link, cp))
        await nft(script)
        veth.enable_forwarding()
        self._base_ready = True
        for a in pending:
            try:
                await a.resolver.start()
                await a.proxy.start()
            except OSError as e:  # the link vanished with its sandbox meanwhile
                log.warning("egress_listener_failed", sandbox_id=a.sandbox_id, error=str(e))
                await self._teardown(a)
                continue
            self.attached[a.link.slot] = a

    async def counters(self, slot: int) -> tuple[int, int]:
        """Bytes sent and received by the sandbox over its link."""
        if slot not in self.attached:
            return 0, 0
        c = await self.table.counters()
        return c.get(f"tx_{slot}", 0), c.get(f"rx_{slot}", 0)

    async def close(self) -> None:
        """Stop listeners (runner shutdown); links and rules stay for the next start to adopt."""
        for a in self.attached.values():
            with contextlib.suppress(Exception):
                await a.proxy.stop()
            with contextlib.suppress(Exception):
                await a.resolver.stop()
        self.attached.clear()
