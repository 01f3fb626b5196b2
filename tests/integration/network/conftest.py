"""A test "internet" and a runner whose host is a network namespace the test made.

Layout (all namespaces created here, deleted at the end):

    runner ns "host"  --up0 198.18.0.1/30 ---- wan0 198.18.0.2/30--  ns "inet"
      runner, sandbox links,                                      198.18.1.1  web :80/:443, :7000
      host services on :80/:8081/:7000                            198.18.1.2  :7000
                                                                  198.18.1.53 DNS (.test zone)

The runner runs inside "host" (so its IPv4 forwarding, nftables table and links never touch
the machine's own namespace); its default route and its upstream DNS point at "inet". No
packet of these tests leaves the namespaces they create.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hutch.config import RunnerSettings
from hutch.models import ExecRequest, ExecResult, ExecUser, NetworkPolicy, RunnerCreate
from hutch.runner.client import RunnerClient
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore

HERE = Path(__file__).parent
WEB, PLAIN, DNS, HOST_UPLINK = "198.18.1.1", "198.18.1.2", "198.18.1.53", "198.18.0.1"
# Non-public addresses the test "internet" also answers on: a sandbox must not reach them
# unless its policy names them.
PRIVATE = ("10.9.9.9", "172.16.5.5", "192.168.7.7", "169.254.169.254", "100.100.100.200")
READY_S = 120.0


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """Run `ip [-n ns] args`."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {r.stderr}")
    return r.stdout


def in_ns(ns: str, *argv: str, **kw: Any) -> subprocess.Popen[str]:
    """Start a process in a namespace of ours (stdin is a pipe: closing it stops our helpers)."""
    return subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", *argv],
        stdin=subprocess.PIPE,
        text=True,
        **kw,
    )


def _cert(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ok.test")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName(n) for n in ("ok.test", "other.test", "*.wild.test", "a.wild.test")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([*sans, x509.IPAddress(ipaddress.IPv4Address(WEB))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    c, k = d / "cert.pem", d / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


@dataclass
class World:
    """The namespaces and helper processes of the session."""

    host: str
    inet: str
    helpers: list[subprocess.Popen[str]]


def _wait_ready(p: subprocess.Popen[str]) -> None:
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        raise AssertionError(f"test host failed to start (exit {p.poll()})")


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Build the namespaces and start the test hosts."""
    if os.geteuid() != 0:
        pytest.skip("network tests need root")
    tag = secrets.token_hex(3)
    w = World(host=f"hnet-h{tag}", inet=f"hnet-i{tag}", helpers=[])
    cert, key = _cert(tmp_path_factory.mktemp("certs"))
    try:
        ip("netns", "add", w.host)
        ip("netns", "add", w.inet)
        for ns in (w.host, w.inet):
            ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns", w.inet, ns=w.host)
        ip("addr", "add", f"{HOST_UPLINK}/30", "dev", "up0", ns=w.host)
        ip("link", "set", "up0", "up", ns=w.host)
        ip("addr", "add", "198.18.0.2/30", "dev", "wan0", ns=w.inet)
        ip("link", "set", "wan0", "up", ns=w.inet)
        ip("route", "add", "default", "via", "198.18.0.2", ns=w.host)
        for a in (WEB, PLAIN, DNS, *PRIVATE):
            ip("addr", "add", f"{a}/32", "dev", "lo", ns=w.inet)
        script = str(HERE / "internet.py")
        for ns, args in ((w.inet, ["inet", str(cert), str(key)]), (w.host, ["host"])):
            p = in_ns(ns, sys.executable, script, *args, stdout=subprocess.PIPE)
            w.helpers.append(p)
            _wait_ready(p)
        yield w
    finally:
        for p in w.helpers:
            with contextlib.suppress(OSError):
                assert p.stdin is not None
                p.stdin.close()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in (w.host, w.inet):
            ip("netns", "del", ns, check=False)


@dataclass
class NetRunner:
    """A runner inside the world's "host" namespace."""

    proc: subprocess.Popen[str]
    data_dir: Path
    env: dict[str, str]
    world: World

    @property
    def socket(self) -> Path:
        return self.data_dir / "runner.sock"

    @property
    def settings(self) -> RunnerSettings:
        return RunnerSettings(data_dir=self.data_dir)

    def client(self) -> RunnerClient:
        return RunnerClient(self.socket, timeout=60)

    def log(self) -> str:
        return (self.data_dir.parent / f"{self.data_dir.name}.log").read_text(errors="replace")


def _health(sock: Path) -> bool:
    transport = httpx.HTTPTransport(uds=str(sock))
    try:
        with httpx.Client(transport=transport, base_url="http://runner", timeout=2) as c:
            return c.get("/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


def start_net_runner(
    world: World, data_dir: Path, uid_base: int, pool: str = "10.200.0.0/16"
) -> NetRunner:
    """Start `python -m hutch.runner` in the world's host namespace; wait until it answers.
    Runners sharing the namespace need address pools of their own."""
    data_dir.mkdir(mode=0o711, exist_ok=True)
    env = {
        **os.environ,
        "HUTCH_RUNNER_TEMPLATE_DIR": str(SHARED_TEST_TEMPLATE_DIR),
        "HUTCH_RUNNER_UID_BASE": str(uid_base),
        "HUTCH_RUNNER_NETWORK_DNS": DNS,
        "HUTCH_RUNNER_NETWORK_POOL": pool,
    }
    log = (data_dir.parent / f"{data_dir.name}.log").open("ab")
    proc = in_ns(
        world.host, sys.executable, "-m", "hutch.runner", "--data-dir", str(data_dir),
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    r = NetRunner(proc, data_dir, env, world)
    deadline = time.monotonic() + READY_S
    while not (r.socket.exists() and _health(r.socket)):
        if proc.poll() is not None:
            raise AssertionError(f"the runner exited:\n{r.log()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the runner did not become ready:\n{r.log()[-3000:]}")
        time.sleep(0.05)
    return r


def stop_net_runner(r: NetRunner, kill_sandboxes: bool = True) -> None:
    """Kill its sandboxes (through the API) and stop it."""
    if r.proc.poll() is None:
        if kill_sandboxes:
            transport = httpx.HTTPTransport(uds=str(r.socket))
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.Client(transport=transport, base_url="http://runner", timeout=30) as c,
            ):
                for sb in c.get("/v1/sandboxes").json():
                    c.delete(f"/v1/sandboxes/{sb['sandbox_id']}")
        r.proc.terminate()
        try:
            r.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


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
