"""The runner's nftables table: default-drop egress per sandbox link, enforced on the host side.

We drive the `nft` command (`nft -f -`) rather than a binding: a whole script is applied as
one atomic transaction, so a policy change never leaves a moment with half the rules, and the
only maintained Python binding (libnftables via python3-nftables) is not on PyPI.

Layout: one `inet` table per runner. Base chains dispatch on the interface name through
verdict maps to small per-sandbox chains, so adding, changing or removing one sandbox's rules
touches nothing of the others (and keeps their byte counters).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from hutch.models import ErrorCode, HutchError
from hutch.runtime.network.policy import LOOPBACK, CompiledPolicy

MAPS = ("raw_in", "raw_out", "nat_in", "filter_in", "fwd_in")


@dataclass(frozen=True)
class Link:
    """Host-side view of one sandbox link."""

    slot: int
    ifname: str  # host end
    gateway: str  # host end's address (the sandbox's default route, DNS and proxy)
    address: str  # the sandbox's address


async def nft(script: str | None, *args: str) -> str:
    """Run `nft -f -` with `script` on stdin (or `nft args` without one); raise with nft's
    message on failure."""
    proc = await asyncio.create_subprocess_exec(
        "nft",
        *(args if script is None else ("-f", "-")),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(script.encode() if script is not None else b"")
    if proc.returncode != 0:
        raise HutchError(ErrorCode.internal, f"nftables refused the rules: {err.decode()[:500]}")
    return out.decode()


def _set(nets: list[str]) -> str:
    return "{ " + ", ".join(nets) + " }"


class Table:
    """One runner's table (`inet hutch_<tag>`)."""

    def __init__(self, tag: str, pool: str, proxy_port: int, dns_port: int = 53) -> None:
        self.name = f"hutch_{tag}"
        self.prefix = f"hx{tag}"
        self.pool = pool
        self.proxy_port = proxy_port
        self.dns_port = dns_port

    def base_script(self) -> str:
        """Create the table from nothing (replacing any previous one atomically)."""
        t, p = self.name, self.prefix
        maps = "\n".join(f"  map {m} {{ type ifname : verdict; }}" for m in MAPS)
        return f"""table inet {t}
delete table inet {t}
table inet {t} {{
{maps}
  chain prerouting_raw {{
    type filter hook prerouting priority raw; policy accept;
    iifname vmap @raw_in
    iifname "{p}*" drop
  }}
  chain prerouting_nat {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname vmap @nat_in
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname vmap @filter_in
    iifname "{p}*" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname vmap @fwd_in
    iifname "{p}*" drop
    oifname "{p}*" ct state established,related accept
    oifname "{p}*" drop
  }}
  chain postrouting_nat {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname != "{p}*" ip saddr {self.pool} masquerade
  }}
  chain postrouting_raw {{
    type filter hook postrouting priority 300; policy accept;
    oifname vmap @raw_out
  }}
}}
"""

    def sandbox_script(
        self, link: Link, cp: CompiledPolicy, carry: tuple[int, int] = (0, 0)
    ) -> str:
        """Add or replace one sandbox's chains (one transaction). `carry`: byte counts (sent,
        received) its counters start from when the table is rebuilt."""
        t, n, i = self.name, link.slot, link.ifname
        chains = {
            "raw_in": f"raw_in_{n}",
            "raw_out": f"raw_out_{n}",
            "nat_in": f"nat_{n}",
            "filter_in": f"in_{n}",
            "fwd_in": f"fwd_{n}",
        }
        lines = [
            f"add counter inet {t} tx_{n} {{ packets 0 bytes {carry[0]} }}",
            f"add counter inet {t} rx_{n} {{ packets 0 bytes {carry[1]} }}",
        ]
        for c in chains.values():
            lines += [f"add chain inet {t} {c}", f"flush chain inet {t} {c}"]

        def rule(chain: str, body: str) -> None:
            lines.append(f"add rule inet {t} {chain} {body}")

        rule(f"raw_in_{n}", f'counter name "tx_{n}"')
        rule(f"raw_in_{n}", "meta nfproto != ipv4 drop")
        rule(f"raw_in_{n}", f"ip saddr != {link.address} drop")  # no spoofed sources
        rule(f"raw_out_{n}", f'counter name "rx_{n}"')
        # DNS always goes to this sandbox's resolver, whatever server the sandbox asks.
        rule(f"nat_{n}", f"meta l4proto {{ tcp, udp }} th dport 53 redirect to :{self.dns_port}")
        if cp.uses_proxy():
            if cp.allow:
                rule(f"nat_{n}", f"ip daddr {_set([str(a) for a in cp.allow])} return")
            rule(f"nat_{n}", f"tcp dport {{ 80, 443 }} redirect to :{self.proxy_port}")
        # To the host itself: only this sandbox's resolver and proxy, on its own gateway.
        gw = link.gateway
        rule(
            f"in_{n}", f"ip daddr {gw} meta l4proto {{ tcp, udp }} th dport {self.dns_port} accept"
        )
        rule(f"in_{n}", f"ip daddr {gw} tcp dport {self.proxy_port} accept")
        rule(f"in_{n}", "meta l4proto tcp reject with tcp reset")
        rule(f"in_{n}", "reject with icmpx type admin-prohibited")
        # Forwarded traffic: every packet is checked (not just new connections), so a policy
        # change also cuts existing connections: their next packet gets a TCP reset.
        fwd = f"fwd_{n}"
        rule(fwd, f"ip daddr {LOOPBACK} drop")
        # Before any allow rule: an accept ends the chain, so these must come first.
        never = _set([str(n) for n in cp.never])
        rule(fwd, f"ip daddr {never} meta l4proto tcp reject with tcp reset")
        rule(fwd, f"ip daddr {never} reject with icmpx type admin-prohibited")
        if cp.deny:
            deny = _set([str(d) for d in cp.deny])
            rule(fwd, f"ip daddr {deny} meta l4proto tcp reject with tcp reset")
            rule(fwd, f"ip daddr {deny} reject with icmpx type admin-prohibited")
        if cp.allow:
            rule(fwd, f"ip daddr {_set([str(a) for a in cp.allow])} accept")
        if cp.policy.allow_public:
            blocked = _set([str(b) for b in cp.blocked])
            rule(fwd, f"ip daddr {blocked} meta l4proto tcp reject with tcp reset")
            rule(fwd, f"ip daddr {blocked} reject with icmpx type admin-prohibited")
            rule(fwd, "accept")
        rule(fwd, "meta l4proto tcp reject with tcp reset")
        rule(fwd, "reject with icmpx type admin-prohibited")
        for m, c in chains.items():
            lines.append(f'add element inet {t} {m} {{ "{i}" : goto {c} }}')
        return "\n".join(lines) + "\n"

    def remove_script(self, link: Link) -> str:
        """Remove one sandbox's chains and counters (one transaction)."""
        t, n, i = self.name, link.slot, link.ifname
        lines = [f'delete element inet {t} {m} {{ "{i}" }}' for m in MAPS]
        lines += [
            f"delete chain inet {t} {c}_{n}" for c in ("raw_in", "raw_out", "nat", "in", "fwd")
        ]
        lines += [f"delete counter inet {t} tx_{n}", f"delete counter inet {t} rx_{n}"]
        return "\n".join(lines) + "\n"

    async def counters(self) -> dict[str, int]:
        """Every byte counter of the table by name (`tx_<slot>`, `rx_<slot>`)."""
        out = await nft(None, "-j", "list", "counters", "table", "inet", self.name)
        result: dict[str, int] = {}
        for item in json.loads(out).get("nftables", []):
            c = item.get("counter")
            if c is not None:
                result[c["name"]] = int(c["bytes"])
        return result

    async def exists(self) -> bool:
        """Whether the table is present."""
        try:
            await nft(f"list table inet {self.name}\n")
        except HutchError:
            return False
        return True

    async def drop(self) -> None:
        """Delete the table if present."""
        await nft(f"table inet {self.name}\ndelete table inet {self.name}\n")
