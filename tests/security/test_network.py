"""Network: a sandbox has only its own loopback; host services are out of reach."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hutch.runner.client import RunnerClient
from tests.security.conftest import NewSandbox, sh

pytestmark = [pytest.mark.root, pytest.mark.anyio]


@dataclass
class HostListeners:
    """Sockets on the host that a sandbox must not reach."""

    tcp: socket.socket
    udp: socket.socket
    unix: socket.socket
    unix_name: str
    addresses: list[str]

    @property
    def port(self) -> int:
        return int(self.tcp.getsockname()[1])

    @property
    def udp_port(self) -> int:
        return int(self.udp.getsockname()[1])

    def received_nothing(self) -> bool:
        """No TCP or unix connection queued, no datagram arrived."""
        for s in (self.tcp, self.unix):
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            conn.close()
            return False
        try:
            self.udp.recv(100)
        except BlockingIOError:
            return True
        return False


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    return [a["local"] for link in json.loads(out.stdout) for a in link.get("addr_info", [])]


@pytest.fixture
def host_listeners() -> Iterator[HostListeners]:
    """TCP and UDP sockets on every host address and an abstract unix socket, non-blocking."""
    tcp = socket.create_server(("0.0.0.0", 0), backlog=16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    unix = socket.socket(socket.AF_UNIX)
    name = f"hutch-sec-{secrets.token_hex(6)}"
    unix.bind("\0" + name)
    unix.listen(16)
    for s in (tcp, udp, unix):
        s.setblocking(False)
    yield HostListeners(tcp, udp, unix, name, _host_addresses())
    for s in (tcp, udp, unix):
        with contextlib.suppress(OSError):
            s.close()


PROBE = """
import json, os, socket
res = {}
for addr in json.loads(os.environ["ADDRS"]):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((addr, int(os.environ["PORT"])))
        res[addr] = "CONNECTED"
    except OSError as e:
        res[addr] = type(e).__name__ + ":" + str(e.errno)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b"x", (addr, int(os.environ["UDP_PORT"])))
    except OSError:
        pass
u = socket.socket(socket.AF_UNIX)
try:
    u.connect("\\0" + os.environ["UNIX"])
    res["unix"] = "CONNECTED"
except OSError as e:
    res["unix"] = type(e).__name__
print(json.dumps(res))
"""


async def test_host_services_are_unreachable(
    client: RunnerClient, new_sandbox: NewSandbox, host_listeners: HostListeners
) -> None:
    """Protection: network namespace with only `lo`. A TCP/UDP server on the host's 127.0.0.1 and
    on every other host address, and a host abstract unix socket, cannot be reached: loopback
    is the sandbox's own and there is no route out. Without the network namespace the TCP
    connection to the host's 127.0.0.1 would succeed."""
    h = host_listeners
    assert "127.0.0.1" in h.addresses
    sid = await new_sandbox()
    r = await sh(client, sid, "ip -o link | awk -F': ' '{print $2}'; ip -4 route")
    assert r.stdout.split() == ["lo"], f"interfaces/routes besides lo: {r.stdout!r}"

    r = await sh(
        client,
        sid,
        ["python3", "-c", PROBE],
        env={
            "ADDRS": json.dumps(h.addresses),
            "PORT": str(h.port),
            "UDP_PORT": str(h.udp_port),
            "UNIX": h.unix_name,
        },
    )
    res = json.loads(r.stdout)
    assert "CONNECTED" not in res.values(), res
    assert res["127.0.0.1"].startswith("ConnectionRefusedError"), res
    assert res["unix"] == "ConnectionRefusedError", res
    assert h.received_nothing(), "a host listener received a connection or datagram"


async def test_sandbox_cannot_configure_its_network_out(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    """Protection: dropped CAP_NET_ADMIN and no devices to move in. Sandbox root cannot add an
    address, a route or a veth pair that would give it a way out. Without the capability drop
    sandbox root (which owns its network namespace) could create interfaces."""
    sid = await new_sandbox()
    r = await sh(
        client,
        sid,
        "ip link add hx0 type veth peer name hx1; echo rc=$?;"
        " ip addr add 10.99.0.2/24 dev lo; echo rc=$?;"
        " ip route add default dev lo; echo rc=$?;"
        " ip -o link | wc -l",
    )
    lines = r.stdout.split()
    assert lines[:3] == ["rc=2", "rc=2", "rc=2"], r
    assert lines[3] == "1", r
