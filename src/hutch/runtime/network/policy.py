"""A sandbox's egress policy compiled into the decisions the packet filter, the proxy and the
resolver take. One object, so the three enforcement points can never disagree."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from hutch.models.network import NetworkPolicy, domain_matches

IPv4 = ipaddress.IPv4Address
Net = ipaddress.IPv4Network

# Never reachable, whatever the policy says.
LOOPBACK = Net("127.0.0.0/8")
# Not public: reachable only when an allow_cidrs entry names them. (198.18.0.0/15 and the
# TEST-NETs are deliberately not here: nothing routes them publicly, and tests use them.)
NON_PUBLIC = tuple(
    Net(c)
    for c in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT; also some clouds' metadata (100.100.100.200)
        "169.254.0.0/16",  # link-local and the 169.254.169.254 metadata service
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "224.0.0.0/3",  # multicast, reserved, broadcast
    )
)


def collapse(nets: Iterable[Net]) -> list[Net]:
    """Merge overlapping networks (nftables refuses overlapping interval elements)."""
    return list(ipaddress.collapse_addresses(nets))


@dataclass
class CompiledPolicy:
    """`NetworkPolicy` plus what the host adds: its own addresses and the sandbox pool."""

    policy: NetworkPolicy
    host_addresses: frozenset[IPv4] = frozenset()
    pool: Net = field(default_factory=lambda: Net("10.200.0.0/16"))
    forbidden: tuple[Net, ...] = ()  # the operator's: never reachable, whatever is allowed
    allow: list[Net] = field(init=False)
    deny: list[Net] = field(init=False)

    def __post_init__(self) -> None:
        self.allow = collapse(Net(c) for c in self.policy.allow_cidrs)
        self.deny = collapse(Net(c) for c in self.policy.deny_cidrs)

    @property
    def blocked(self) -> list[Net]:
        """Non-public ranges, the sandbox pool and the host's own addresses."""
        return collapse(
            [*NON_PUBLIC, LOOPBACK, self.pool, *(Net(f"{a}/32") for a in self.host_addresses)]
        )

    @property
    def never(self) -> list[Net]:
        """Beyond any allow rule: the operator's forbidden ranges and the whole sandbox pool
        (other sandboxes, every link's host side)."""
        return collapse([*self.forbidden, self.pool])

    def _is_host(self, ip: IPv4) -> bool:
        # The host, and what no policy may open (the pool holds other sandboxes and every
        # link's gateway; the operator forbids e.g. cloud metadata services).
        if ip in LOOPBACK or ip in self.host_addresses:
            return True
        return any(ip in n for n in self.never)

    def ip_allowed(self, ip: IPv4) -> bool:
        """Whether the sandbox may open a connection to `ip` by address alone."""
        if self._is_host(ip) or any(ip in n for n in self.deny):
            return False
        if any(ip in n for n in self.allow):
            return True
        if any(ip in n for n in self.blocked):
            return False
        return self.policy.allow_public

    def name_denied(self, name: str) -> bool:
        """Whether a deny_domains entry matches."""
        return any(domain_matches(name, p) for p in self.policy.deny_domains)

    def name_allowed(self, name: str) -> bool:
        """Whether an allow_domains entry matches (and no deny entry does)."""
        if self.name_denied(name):
            return False
        return any(domain_matches(name, p) for p in self.policy.allow_domains)

    def resolvable(self, name: str) -> bool:
        """Whether the resolver answers for `name`."""
        if self.name_denied(name):
            return False
        return self.name_allowed(name) or self.policy.allow_public

    def answer_allowed(self, ip: IPv4) -> bool:
        """Whether a resolved address may be handed to the sandbox (no DNS rebinding to the
        host, its loopback or private ranges unless those are explicitly allowed)."""
        if self._is_host(ip) or any(ip in n for n in self.deny):
            return False
        if any(ip in n for n in self.blocked):
            return any(ip in n for n in self.allow)
        return True

    def proxy_allowed(self, name: str | None, ip: IPv4, resolved: frozenset[IPv4]) -> bool:
        """HTTP/HTTPS through the proxy: `name` is the Host/SNI (None when absent), `ip` the
        address the sandbox connected to, `resolved` what `name` resolves to through the
        sandbox's resolver. A domain rule only opens the addresses its name resolves to."""
        if self._is_host(ip) or any(ip in n for n in self.deny):
            return False
        if name is not None and self.name_denied(name):
            return False
        if name is not None and self.name_allowed(name):
            return ip in resolved and self.answer_allowed(ip)
        return self.ip_allowed(ip)

    def uses_proxy(self) -> bool:
        """Whether ports 80/443 must go through the proxy (there are domain rules to check)."""
        p = self.policy
        return bool(p.allow_domains or (p.deny_domains and p.allow_public))
