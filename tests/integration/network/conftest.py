"""A test "internet" (see world.py) and a runner whose host is a network namespace the test
made. The runner runs inside "host" (so its IPv4 forwarding, nftables table and links never touch
the machine's own namespace); its default route and its upstream DNS point at "inet". No
packet of these tests leaves the namespaces they create.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.models import ExecRequest, ExecResult, ExecUser, NetworkPolicy, RunnerCreate
from hutch.runner.client import RunnerClient
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore
from tests.integration.network.world import (  # noqa: F401  (re-exported for the tests)
    DNS,
    HOST_UPLINK,
    PLAIN,
    PRIVATE,
    WEB,
    NetRunner,
    World,
    build_world,
    start_net_runner,
    stop_net_runner,
)

READY_S = 120.0


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Build the namespaces and start the test hosts."""
    if os.geteuid() != 0:
        pytest.skip("network tests need root")
    with build_world(tmp_path_factory.mktemp("certs")) as w:
        yield w


UID_BASE = 1_000_000 + 65536 * (600 + secrets.randbelow(256))


@pytest.fixture(scope="session")
def net_runner(world: World) -> Iterator[NetRunner]:
    """One runner for the session, in the world's host namespace."""
    TemplateStore(SHARED_TEST_TEMPLATE_DIR).ensure("base")
    d = Path(f"/var/tmp/hutch-net-{secrets.token_hex(6)}")
    d.mkdir(mode=0o711)
    r = start_net_runner(world, d / "runner", UID_BASE)
    yield r
    stop_net_runner(r)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """asyncio only."""
    return "asyncio"


@pytest.fixture
async def client(net_runner: NetRunner) -> AsyncIterator[RunnerClient]:
    """A runner client for one test."""
    async with net_runner.client() as c:
        yield c


NewSandbox = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_sandbox(client: RunnerClient) -> AsyncIterator[NewSandbox]:
    """Create sandboxes with an optional policy; all are killed after the test."""
    made: list[str] = []

    async def make(network: NetworkPolicy | None = None, **spec: Any) -> str:
        spec.setdefault("timeout_s", 600)
        info = await client.create(RunnerCreate(network=network, **spec))
        made.append(info.sandbox_id)
        return info.sandbox_id

    yield make
    for sid in made:
        with contextlib.suppress(Exception):
            await client.kill(sid)


async def sh(client: RunnerClient, sid: str, cmd: str, timeout_s: float = 30) -> ExecResult:
    """Run a bash command in a sandbox as root."""
    return await client.run(sid, ExecRequest(cmd=cmd, user=ExecUser.root, timeout_s=timeout_s))


TCP_PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("OK", s.makefile().readline().strip())
except OSError as e:
    print("ERR", type(e).__name__)
"""


async def tcp(client: RunnerClient, sid: str, host: str, port: int) -> str:
    """'OK <banner>' when a TCP service answered from inside the sandbox, else 'ERR <why>'."""
    r = await client.run(
        sid,
        ExecRequest(cmd=["python3", "-c", TCP_PROBE, host, str(port)], timeout_s=20),
    )
    return r.stdout.strip()


async def curl(client: RunnerClient, sid: str, url: str, *extra: str) -> tuple[int, str]:
    """curl from inside the sandbox: (exit code, body). HTTPS certificates are the test's own."""
    r = await client.run(
        sid,
        ExecRequest(cmd=["curl", "-sS", "-k", "-m", "5", *extra, url], timeout_s=20),
    )
    return r.exit_code, r.stdout


async def resolve(client: RunnerClient, sid: str, name: str) -> str:
    """What `getent ahostsv4` says inside the sandbox ('' when the name does not resolve)."""
    r = await client.run(sid, ExecRequest(cmd=["getent", "ahostsv4", name], timeout_s=20))
    return r.stdout.split()[0] if r.exit_code == 0 and r.stdout else ""
