"""The veth pair between the runner's network namespace and a sandbox's.

We call iproute2 (`ip -batch -`) instead of adding a netlink library: a handful of commands
per sandbox, and iproute2 can create the peer directly inside the sandbox's namespace by pid,
so no name ever collides on the host side.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path

from hutch.models import ErrorCode, HutchError
from hutch.runtime.network.nft import Link

SANDBOX_IFNAME = "eth0"


async def _run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if check and proc.returncode != 0:
        raise HutchError(
            ErrorCode.internal, f"{argv[0]} failed: {err.decode(errors='replace')[:300]}"
        )
    return out.decode()


def link_for(prefix: str, pool: ipaddress.IPv4Network, slot: int) -> Link:
    """The /30 of `slot` in the pool: .1 is the host end, .2 the sandbox."""
    if slot < 0 or (slot + 1) * 4 > pool.num_addresses:
        raise HutchError(
            ErrorCode.capacity_exhausted,
            f"the sandbox address pool {pool} has no room for slot {slot}",
        )
    base = int(pool.network_address) + slot * 4
    return Link(
        slot=slot,
        ifname=f"{prefix}{slot}",
        gateway=str(ipaddress.IPv4Address(base + 1)),
        address=str(ipaddress.IPv4Address(base + 2)),
    )


async def create(link: Link, sandbox_pid: int) -> None:
    """Create the pair (peer inside the sandbox) and address the host end, still down."""
    script = (
        f"link add {link.ifname} type veth peer name {SANDBOX_IFNAME} netns {sandbox_pid}\n"
        f"addr add {link.gateway}/30 dev {link.ifname}\n"
    )
    await _run("ip", "-batch", "-", stdin=script)
    # The sandbox speaks IPv4 only; no IPv6 link-local address on the host end either (it
    # would be assigned when the link goes up).
    Path(f"/proc/sys/net/ipv6/conf/{link.ifname}/disable_ipv6").write_text("1")


async def configure_inside(link: Link, sandbox_pid: int) -> None:
    """Address the sandbox end and route everything through the host end."""
    script = (
        f"addr add {link.address}/30 dev {SANDBOX_IFNAME}\n"
        f"link set {SANDBOX_IFNAME} up\n"
        f"route add default via {link.gateway}\n"
    )
    await _run("nsenter", f"--net=/proc/{sandbox_pid}/ns/net", "ip", "-batch", "-", stdin=script)


async def up(link: Link) -> None:
    """Bring the host end up."""
    await _run("ip", "link", "set", link.ifname, "up")


async def delete(ifname: str) -> None:
    """Delete a host end (its peer goes with it); missing is fine."""
    await _run("ip", "link", "del", ifname, check=False)


async def list_links(prefix: str) -> list[str]:
    """Host ends of this runner's links."""
    out = await _run("ip", "-j", "link", "show")
    return [
        i["ifname"] for i in json.loads(out or "[]") if str(i.get("ifname", "")).startswith(prefix)
    ]


async def host_addresses() -> frozenset[ipaddress.IPv4Address]:
    """Every IPv4 address of the runner's network namespace."""
    out = await _run("ip", "-j", "-4", "addr", "show")
    addrs = set()
    for i in json.loads(out or "[]"):
        for a in i.get("addr_info", []):
            if a.get("family") == "inet":
                addrs.add(ipaddress.IPv4Address(a["local"]))
    return frozenset(addrs)


def enable_forwarding() -> None:
    """Routed egress needs IPv4 forwarding in the runner's namespace; our table's forward
    chain only lets sandbox traffic through as its policy allows."""
    p = Path("/proc/sys/net/ipv4/ip_forward")
    if p.read_text().strip() != "1":
        p.write_text("1")
