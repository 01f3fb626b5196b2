"""The test "internet": network namespaces, a veth between them and test hosts in them.
Used by the network tests and by bench/bench_network.py.

    runner ns "host"  --up0 198.18.0.1/30 ---- wan0 198.18.0.2/30--  ns "inet"
      runner, sandbox links,                                      198.18.1.1  web :80/:443, :7000
      host services on :80/:8081/:7000                            198.18.1.2  same services
                                                                  198.18.1.53 DNS (.test zone)
                                                                  private addresses (PRIVATE)
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hutch.config import RunnerSettings
from hutch.runner.client import RunnerClient
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR

HERE = Path(__file__).parent
WEB, PLAIN, DNS, HOST_UPLINK = "198.18.1.1", "198.18.1.2", "198.18.1.53", "198.18.0.1"
# Non-public addresses the test "internet" also answers on: a sandbox must not reach them
# unless its policy names them.
RUNNER_READY_S = 120.0
PRIVATE = ("10.9.9.9", "172.16.5.5", "192.168.7.7", "169.254.169.254", "100.100.100.200")


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
    udp_log: Path  # what the UDP :9999 recorder in "inet" received: "SOURCE PAYLOAD" lines


def _wait_ready(p: subprocess.Popen[str]) -> None:
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        raise AssertionError(f"test host failed to start (exit {p.poll()})")


@contextlib.contextmanager
def build_world(cert_dir: Path) -> Iterator[World]:
    """Create the namespaces and start the test hosts; remove everything on exit."""
    tag = secrets.token_hex(3)
    w = World(host=f"hnet-h{tag}", inet=f"hnet-i{tag}", helpers=[], udp_log=cert_dir / "udp.log")
    cert, key = _cert(cert_dir)
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
        w.udp_log.touch()
        inet_args = ["inet", str(cert), str(key), str(w.udp_log)]
        for ns, args in ((w.inet, inet_args), (w.host, ["host"])):
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
    deadline = time.monotonic() + RUNNER_READY_S
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
