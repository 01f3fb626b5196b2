"""The blocking SDK's own HTTP/1.1 client (hutch.sdk._wire), against scripted servers on
loopback: framing (Content-Length, chunked, end of stream), kept-alive connections and servers
that drop them, interim answers, timeouts, malformed answers and what a request looks like on
the wire (compared with httpx's, which the rest of the SDK uses)."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from hutch.sdk import _ops, _wire
from hutch.sdk._http import SyncHttp
from hutch.sdk._wire import Connections
from hutch.sdk.config import ConnectionConfig, RetryPolicy
from hutch.sdk.exceptions import APIConnectionError, HutchSDKError, RequestTimeoutError
from tests.unit.sdk.test_http import SANDBOX

BODY = json.dumps(SANDBOX).encode()


def _ok(body: bytes = BODY, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}\r\n"
    ).encode() + body


class Script:
    """A loopback server answering each request with the next reply from `replies` (a reply
    is bytes to send, or a callable given the connection). Records requests and connections."""

    def __init__(self, replies: list[bytes | Callable[[socket.socket], None]]) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while self.replies:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                reply = self.replies.pop(0)
                if callable(reply):
                    reply(conn)
                    return
                conn.sendall(reply)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def script() -> Iterator[Callable[..., Script]]:
    made: list[Script] = []

    def make(replies: list[bytes | Callable[[socket.socket], None]]) -> Script:
        made.append(Script(replies))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _http(url: str, timeout: float = 5, attempts: int = 1) -> SyncHttp:
    return SyncHttp(ConnectionConfig(url, "sk_test_k", timeout, RetryPolicy(attempts, 0, 0)))


def test_kept_alive_connection_carries_every_framing(script: Callable[..., Script]) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{10:x}\r\n".encode()
        + BODY[:10]
        + b"\r\n"
        + f"{len(BODY) - 10:x};ext=1\r\n".encode()
        + BODY[10:]
        + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    zipped = gzip.compress(BODY)
    gz = _ok(zipped, "Content-Encoding: gzip\r\n")
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + _ok()
    s = script([_ok(), chunked, gz, interim, _ok()])
    http = _http(s.url)
    try:
        for _ in range(5):
            assert http.send(_ops.get_sandbox("sbx_1")).sandbox_id == "sbx_1"
    finally:
        http.close()
    assert s.connections == 1  # all five on one kept-alive connection


def test_a_connection_the_server_closed_is_not_reused(script: Callable[..., Script]) -> None:
    def close_after(conn: socket.socket) -> None:
        conn.sendall(_ok())  # and the handler closes the connection

    s = script([close_after, _ok(extra="Connection: close\r\n"), _ok(), _ok()])
    http = _http(s.url)
    try:
        for _ in range(4):
            # Commands are never replayed: a stale connection would fail the call.
            http.send(_ops.get_sandbox("sbx_1"))
            time.sleep(0.05)  # the close reaches the client before the next request
    finally:
        http.close()
    assert s.connections == 3  # a new one after each close, then kept alive


def test_a_response_without_length_ends_with_the_connection(
    script: Callable[..., Script],
) -> None:
    def until_close(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY)

    s = script([until_close, _ok()])
    http = _http(s.url)
    try:
        assert http.send(_ops.get_sandbox("sbx_1")).sandbox_id == "sbx_1"
        assert http.send(_ops.get_sandbox("sbx_1")).sandbox_id == "sbx_1"
    finally:
        http.close()
    assert s.connections == 2


def test_malformed_and_truncated_answers_are_connection_errors(
    script: Callable[..., Script],
) -> None:
    def truncated(conn: socket.socket) -> None:
        conn.sendall(_ok()[:-5])

    def nothing(conn: socket.socket) -> None:
        return None

    s = script([b"SMTP ready\r\n\r\n", truncated, nothing])
    http = _http(s.url)
    try:
        with pytest.raises(APIConnectionError, match=r"not HTTP/1\.1"):
            http.send(_ops.get_sandbox("sbx_1"))
        with pytest.raises(APIConnectionError, match="mid-response"):
            http.send(_ops.get_sandbox("sbx_1"))
        with pytest.raises(APIConnectionError, match="without sending a response"):
            http.send(_ops.get_sandbox("sbx_1"))
    finally:
        http.close()


def test_a_silent_server_times_out_and_a_closed_port_is_refused(
    script: Callable[..., Script],
) -> None:
    def silent(conn: socket.socket) -> None:
        time.sleep(2)

    s = script([silent])
    http = _http(s.url, timeout=0.3)
    try:
        t = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            http.send(_ops.get_sandbox("sbx_1"))
        assert time.monotonic() - t < 1.5
    finally:
        http.close()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    http = _http(f"http://127.0.0.1:{port}", attempts=2)
    try:
        with pytest.raises(APIConnectionError, match="cannot reach"):
            http.send(_ops.get_sandbox("sbx_1"))
    finally:
        http.close()


def test_requests_look_as_httpx_sends_them(script: Callable[..., Script]) -> None:
    """Method, target (path and query quoting), JSON body and the headers that matter."""
    created = json.dumps(SANDBOX).encode()
    s = script([_ok(created), _ok(b"[]")])
    http = _http(s.url + "/prefix")

    def create() -> _ops.Call[object]:
        return _ops.create_sandbox(  # type: ignore[return-value]
            template="base",
            timeout=60,
            vcpu=1,
            memory_mb=1024,
            disk_mb=4096,
            isolation="namespace",
            envs={"A": "ü"},
            metadata={"k": "é v"},
            idempotency_key="k1",
        )

    try:
        http.send(create())
        http.send(_ops.list_dir("sbx_1", "/home/user/a b+c&d", 1))
    finally:
        http.close()
    create_head, _, create_body = s.requests[0].partition(b"\r\n\r\n")
    lines = create_head.split(b"\r\n")
    assert lines[0] == b"POST /prefix/v1/sandboxes HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
    assert headers[b"host"] == f"127.0.0.1:{s.port}".encode()
    assert headers[b"authorization"] == b"Bearer sk_test_k"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(create_body)).encode()
    assert headers[b"idempotency-key"] == b"k1"
    assert create_body == httpx.Request("POST", "http://h/", json=create().json).content
    listing = _ops.list_dir("sbx_1", "/home/user/a b+c&d", 1)
    expected = httpx.Request("GET", "http://h/prefix" + listing.path, params=list(listing.params))
    assert s.requests[1].split(b"\r\n")[0] == b"GET " + expected.url.raw_path + b" HTTP/1.1"


def test_header_values_that_would_split_the_request_are_refused_unquoted() -> None:
    wire = Connections("http://127.0.0.1:9")
    with pytest.raises(httpx.LocalProtocolError) as e:
        wire.request("GET", "/v1/me", headers={"Authorization": "Bearer sk_live_SECRET\r\nX: 1"})
    assert "SECRET" not in str(e.value)
    with pytest.raises(httpx.LocalProtocolError):
        wire.request("GET", "/v1/me", headers={"Bad Name": "x"})


def test_an_answer_sent_before_the_body_was_read_is_not_lost(
    script: Callable[..., Script],
) -> None:
    """A server may refuse a large upload from its headers (413) and close without reading
    the body: the caller gets that answer, typed, not a failed write retried four times."""
    problem = json.dumps({"title": "too large", "status": 413, "code": "payload_too_large"})

    def refuse(conn: socket.socket) -> None:
        body = problem.encode()
        conn.sendall(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/problem+json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.3)  # then close with the body unread: the client's write fails

    s = Script([])
    s.replies = [refuse]
    s._one = _refusing_reader(s)  # type: ignore[method-assign]
    http = _http(s.url, attempts=4)
    try:
        with pytest.raises(HutchSDKError) as e:
            http.send(_ops.write_file("sbx_1", "/tmp/big"), b"x" * (32 * 1024 * 1024))
        assert e.value.status == 413
        assert s.connections == 1  # not retried
    finally:
        http.close()
        s.close()


def _refusing_reader(s: Script) -> Callable[[socket.socket], None]:
    """A connection handler that reads only the request's head, then runs the reply."""

    def one(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            reply = s.replies.pop(0)
            assert callable(reply)
            reply(conn)

    return one


def test_idle_connections_expire_and_urls_are_read_as_httpx_reads_them(
    script: Callable[..., Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_wire, "IDLE_EXPIRY_S", 0.2)
    s = script([_ok(), _ok(), _ok()])
    http = _http(s.url)
    try:
        http.send(_ops.get_sandbox("sbx_1"))
        http.send(_ops.get_sandbox("sbx_1"))
        assert s.connections == 1
        time.sleep(0.3)  # longer idle than the expiry: a middlebox may have forgotten it
        http.send(_ops.get_sandbox("sbx_1"))
        assert s.connections == 2
    finally:
        http.close()
    tls = ssl.create_default_context()
    wire = Connections("HTTPS://Bücher.example:8443/base/", tls)
    assert (wire.host, wire.port, wire.authority) == (
        "xn--bcher-kva.example",
        8443,
        "xn--bcher-kva.example:8443",
    )
    assert wire.url == "https://xn--bcher-kva.example:8443/base" and wire.tls is tls
    assert Connections("http://[::1]:80", tls).authority == "[::1]"
