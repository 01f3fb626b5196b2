"""`hutch serve` over TLS on loopback, with a self-signed CA made for the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.api import Mode, Scope
from hutch.sdk.client import Hutch
from hutch.services.accounts import AccountService
from hutch.services.clock import SystemClock
from hutch.services.keys import KeyService, load_pepper
from tests.integration.api.conftest import Server, free_port


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("hutch test CA"))
        .issuer_name(_name("hutch test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (d / "ca.pem", d / "cert.pem", d / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


def start_tls(database: Database, tmp: Path, ca: Path, *args: str) -> Server:
    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "HUTCH_DATABASE_URL": database.url}
    cmd = [
        sys.executable, "-m", "hutch.cli.main", "serve", "--no-runner",
        "--data-dir", str(tmp / "data"), "--host", "127.0.0.1", "--port", str(port), *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"https://127.0.0.1:{port}", "", tmp / "data", proc, log)
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hutch serve exited:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/healthz", verify=ctx, timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"hutch serve did not become ready:\n{server.output()}")


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_pki(tmp_path)


@pytest.fixture
def tls13_server(
    database: Database, tmp_path: Path, pki: tuple[Path, Path, Path]
) -> Iterator[Server]:
    ca, cert, key = pki
    s = start_tls(
        database, tmp_path, ca, "--tls-cert", str(cert), "--tls-key", str(key), "--tls13-only"
    )
    yield s
    if s.proc.poll() is None:
        s.stop()


def handshake(url: str, ca: Path, max_version: ssl.TLSVersion) -> str:
    """The TLS version a client capped at `max_version` negotiates (raises if refused)."""
    host, port = url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.maximum_version = max_version
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return str(tls.version())


def make_key(database: Database, data_dir: Path) -> str:
    """An admin's API key made with the server's pepper (independent of first-start bootstrap)."""
    clock = SystemClock()
    keys = KeyService(load_pepper(data_dir), clock)
    with database.session() as s:
        user_id, project_id = AccountService(clock).bootstrap_owner(
            s, email=f"{new_id('usr')}@example.test", name="tls"
        )
        _, raw = keys.issue(
            s,
            user_id=user_id,
            project_id=project_id,
            name="tls",
            mode=Mode.live,
            scopes=frozenset(Scope),
        )
        s.commit()
    return raw


def test_tls13_only_refuses_tls12_and_the_sdk_works_with_a_ca_file(
    tls13_server: Server,
    pki: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    database: Database,
) -> None:
    ca = pki[0]
    assert handshake(tls13_server.url, ca, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(tls13_server.url, ca, ssl.TLSVersion.TLSv1_2)
    # Without the CA the certificate is not trusted: it really is the test's certificate.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls13_server.url}/healthz", timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls13_server.url.replace("https", "http") + "/healthz", timeout=5)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    key = make_key(database, tls13_server.data_dir)
    with Hutch(api_url=tls13_server.url, api_key=key) as h:
        assert h.me()["user"]["is_admin"] is True
    assert "https://127.0.0.1" in tls13_server.output()
    assert tls13_server.stop() == 0


def test_without_tls13_only_tls12_is_still_accepted(
    database: Database, tmp_path: Path, pki: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = pki
    s = start_tls(database, tmp_path, ca, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert handshake(s.url, ca, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    finally:
        s.stop()


def test_tls_settings_come_from_the_environment_too_and_bad_files_are_refused(
    database: Database, tmp_path: Path, pki: tuple[Path, Path, Path]
) -> None:
    _, cert, key = pki
    base = [sys.executable, "-m", "hutch.cli.main", "serve", "--no-runner"]
    env = {**os.environ, "HUTCH_DATABASE_URL": database.url, "HUTCH_TLS_CERT": str(cert)}
    r = subprocess.run(
        [*base, "--data-dir", str(tmp_path / "d1")], env=env, capture_output=True, timeout=60
    )
    assert r.returncode == 2 and b"set both tls_cert and tls_key" in r.stderr
    r = subprocess.run(
        [*base, "--data-dir", str(tmp_path / "d2"), "--tls-cert", str(key), "--tls-key", str(key)],
        env={**os.environ, "HUTCH_DATABASE_URL": database.url},
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 2 and b"cannot load the TLS certificate" in r.stderr
