"""Reading the server name from the first bytes of a connection."""

from __future__ import annotations

import ssl

import pytest

from hutch.runtime.network.sniff import Malformed, NeedMore, server_name


def client_hello(sni: str | None) -> bytes:
    """A real ClientHello from Python's TLS stack."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_tls_sni() -> None:
    hello = client_hello("API.Example.com")
    assert server_name(hello) == ("tls", "api.example.com")
    assert server_name(client_hello(None)) == ("tls", None)
    for cut in (1, 5, 40, len(hello) - 1):
        with pytest.raises(NeedMore):
            server_name(hello[:cut])


def test_http_host() -> None:
    req = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: Ok.Test:8080\r\n\r\n"
    assert server_name(req) == ("http", "ok.test")
    assert server_name(b"GET / HTTP/1.0\r\n\r\n") == ("http", None)
    with pytest.raises(NeedMore):
        server_name(req[:20])
    with pytest.raises(Malformed):
        server_name(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(Malformed):
        server_name(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")  # a handshake, not a hello
