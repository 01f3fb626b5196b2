"""Retries and error mapping of the HTTP shells, driven through httpx's transport hook:
failures like a 503 mid-flight cannot be produced on demand by a real server."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import threading

import httpx
import pytest

from hutch.sdk import _http, _ops
from hutch.sdk._files import CHUNK, sync_body
from hutch.sdk._http import AsyncHttp, SyncHttp
from hutch.sdk.config import ConnectionConfig, RetryPolicy
from hutch.sdk.exceptions import (
    APIConnectionError,
    AuthenticationError,
    SandboxNotFoundError,
    ServiceUnavailableError,
)

CFG = ConnectionConfig("http://hutch.test", "sk_test_k", 5, RetryPolicy(3, 0, 0))
SANDBOX = {
    "sandbox_id": "sbx_1",
    "template": "base",
    "isolation": "namespace",
    "vcpu": 1,
    "memory_mb": 1024,
    "disk_mb": 4096,
    "state": "running",
    "created_at": "2030-01-01T00:00:00Z",
    "some_future_field": 1,
}


def _sync(handler: httpx.MockTransport) -> SyncHttp:
    return SyncHttp(
        CFG, httpx.Client(transport=handler, base_url=CFG.api_url, headers=CFG.headers())
    )


def test_create_is_retried_with_the_same_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if len(seen) < 3:
            return httpx.Response(
                503, json={"title": "busy", "status": 503, "code": "capacity_exhausted"}
            )
        return httpx.Response(201, json=SANDBOX)

    info = _sync(httpx.MockTransport(handler)).send(
        _ops.create_sandbox(
            template="base",
            timeout=60,
            vcpu=1,
            memory_mb=1024,
            disk_mb=4096,
            isolation="namespace",
            envs=None,
            metadata=None,
        )
    )
    assert info.sandbox_id == "sbx_1"
    assert len(seen) == 3
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1
    assert seen[0].headers["Authorization"] == "Bearer sk_test_k"


def test_retries_give_up_with_the_typed_error() -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            503, json={"title": "x", "status": 503, "code": "runner_unavailable", "detail": "down"}
        )

    with pytest.raises(ServiceUnavailableError, match="down"):
        _sync(httpx.MockTransport(handler)).send(_ops.get_sandbox("sbx_1"))
    assert calls == CFG.retry.attempts


def test_commands_are_not_replayed() -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(502, text="bad gateway")

    with pytest.raises(ServiceUnavailableError):
        _sync(httpx.MockTransport(handler)).send(
            _ops.exec_call("sbx_1", _ops.exec_request("rm -rf /tmp/x"), 5)
        )
    assert calls == 1


def test_connection_errors_are_retried_then_reported() -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=req)

    with pytest.raises(APIConnectionError, match="cannot reach"):
        _sync(httpx.MockTransport(handler)).send(_ops.get_sandbox("sbx_1"))
    assert calls == CFG.retry.attempts


def test_streamed_upload_is_chunked_and_never_replayed() -> None:
    received: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        received.append(len(req.read()))
        assert "content-length" not in req.headers  # chunked: the size was never needed
        return httpx.Response(503)

    body = sync_body(io.BytesIO(b"x" * (2 * CHUNK + 5)))
    with pytest.raises(ServiceUnavailableError):
        _sync(httpx.MockTransport(handler)).send(_ops.write_file("sbx_1", "/f"), body)
    assert received == [2 * CHUNK + 5]


def test_file_objects_are_read_in_chunks() -> None:
    chunks = list(sync_body(io.BytesIO(b"a" * (CHUNK + 1))))  # type: ignore[arg-type]
    assert [len(c) for c in chunks] == [CHUNK, 1]
    assert list(sync_body(io.StringIO("héllo"))) == ["héllo".encode()]  # type: ignore[arg-type]
    assert sync_body("text") == b"text"


def test_async_shell_maps_problems_too() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404,
            json={"title": "nf", "status": 404, "code": "sandbox_not_found", "detail": "no sbx_9"},
            headers={"content-type": "application/problem+json"},
        )

    async def go() -> None:
        http = AsyncHttp(
            CFG, httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url=CFG.api_url)
        )
        try:
            with pytest.raises(SandboxNotFoundError, match="no sbx_9"):
                await http.send(_ops.get_sandbox("sbx_9"))
        finally:
            await http.close()

    asyncio.run(go())


def test_a_missing_key_is_explained_and_header_errors_never_quote_the_key() -> None:
    problem = {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "code": "unauthenticated",
        "detail": "no API key",
    }

    def unauthorized(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json=problem)

    keyless = ConnectionConfig("http://hutch.test", None, 5, RetryPolicy(1, 0, 0))
    http = SyncHttp(
        keyless, httpx.Client(transport=httpx.MockTransport(unauthorized), base_url=keyless.api_url)
    )
    with pytest.raises(AuthenticationError, match="set HUTCH_API_KEY or pass api_key="):
        http.send(_ops.get_sandbox("sbx_1"))
    with pytest.raises(AuthenticationError) as e:
        _sync(httpx.MockTransport(unauthorized)).send(_ops.get_sandbox("sbx_1"))
    assert "HUTCH_API_KEY" not in str(e.value)  # a key was sent: the hint would mislead

    def refuses_header(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("Illegal header value b'Bearer sk_live_SECRET\\n'")

    with pytest.raises(APIConnectionError) as c:
        _sync(httpx.MockTransport(refuses_header)).send(_ops.get_sandbox("sbx_1"))
    assert "SECRET" not in str(c.value)


def test_open_handles_share_warm_connections_and_the_last_close_releases_them() -> None:
    """Each sandbox handle has its own client; those open at the same time share the
    process's pool to an API, so a new handle reuses a kept-alive connection; closing one
    leaves the others theirs, and once all are closed no connection is held."""
    connections: list[object] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self) -> None:
            connections.append(self)
            super().setup()

        def do_GET(self) -> None:
            body = json.dumps(SANDBOX).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = ConnectionConfig(f"http://127.0.0.1:{server.server_port}", "sk_test_k", 5)
        first = SyncHttp(cfg)
        assert first.send(_ops.get_sandbox("sbx_1")).sandbox_id == "sbx_1"
        second = SyncHttp(cfg)
        first.close()
        for _ in range(3):
            assert second.send(_ops.get_sandbox("sbx_1")).sandbox_id == "sbx_1"
        assert len(connections) == 1  # one TCP connection for both handles
        second.close()
        assert not any(k[0] == cfg.api_url for k in _http._pools)  # the pool is gone
        third = SyncHttp(cfg)
        assert third.send(_ops.get_sandbox("sbx_1")).sandbox_id == "sbx_1"
        third.close()
        assert len(connections) == 2  # a new pool, a new connection
    finally:
        server.shutdown()
        server.server_close()


def test_behind_a_proxy_the_environment_proxy_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    http = SyncHttp(ConnectionConfig("https://hutch.example", "sk_test_k", 5))
    try:
        transport = http._client._transport_for_url(httpx.URL("https://hutch.example/v1/me"))
        assert not isinstance(transport, _http._SharedTransport)
        assert transport is not http._client._transport  # the proxy's route, not the default
    finally:
        http.close()
    monkeypatch.delenv("HTTPS_PROXY")
    http = SyncHttp(ConnectionConfig("https://hutch.example", "sk_test_k", 5))
    try:
        assert isinstance(http._client._transport, _http._SharedTransport)
    finally:
        http.close()
