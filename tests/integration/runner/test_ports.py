"""Port tunnels of the runner protocol against real sandboxes: the runner reaches a sandbox's
loopback through its network namespace, and the sandbox still has no network of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from hutch.models import ErrorCode, ExecRequest, HutchError, RunnerCreate
from hutch.runner.client import PortTunnel, RunnerClient
from tests.integration.runner.conftest import RunnerProc
from tests.integration.sandbox_app import APP_PATH, APP_SOURCE

pytestmark = [pytest.mark.root, pytest.mark.anyio]
DEADLINE_S = 20.0


@pytest.fixture
async def client(runner: RunnerProc) -> AsyncIterator[RunnerClient]:
    async with RunnerClient(runner.socket) as c:
        yield c


@pytest.fixture
async def sbx(client: RunnerClient) -> AsyncIterator[str]:
    info = await client.create(RunnerCreate(timeout_s=120))
    await client.write_file(info.sandbox_id, APP_PATH, APP_SOURCE.encode())
    yield info.sandbox_id
    with contextlib.suppress(HutchError):
        await client.kill(info.sandbox_id)


async def serve(c: RunnerClient, sid: str, port: int, host: str = "127.0.0.1") -> None:
    """Start the test app in the sandbox and wait (polling) until its port answers."""
    await c.start(sid, ExecRequest(cmd=["python3", APP_PATH, str(port), host], timeout_s=None))
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            t = await c.open_port(sid, port)
        except HutchError as e:
            if e.code is not ErrorCode.port_unreachable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        await t.aclose()
        return


async def http_get(t: PortTunnel, path: str, host: str = "sandbox") -> bytes:
    """One HTTP/1.1 request with `Connection: close`; the whole raw response."""
    await t.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    out = b""
    async with asyncio.timeout(DEADLINE_S):
        while chunk := await t.read(65536):
            out += chunk
    return out


async def test_http_through_the_tunnel_on_v4_and_v6(client: RunnerClient, sbx: str) -> None:
    await serve(client, sbx, 8000)
    await serve(client, sbx, 8001, "::1")
    for port in (8000, 8001):
        t = await client.open_port(sbx, port)
        try:
            resp = await http_get(t, "/hi")
        finally:
            await t.aclose()
        assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
        assert resp.endswith(b"hello from the sandbox /hi")


async def test_large_bodies_both_ways(client: RunnerClient, sbx: str) -> None:
    await serve(client, sbx, 8000)
    body = os.urandom(4 << 20)
    t = await client.open_port(sbx, 8000)
    try:
        head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        await t.write((head + "Connection: close\r\n\r\n").encode())
        for i in range(0, len(body), 1 << 16):
            await t.write(body[i : i + (1 << 16)])
        out = b""
        async with asyncio.timeout(DEADLINE_S):
            while chunk := await t.read(1 << 20):
                out += chunk
    finally:
        await t.aclose()
    assert out.split(b"\r\n\r\n", 1)[1] == body


async def test_refusals_name_the_problem(client: RunnerClient, sbx: str) -> None:
    with pytest.raises(HutchError) as e:
        await client.open_port(sbx, 9)
    assert e.value.code is ErrorCode.port_unreachable
    assert "port 9" in e.value.detail
    with pytest.raises(HutchError) as e:
        await client.open_port("sbx_01jzzzzzzzzzzzzzzzzzzzzzzz", 8000)
    assert e.value.code is ErrorCode.sandbox_not_found


async def test_tunnel_ends_when_the_sandbox_is_killed(client: RunnerClient) -> None:
    info = await client.create(RunnerCreate(timeout_s=120))
    sid = info.sandbox_id
    await client.write_file(sid, APP_PATH, APP_SOURCE.encode())
    await serve(client, sid, 8000)
    t = await client.open_port(sid, 8000)
    # An idle keep-alive connection: the server holds it open until the sandbox goes.
    await t.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await t.read(65536)).startswith(b"HTTP/1.1 200")
    await client.kill(sid)
    async with asyncio.timeout(DEADLINE_S):
        while await t.read(65536):
            pass
    assert t.at_eof()
    await t.aclose()


def _threads_and_fds(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def _netns_of_threads(pid: int) -> set[str]:
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out.add(os.readlink(f"/proc/{pid}/task/{tid}/ns/net"))
    return out


async def test_no_network_and_nothing_left_behind(
    client: RunnerClient, sbx: str, runner: RunnerProc
) -> None:
    await serve(client, sbx, 8000)
    pid = runner.proc.pid
    host_ns = os.readlink("/proc/self/ns/net")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:  # settle: earlier tests' threads may still be ending
        await asyncio.sleep(0.05)
    before = _threads_and_fds(pid)
    for _ in range(30):
        t = await client.open_port(sbx, 8000)
        assert (await http_get(t, "/")).startswith(b"HTTP/1.1 200")
        await t.aclose()
    for _ in range(10):
        with pytest.raises(HutchError):
            await client.open_port(sbx, 9)
    # Every runner thread is back in (or never left) the host's network namespace.
    assert _netns_of_threads(pid) == {host_ns}
    deadline = time.monotonic() + DEADLINE_S
    while _threads_and_fds(pid)[1] > before[1] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    threads, fds = _threads_and_fds(pid)
    assert fds <= before[1], (before, (threads, fds))
    # Thread pools may keep idle workers, but no thread per connection survives.
    assert threads <= before[0] + 4, (before, (threads, fds))
    # The sandbox sees only its loopback: no interface, no route appeared.
    r = await client.run(sbx, ExecRequest(cmd=["cat", "/proc/net/dev"]))
    ifaces = [ln.split(":")[0].strip() for ln in r.stdout.splitlines() if ":" in ln]
    assert ifaces == ["lo"], r.stdout
    r = await client.run(sbx, ExecRequest(cmd=["cat", "/proc/net/route"]))
    assert len(r.stdout.strip().splitlines()) == 1, r.stdout  # the header only: no route


async def test_gvisor_says_ports_are_unsupported(client: RunnerClient) -> None:
    info = await client.info()
    gv = next(i for i in info.isolation if i.isolation.value == "gvisor")
    if not gv.available:
        pytest.skip(f"gvisor unavailable here: {gv.reason}")
    sb = await client.create(RunnerCreate(isolation="gvisor", disk_mb=128))  # type: ignore[arg-type]
    try:
        with pytest.raises(HutchError) as e:
            await client.open_port(sb.sandbox_id, 8000)
        assert e.value.code is ErrorCode.ports_unsupported
        assert "gvisor" in e.value.detail
    finally:
        await client.kill(sb.sandbox_id)
