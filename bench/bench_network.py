"""Network benchmark: what an egress policy costs.

In a test "internet" of network namespaces (tests/integration/network/world.py; no packet
leaves them) with a runner inside: create → first exec with a policy vs loopback-only, against
the raw primitive (`ip link add … type veth` + `ip link del`); bulk download throughput through
the SNI/Host proxy (domain rule) vs routed by nftables (CIDR rule) vs the runner's namespace
itself (no sandbox); per-request latency (new connection each) through proxy vs routed; and
the latency of a DNS lookup through the sandbox's resolver.
Run as root: `.venv/bin/python -m bench.bench_network [-n N] [--mb MB]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.network.world import (
    WEB,
    World,
    build_world,
    start_net_runner,
    stop_net_runner,
)

from bench._common import print_table, save, summary
from hutch.models import ExecRequest, NetworkPolicy, RunnerCreate
from hutch.runner.client import RunnerClient
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore

DOMAIN = NetworkPolicy(allow_domains=["ok.test"])
ROUTED = NetworkPolicy(allow_cidrs=[f"{WEB}/32"])
LATENCY = """
import socket, sys, time, json
host, n = sys.argv[1], int(sys.argv[2])
out = []
if sys.argv[3] == "dns":
    for _ in range(n):
        t = time.perf_counter()
        socket.gethostbyname(host)
        out.append(time.perf_counter() - t)
    print(json.dumps(out))
    sys.exit()
addr = socket.gethostbyname(host)  # once: the HTTP rows measure connections, not DNS
for _ in range(n):
    t = time.perf_counter()
    s = socket.create_connection((addr, 80), timeout=5)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: ok.test\\r\\nConnection: close\\r\\n\\r\\n")
    while s.recv(65536):
        pass
    s.close()
    out.append(time.perf_counter() - t)
print(json.dumps(out))
"""


def num(x: object) -> float:
    """A number from a summary row."""
    return float(str(x))


def veth_primitive(world: World, n: int) -> list[float]:
    """The raw primitive: create and delete a veth pair in the runner's namespace."""
    out = []
    for i in range(n):
        name = f"bv{i}"
        t = time.perf_counter()
        subprocess.run(
            [
                "ip",
                "-n",
                world.host,
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                f"{name}p",
            ],
            check=True,
        )
        subprocess.run(["ip", "-n", world.host, "link", "del", name], check=True)
        out.append(time.perf_counter() - t)
    return out


async def creates(c: RunnerClient, n: int, policy: NetworkPolicy | None) -> list[float]:
    """create → first exec(true), then kill (not timed)."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        sb = await c.create(RunnerCreate(network=policy))
        await c.run(sb.sandbox_id, ExecRequest(cmd=["true"]))
        out.append(time.perf_counter() - t)
        await c.kill(sb.sandbox_id)
    return out


async def download(c: RunnerClient, sid: str, url: str, size: int) -> float:
    """MB/s of one download inside the sandbox (curl's own timing)."""
    r = await c.run(
        sid,
        ExecRequest(
            cmd=["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", f"{url}/bytes/{size}"],
            timeout_s=300,
        ),
    )
    return size / float(r.stdout) / 1e6


def host_download(world: World, size: int) -> float:
    """MB/s of the same download from the runner's namespace, no sandbox, no proxy."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{world.host}", "curl", "-sS", "-o", "/dev/null",
         "-w", "%{time_total}", f"http://{WEB}/bytes/{size}"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    return size / float(out) / 1e6


async def latencies(
    c: RunnerClient, sid: str, host: str, n: int, what: str = "http"
) -> list[float]:
    """Per-request time (connect, request, read to EOF; or a DNS lookup) inside the sandbox."""
    cmd = ["python3", "-c", LATENCY, host, str(n), what]
    r = await c.run(sid, ExecRequest(cmd=cmd, timeout_s=300))
    return [float(x) for x in json.loads(r.stdout)]


async def main(n: int, mb: int) -> None:
    """Run every measurement and print/save the results."""
    TemplateStore(SHARED_TEST_TEMPLATE_DIR).ensure("base")
    certs = Path(tempfile.mkdtemp(prefix="hutch-bench-net-"))
    data = Path(f"/var/tmp/hutch-bench-net-{secrets.token_hex(4)}")
    data.mkdir(mode=0o711)
    rows: list[dict[str, object]] = []
    extra: dict[str, object] = {}
    size = mb * 1_000_000
    try:
        with build_world(certs) as world:
            prim = summary("raw: ip link add veth + del", veth_primitive(world, n))
            rows.append(prim)
            runner = start_net_runner(world, data / "runner", 1_000_000 + 65536 * 900)
            try:
                async with runner.client() as c:
                    await creates(c, 2, DOMAIN)  # warm-up (golden disk image, first table)
                    plain = summary("create → exec, loopback only", await creates(c, n, None))
                    rows.append(plain)
                    pol = summary("create → exec, with a policy", await creates(c, n, DOMAIN))
                    rows.append(pol)
                    overhead = num(pol["p50_ms"]) - num(plain["p50_ms"])
                    extra["policy_create_overhead_p50_ms"] = round(overhead, 2)
                    extra["policy_overhead_x_veth_primitive"] = round(
                        overhead / num(prim["p50_ms"]), 2
                    )
                    proxied = (await c.create(RunnerCreate(network=DOMAIN))).sandbox_id
                    routed = (await c.create(RunnerCreate(network=ROUTED))).sandbox_id
                    extra["mb_per_s_host_direct"] = round(host_download(world, size), 1)
                    via_routing = await download(c, routed, f"http://{WEB}", size)
                    via_proxy = await download(c, proxied, "http://ok.test", size)
                    extra["mb_per_s_routed"] = round(via_routing, 1)
                    extra["mb_per_s_proxy"] = round(via_proxy, 1)
                    extra["proxy_x_routed_throughput"] = round(via_proxy / via_routing, 2)
                    routed_lat = summary(
                        "HTTP request, routed (CIDR rule)", await latencies(c, routed, WEB, n * 10)
                    )
                    rows.append(routed_lat)
                    rows.append(
                        summary(
                            "HTTP request, via proxy (domain rule)",
                            await latencies(c, proxied, "ok.test", n * 10),
                            num(routed_lat["p50_ms"]),
                        )
                    )
                    rows.append(
                        summary(
                            "DNS lookup via the sandbox's resolver",
                            await latencies(c, proxied, "ok.test", n * 10, "dns"),
                        )
                    )
                    await c.kill(proxied)
                    await c.kill(routed)
            finally:
                stop_net_runner(runner)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(certs, ignore_errors=True)
    print_table("Hutch egress policy", rows)
    for k, v in extra.items():
        print(f"{k}: {v}")
    save("network", {"rows": rows, **extra})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--mb", type=int, default=500, help="download size for throughput")
    args = ap.parse_args()
    asyncio.run(main(args.n, args.mb))
