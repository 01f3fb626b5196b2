"""Egress policy, proven against test hosts in namespaces the test made (see conftest.py)."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest

from hutch.models import (
    ErrorCode,
    ExecRequest,
    ExecUser,
    HutchError,
    IsolationClass,
    NetworkPolicy,
    RunnerCreate,
)
from hutch.runner.client import RunnerClient
from tests.integration.network.conftest import (
    HOST_UPLINK,
    PLAIN,
    PRIVATE,
    WEB,
    NewSandbox,
    World,
    curl,
    resolve,
    sh,
    tcp,
)

pytestmark = [pytest.mark.root, pytest.mark.anyio]

# A DNS query sent straight to a server of the sandbox's choosing (not via resolv.conf);
# prints the response code (5 = REFUSED) and the number of answers.
DNS_PROBE = """
import socket, struct, sys
name = sys.argv[2]
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
q += struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (sys.argv[1], 53))
try:
    r = s.recv(4096)
    print("RCODE", r[3] & 0xF, "ANSWERS", struct.unpack("!H", r[6:8])[0])
except OSError as e:
    print("ERR", type(e).__name__)
"""

# Holds a connection open, then reports when (wall clock) it was cut, or ALIVE after 10 s.
HOLD_TCP = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.makefile().readline()
open("/tmp/connected", "w").close()
end = time.time() + 10
try:
    while time.time() < end:
        s.sendall(b"x")
        if not s.recv(100):
            raise EOFError
        time.sleep(0.02)
    print("ALIVE")
except (OSError, EOFError):
    print("CUT", time.time())
"""

HOLD_HTTP = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.sendall(b"GET /stream HTTP/1.1\\r\\nHost: " + sys.argv[1].encode() + b"\\r\\n\\r\\n")
s.recv(100)
open("/tmp/connected", "w").close()
end = time.time() + 10
try:
    while time.time() < end:
        if not s.recv(100):
            raise EOFError
    print("ALIVE")
except (OSError, EOFError):
    print("CUT", time.time())
"""

MY_ADDRESS = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("198.18.1.1", 9))
a = s.getsockname()[0]
print(a, a.rsplit(".", 1)[0] + "." + str(int(a.rsplit(".", 1)[1]) - 1))
"""


async def _addresses(client: RunnerClient, sid: str) -> tuple[str, str]:
    """(the sandbox's address, its gateway = the host end of its link)."""
    r = await client.run(sid, ExecRequest(cmd=["python3", "-c", MY_ADDRESS]))
    mine, gw = r.stdout.split()
    return mine, gw


async def _wait_file(client: RunnerClient, sid: str, path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await sh(client, sid, f"test -e {path}")).exit_code == 0:
            return
    raise AssertionError(f"{path} never appeared in the sandbox")


async def test_no_network_by_default(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    sid = await new_sandbox()
    assert (await tcp(client, sid, WEB, 7000)).startswith("ERR")
    assert await resolve(client, sid, "ok.test") == ""
    r = await sh(client, sid, "cat /proc/net/dev")
    assert "eth0" not in r.stdout  # no link at all, only loopback


async def test_allowed_cidr_reachable_others_not(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_cidrs=[f"{PLAIN}/32"]))
    assert await tcp(client, sid, PLAIN, 7000) == f"OK banner {PLAIN}"
    assert (await tcp(client, sid, WEB, 7000)).startswith("ERR")
    _, body = await curl(client, sid, f"http://{WEB}/")
    assert "hello" not in body


async def test_deny_cidr_wins(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    sid = await new_sandbox(
        NetworkPolicy(allow_cidrs=["198.18.1.0/24"], deny_cidrs=[f"{PLAIN}/32"])
    )
    assert await tcp(client, sid, WEB, 7000) == f"OK banner {WEB}"
    assert (await tcp(client, sid, PLAIN, 7000)).startswith("ERR")


async def test_allowed_domain_over_http_and_https_other_name_refused(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_domains=["ok.test"]))
    assert await resolve(client, sid, "ok.test") == WEB
    code, body = await curl(client, sid, "http://ok.test/")
    assert (code, body) == (0, f"hello host=ok.test addr={WEB}\n")
    code, body = await curl(client, sid, "https://ok.test/")
    assert (code, body) == (0, f"hello host=ok.test addr={WEB}\n")
    # another name on the same address: DNS refuses it, and dialling the address anyway with
    # that name in Host / SNI is refused by the proxy
    assert await resolve(client, sid, "other.test") == ""
    code, body = await curl(client, sid, "http://other.test/", "--resolve", f"other.test:80:{WEB}")
    assert "hello" not in body and "blocked" in body
    code, body = await curl(
        client, sid, "https://other.test/", "--resolve", f"other.test:443:{WEB}"
    )
    assert code != 0 and "hello" not in body
    # no name at all (raw IP, no SNI)
    code, body = await curl(client, sid, f"https://{WEB}/")
    assert code != 0 and "hello" not in body


async def test_wildcard_domain(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_domains=["*.wild.test"]))
    for name in ("a.wild.test", "b.a.wild.test"):
        code, body = await curl(client, sid, f"https://{name}/")
        assert (code, body) == (0, f"hello host={name} addr={WEB}\n")
    assert await resolve(client, sid, "ok.test") == ""


async def test_raw_ip_bypass_refused(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_domains=["ok.test"]))
    # an allowed name on an address it does not resolve to
    code, body = await curl(client, sid, "http://ok.test/", "--resolve", f"ok.test:80:{PLAIN}")
    assert "hello" not in body
    code, body = await curl(client, sid, "https://ok.test/", "--resolve", f"ok.test:443:{PLAIN}")
    assert code != 0 and "hello" not in body
    # the allowed name's own address, on a port the domain rule does not open
    assert (await tcp(client, sid, WEB, 7000)).startswith("ERR")


async def test_dns_refuses_unlisted_names(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_domains=["ok.test", "loop.test", "private.test"]))
    assert await resolve(client, sid, "ok.test") == WEB
    assert await resolve(client, sid, "plain.test") == ""
    # asking any server directly still reaches our resolver, which refuses
    for server in ("198.18.1.53", "9.9.9.9", WEB):
        for name, expect in (("plain.test", "RCODE 5 ANSWERS 0"), ("ok.test", "RCODE 0 ANSWERS 1")):
            probe = ["python3", "-c", DNS_PROBE, server, name]
            r = await client.run(sid, ExecRequest(cmd=probe))
            assert r.stdout.strip() == expect, (server, name)
    # allowed names whose answers point at loopback or private ranges get no address
    assert await resolve(client, sid, "loop.test") == ""
    assert await resolve(client, sid, "private.test") == ""


async def test_runtime_change_cuts_forwarded_connection(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_cidrs=[f"{PLAIN}/32"]))
    proc = await client.start(sid, ExecRequest(cmd=["python3", "-c", HOLD_TCP, PLAIN, "7000"]))
    await _wait_file(client, sid, "/tmp/connected")
    assert (await tcp(client, sid, WEB, 7000)).startswith("ERR")
    await client.set_network(sid, NetworkPolicy(allow_cidrs=[f"{WEB}/32"]))
    changed = time.time()
    assert await tcp(client, sid, WEB, 7000) == f"OK banner {WEB}"
    assert (await tcp(client, sid, PLAIN, 7000)).startswith("ERR")
    out = (await client.wait(sid, proc.pid)).stdout.split()
    assert out[0] == "CUT" and float(out[1]) - changed < 1.0, out


async def test_runtime_change_cuts_proxied_connection(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_domains=["ok.test"]))
    proc = await client.start(sid, ExecRequest(cmd=["python3", "-c", HOLD_HTTP, "ok.test"]))
    await _wait_file(client, sid, "/tmp/connected")
    info = await client.set_network(sid, NetworkPolicy(allow_domains=["other.test"]))
    changed = time.time()
    assert info.network is not None and info.network.allow_domains == ["other.test"]
    code, body = await curl(client, sid, "http://other.test/")
    assert (code, body) == (0, f"hello host=other.test addr={WEB}\n")
    code, body = await curl(client, sid, "http://ok.test/", "--resolve", f"ok.test:80:{WEB}")
    assert "hello" not in body
    out = (await client.wait(sid, proc.pid)).stdout.split()
    assert out[0] == "CUT" and float(out[1]) - changed < 1.0, out


HOSTILE_POLICIES = [
    NetworkPolicy(allow_public=True),
    NetworkPolicy(allow_cidrs=["198.18.0.0/16", "10.0.0.0/8"]),
    NetworkPolicy(allow_domains=["hostaddr.test", "loop.test"]),
    NetworkPolicy(allow_public=True, allow_cidrs=["0.0.0.0/2", "128.0.0.0/1"]),
    NetworkPolicy(allow_public=True, deny_domains=["other.test"]),  # public, via the proxy
]


@pytest.mark.parametrize(
    "policy", HOSTILE_POLICIES, ids=["public", "cidrs", "domains", "all", "proxied"]
)
async def test_host_services_unreachable_under_every_policy(
    client: RunnerClient, new_sandbox: NewSandbox, policy: NetworkPolicy
) -> None:
    # the runner's namespace serves :80, :8081 and :7000 on every address, loopback included
    sid = await new_sandbox(policy)
    _, gw = await _addresses(client, sid)
    for host in (HOST_UPLINK, gw):
        assert "banner" not in await tcp(client, sid, host, 7000), host
        for port in (80, 443, 8081):
            _, body = await curl(client, sid, f"http://{host}:{port}/")
            assert "hello" not in body, (host, port)
    for name, addr in (("hostaddr.test", HOST_UPLINK), ("loop.test", "127.0.0.1")):
        _, body = await curl(client, sid, f"http://{name}/", "--resolve", f"{name}:80:{addr}")
        assert "hello" not in body, name
    # the sandbox's own loopback stays its own
    r = await sh(
        client,
        sid,
        "python3 -m http.server 80 --bind 127.0.0.1 & sleep 0.5; "
        "curl -s -m 3 http://127.0.0.1/ -o /dev/null -w '%{http_code}'; kill %1",
    )
    assert r.stdout.endswith("200")


async def test_private_ranges_blocked_under_allow_public(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_public=True))
    assert await tcp(client, sid, PLAIN, 7000) == f"OK banner {PLAIN}"
    for addr in PRIVATE:
        assert (await tcp(client, sid, addr, 7000)).startswith("ERR"), addr
    # explicitly allowed, a private address becomes reachable
    await client.set_network(sid, NetworkPolicy(allow_public=True, allow_cidrs=["10.9.9.9/32"]))
    assert await tcp(client, sid, "10.9.9.9", 7000) == "OK banner 10.9.9.9"
    assert (await tcp(client, sid, "172.16.5.5", 7000)).startswith("ERR")


async def test_other_sandboxes_unreachable(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    a = await new_sandbox(NetworkPolicy(allow_public=True))
    b = await new_sandbox(NetworkPolicy(allow_public=True))
    b_addr, _ = await _addresses(client, b)
    await client.start(b, ExecRequest(cmd=["python3", "-m", "http.server", "7000"], timeout_s=120))
    deadline = time.monotonic() + 10
    while (await sh(client, b, "curl -s -m 1 -o /dev/null http://127.0.0.1:7000/")).exit_code:
        assert time.monotonic() < deadline
    assert (await tcp(client, a, b_addr, 7000)).startswith("ERR")
    code, _ = await curl(client, a, f"http://{b_addr}:7000/")
    assert code != 0


async def test_stats_count_network_bytes(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_domains=["ok.test"]))
    before = await client.stats(sid)
    code, _ = await curl(client, sid, "http://ok.test/bytes/300000", "-o", "/dev/null")
    assert code == 0
    after = await client.stats(sid)
    assert after.net_rx_bytes - before.net_rx_bytes >= 300_000
    assert after.net_tx_bytes > before.net_tx_bytes


async def test_gvisor_refuses_policies_loudly(client: RunnerClient) -> None:
    # gVisor has no egress seam yet: asking for a policy is an error, never a weaker sandbox
    with pytest.raises(HutchError) as e:
        await client.create(
            RunnerCreate(isolation=IsolationClass.gvisor, network=NetworkPolicy(allow_public=True))
        )
    assert e.value.code == ErrorCode.isolation_unavailable
    gvisor = [i for i in (await client.info()).isolation if i.isolation == IsolationClass.gvisor]
    if gvisor and gvisor[0].available:
        assert "network policies are not supported for 'gvisor'" in str(e.value.detail)
    assert [s for s in await client.list() if s.isolation == IsolationClass.gvisor] == []


# Several requests on one connection, then everything the server sent back.
KEEPALIVE = """
import socket, sys
s = socket.create_connection(("ok.test", 80), timeout=5)
s.sendall(sys.argv[1].encode().decode("unicode_escape").encode())
out = b""
try:
    while data := s.recv(65536):
        out += data
except OSError as e:
    out += b" ERR " + type(e).__name__.encode()
print(out.decode(errors="replace"))
"""


async def test_every_request_on_a_connection_is_checked(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_domains=["ok.test"]))

    async def send(requests: str) -> str:
        r = await client.run(sid, ExecRequest(cmd=["python3", "-c", KEEPALIVE, requests]))
        return r.stdout

    # allowed names only: every request is answered on the one connection
    out = await send(
        "POST / HTTP/1.1\\r\\nHost: ok.test\\r\\nContent-Length: 5\\r\\n\\r\\nhello"
        "GET / HTTP/1.1\\r\\nHost: ok.test\\r\\nConnection: close\\r\\n\\r\\n"
    )
    assert out.count("hello host=ok.test") == 2, out
    # a second request for another name on the same address is refused
    out = await send(
        "POST / HTTP/1.1\\r\\nHost: ok.test\\r\\nContent-Length: 5\\r\\n\\r\\nhello"
        "GET / HTTP/1.1\\r\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n"
    )
    assert "host=other.test" not in out, out
    # the same, hidden behind a chunked body
    out = await send(
        "POST / HTTP/1.1\\r\\nHost: ok.test\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
        "5\\r\\nhello\\r\\n0\\r\\n\\r\\n"
        "GET / HTTP/1.1\\r\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n"
    )
    assert "host=other.test" not in out, out


async def test_resolv_conf_symlink_does_not_reach_the_host(
    client: RunnerClient, new_sandbox: NewSandbox, tmp_path: Path
) -> None:
    # the runner writes the sandbox's resolv.conf when a link is added to a running sandbox;
    # a symlink planted there must not make it write a host file
    target = Path(f"/var/tmp/hutch-net-marker-{secrets.token_hex(6)}")
    target.write_text("host file\n")
    try:
        sid = await new_sandbox()
        r = await sh(client, sid, f"ln -sf {target} /etc/resolv.conf && ls -l /etc/resolv.conf")
        assert r.exit_code == 0, r.stderr
        await client.set_network(sid, NetworkPolicy(allow_domains=["ok.test"]))
        assert target.read_text() == "host file\n"
        r = await sh(client, sid, "test -L /etc/resolv.conf || cat /etc/resolv.conf")
        assert r.stdout.startswith("nameserver 10."), r.stdout
        assert await resolve(client, sid, "ok.test") == WEB
    finally:
        target.unlink(missing_ok=True)


# Sends one UDP datagram to PLAIN:9999 with a source address of the sandbox's choosing, through
# a raw socket (the sandbox's root keeps CAP_NET_RAW, for ping).
SPOOF = """
import socket, struct, sys
src, payload = sys.argv[1], sys.argv[2].encode()
udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(sys.argv[3]))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, (sys.argv[3], 0))
print("sent")
"""


async def test_spoofed_sources_are_dropped(
    client: RunnerClient, new_sandbox: NewSandbox, world: World
) -> None:
    sid = await new_sandbox(NetworkPolicy(allow_cidrs=[f"{PLAIN}/32"]))
    mine, _ = await _addresses(client, sid)
    # spoofed first, honest last: one path, one queue, so once the honest datagram has
    # arrived any earlier one that was let through would have arrived too
    tokens = {src: f"spoof-{secrets.token_hex(6)}" for src in (WEB, "10.200.255.254", mine)}
    for src, token in tokens.items():
        r = await client.run(
            sid, ExecRequest(cmd=["python3", "-c", SPOOF, src, token, PLAIN], user=ExecUser.root)
        )
        assert r.stdout.strip() == "sent", r.stderr
    # the honest datagram arrives (masqueraded to the runner's uplink address)...
    deadline = time.monotonic() + 5
    while tokens[mine] not in world.udp_log.read_text():
        assert time.monotonic() < deadline, "the honest datagram never arrived"
        await asyncio.sleep(0.05)
    assert f"{HOST_UPLINK} {tokens[mine]}" in world.udp_log.read_text()
    # ...the ones with another source never do
    log = world.udp_log.read_text()
    assert tokens[WEB] not in log and tokens["10.200.255.254"] not in log, log
