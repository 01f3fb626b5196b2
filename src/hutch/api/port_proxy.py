"""Reverse proxy from the API to TCP ports inside sandboxes, for HTTP and WebSocket.

Each upstream connection is a runner byte tunnel (`RunnerPort.open_port`), so the sandbox gets
no network: HTTP/1.1 is spoken over the tunnel full duplex (`hutch.api.upstream`, tunnels kept
alive per sandbox port), WebSockets by the `websockets` client over a socket pair relayed into
the tunnel.
Bodies stream both ways. Hop-by-hop headers are dropped, `X-Forwarded-*` set, and Hutch's own
credentials (API keys, port tokens, the token cookie) never reach the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode

import anyio
import h11
import structlog
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from hutch.api.errors import PROBLEM_JSON
from hutch.api.upstream import TunnelPool, UpstreamBroken, exchange
from hutch.models.common import ErrorCode, HutchError
from hutch.services.permissions import Principal
from hutch.services.ports import Access, PortService
from hutch.services.runner_port import PortStream, RunnerPort

log = structlog.get_logger("hutch.api.ports")

TOKEN_PARAM = "hutch_token"
TOKEN_HEADER = "x-hutch-token"
TOKEN_COOKIE = "hutch_port_token"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by us, never taken from the client (it could claim any address).
FORWARDED = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
    }
)
WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "host",
    }
)
CHUNK = 64 * 1024
WS_MAX_MESSAGE = 16 * 1024 * 1024

# Response headers an app on a path route may not send, and the sandbox it runs in instead.
PATH_ROUTED_DROP = frozenset({"service-worker-allowed", "set-cookie", "content-security-policy"})
PATH_ROUTED_CSP = b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


@dataclass(frozen=True)
class Target:
    """A sandbox port and the part of the request path meant for it."""

    sandbox_id: str
    port: int
    prefix: str  # "" for host routing; "/v1/sandboxes/{id}/ports/{port}" for path routing


def hutch_key(headers: Headers) -> str | None:
    """A Hutch API key presented by the caller. Only `sk_…` values count, so an app's own
    `Authorization: Bearer <jwt>` passes through to the app untouched."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value.startswith(("sk_live_", "sk_test_")):
        return value
    x = headers.get("x-api-key", "").strip()
    return x if x.startswith(("sk_live_", "sk_test_")) else None


def _cookies(headers: Headers) -> list[tuple[str, str]]:
    out = []
    for raw in headers.getlist("cookie"):
        for part in raw.split(";"):
            name, eq, value = part.strip().partition("=")
            if eq:
                out.append((name, value))
    return out


def presented_tokens(scope: Scope, headers: Headers) -> tuple[list[str], bool]:
    """Port tokens offered (query, header, then cookies) and whether one came by query/header."""
    query = [
        v
        for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        if k == TOKEN_PARAM
    ]
    explicit = query + ([headers[TOKEN_HEADER]] if TOKEN_HEADER in headers else [])
    cookies = [v for k, v in _cookies(headers) if k == TOKEN_COOKIE]
    return explicit + cookies, bool(explicit)


def upstream_target(scope: Scope, target: Target) -> bytes:
    """Path and query for the app: the route prefix and our token parameter removed."""
    raw: bytes = scope.get("raw_path") or quote(scope["path"]).encode()
    if target.prefix and raw.startswith(target.prefix.encode()):
        raw = raw[len(target.prefix) :]
    raw = raw or b"/"
    qs: bytes = scope.get("query_string", b"")
    if TOKEN_PARAM.encode() in qs:
        pairs = parse_qsl(qs.decode("latin-1"), keep_blank_values=True)
        qs = urlencode([(k, v) for k, v in pairs if k != TOKEN_PARAM]).encode("latin-1")
    return raw + (b"?" + qs if qs else b"")


def upstream_headers(scope: Scope, headers: Headers, target: Target) -> list[tuple[bytes, bytes]]:
    """The request headers for the app: no hop-by-hop headers, no Hutch credentials, our own
    X-Forwarded-*; Host kept as the client sent it."""
    listed = {h.strip().lower() for v in headers.getlist("connection") for h in v.split(",")}
    out: list[tuple[bytes, bytes]] = []
    for name, value in scope["headers"]:
        n = name.decode("latin-1").lower()
        if n in HOP_BY_HOP or n in listed or n in FORWARDED or n == TOKEN_HEADER:
            continue
        v = value.decode("latin-1")
        if n in ("authorization", "x-api-key") and ("sk_live_" in v or "sk_test_" in v):
            continue
        if n == "cookie":
            kept = [p.strip() for p in v.split(";") if p.strip().partition("=")[0] != TOKEN_COOKIE]
            if not kept:
                continue
            value = "; ".join(kept).encode("latin-1")
        out.append((name, value))
    client = scope.get("client")
    host = headers.get("host", "")
    raw_scheme = str(scope.get("scheme") or "http")
    scheme = {"ws": "http", "wss": "https"}.get(raw_scheme, raw_scheme)
    server = scope.get("server")
    port = (
        host.rsplit(":", 1)[1]
        if ":" in host and not host.endswith("]")
        else (str(server[1]) if server else ("443" if scheme == "https" else "80"))
    )
    out += [
        (b"x-forwarded-for", (client[0] if client else "").encode()),
        (b"x-forwarded-proto", scheme.encode()),
        (b"x-forwarded-host", host.encode("latin-1")),
        (b"x-forwarded-port", port.encode()),
    ]
    if target.prefix:
        out.append((b"x-forwarded-prefix", target.prefix.encode()))
    return out


def token_cookie(scope: Scope, target: Target, access: Access, ttl_s: int) -> bytes:
    """Set-Cookie carrying the token, so a browser keeps access after the first signed URL."""
    c: SimpleCookie = SimpleCookie()
    assert access.token is not None
    c[TOKEN_COOKIE] = access.token
    m = c[TOKEN_COOKIE]
    m["path"] = target.prefix + "/"
    m["max-age"] = str(ttl_s)
    m["httponly"] = True
    m["samesite"] = "Lax"
    if scope.get("scheme") in ("https", "wss"):
        m["secure"] = True
    return m.OutputString().encode("latin-1")


def problem(err: HutchError, instance: str) -> JSONResponse:
    """problem+json for a refused or failed proxied request."""
    return JSONResponse(
        err.problem(instance).model_dump(mode="json", exclude_none=True),
        status_code=err.status,
        media_type=PROBLEM_JSON,
        headers=err.headers or None,
    )


def _unreachable(target: Target, why: str) -> HutchError:
    return HutchError(
        ErrorCode.port_unreachable,
        f"the server on port {target.port} of sandbox {target.sandbox_id} {why}",
    )


class PortProxy:
    """Serves proxied requests for the path route and the host route alike."""

    def __init__(
        self,
        ports: PortService,
        runner: Callable[[], RunnerPort],
        cached_key: Callable[[str], Principal | None] | None = None,
    ) -> None:
        self.ports = ports
        self.runner = runner
        # The API's principal cache: a proxied request with a recently used key needs no key
        # lookup (on a miss the access decision looks it up, only if the port is not public).
        self.cached_key = cached_key
        self.pool = TunnelPool(runner)

    async def aclose(self) -> None:
        """Close pooled upstream connections."""
        await self.pool.aclose()

    async def _authorize(self, scope: Scope, target: Target) -> tuple[Access, bool]:
        headers = Headers(scope=scope)
        tokens, explicit = presented_tokens(scope, headers)
        key = hutch_key(headers)
        actor = self.cached_key(key) if key is not None and self.cached_key else None
        access = await anyio.to_thread.run_sync(
            functools.partial(
                self.ports.authorize, target.sandbox_id, target.port, key, tokens, actor=actor
            )
        )
        if access.key_id:
            scope.setdefault("state", {})["key_id"] = access.key_id
        return access, explicit and access.via == "token"

    # --- HTTP ---

    async def http(self, scope: Scope, receive: Receive, send: Send, target: Target) -> None:
        """Proxy one HTTP request (any method), streaming both bodies at once."""
        instance = scope["path"]
        try:
            access, set_cookie = await self._authorize(scope, target)
        except HutchError as e:
            await problem(e, instance)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        out = [
            (k, v) for k, v in upstream_headers(scope, headers, target) if k.lower() != b"expect"
        ]
        has_body = "content-length" in headers or "transfer-encoding" in headers
        if has_body and "content-length" not in headers:
            out.append((b"transfer-encoding", b"chunked"))
        try:
            request = h11.Request(
                method=scope["method"], target=upstream_target(scope, target), headers=out
            )
        except h11.LocalProtocolError as e:
            bad = HutchError(ErrorCode.invalid_request, f"cannot forward this request: {e}")
            await problem(bad, instance)(scope, receive, send)
            return
        cookie = None
        if set_cookie and access.expires_at is not None:
            cookie = token_cookie(scope, target, access, self.ports.token_ttl(access.expires_at))

        async def start(status: int, upstream: list[tuple[bytes, bytes]]) -> None:
            # The API server adds its own Date and framing; two would confuse clients.
            drop = HOP_BY_HOP | {"date"}
            if target.prefix:
                # Path routing serves the app on the API's own origin: it must not claim that
                # origin (a service worker scoped to "/", cookies for every path), so the page
                # runs as an opaque origin. Browser apps belong on host routing.
                drop = drop | PATH_ROUTED_DROP
            kept = [(k, v) for k, v in upstream if k.decode("latin-1").lower() not in drop]
            if target.prefix:
                kept.append((b"content-security-policy", PATH_ROUTED_CSP))
            if cookie is not None:
                kept.append((b"set-cookie", cookie))
            await send({"type": "http.response.start", "status": status, "headers": kept})

        async def body(chunk: bytes, more: bool) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

        key = (target.sandbox_id, target.port)
        try:
            await exchange(self.pool, key, request, has_body, receive, start, body)
        except HutchError as e:
            await problem(e, instance)(scope, receive, send)
        except UpstreamBroken as e:
            err = _unreachable(target, f"closed the connection without an answer ({e})")
            await problem(err, instance)(scope, receive, send)
        except (ClientDisconnect, OSError):
            return

    # --- WebSocket ---

    async def websocket(self, scope: Scope, receive: Receive, send: Send, target: Target) -> None:
        """Proxy a WebSocket: the app's handshake answer decides, then messages flow 1:1."""
        ws = WebSocket(scope, receive, send)
        try:
            access, set_cookie = await self._authorize(scope, target)
            tunnel = await self.runner().open_port(target.sandbox_id, target.port)
        except HutchError as e:
            await _deny(ws, e)
            return
        a, b = socket.socketpair()
        relay = asyncio.create_task(_relay_socket(b, tunnel))
        try:
            try:
                upstream = await self._ws_connect(scope, a, target)
            except (InvalidHandshake, OSError, TimeoutError) as e:
                why = (
                    f"refused the WebSocket upgrade (HTTP {e.response.status_code})"
                    if isinstance(e, InvalidStatus)
                    else "did not complete the WebSocket handshake"
                )
                await _deny(ws, _unreachable(target, why))
                return
            extra = []
            if set_cookie and access.expires_at is not None:
                ttl = self.ports.token_ttl(access.expires_at)
                extra.append((b"set-cookie", token_cookie(scope, target, access, ttl)))
            await ws.accept(subprotocol=upstream.subprotocol, headers=extra)
            await _pump_ws(ws, upstream)
        finally:
            relay.cancel()
            with contextlib.suppress(BaseException):
                await relay
            a.close()
            b.close()
            with contextlib.suppress(Exception):
                await tunnel.aclose()

    async def _ws_connect(
        self, scope: Scope, sock: socket.socket, target: Target
    ) -> ClientConnection:
        headers = Headers(scope=scope)
        extra = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in upstream_headers(scope, headers, target)
            if k.decode("latin-1").lower() not in WS_HANDSHAKE
        ]
        host = headers.get("host", "sandbox")
        path = upstream_target(scope, target).decode("latin-1")
        return await connect(
            f"ws://{host}{path}",
            sock=sock,
            additional_headers=extra,
            subprotocols=scope.get("subprotocols") or None,
            compression=None,
            max_size=WS_MAX_MESSAGE,
            open_timeout=10,
            user_agent_header=None,
        )


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientDisconnect()
        body = msg.get("body", b"")
        if body:
            yield body
        if not msg.get("more_body", False):
            return


async def _deny(ws: WebSocket, err: HutchError) -> None:
    """Refuse a WebSocket handshake with the problem as an HTTP response (where the server
    supports it), else by closing with 4000 + status."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(problem(err, ws.scope["path"]))
    else:
        await ws.close(code=4000 + err.status % 1000, reason=err.code.value)


async def _relay_socket(sock: socket.socket, tunnel: PortStream) -> None:
    """Bytes between one end of a socket pair and a runner tunnel, until either ends."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    async def out() -> None:
        while data := await loop.sock_recv(sock, CHUNK):
            await tunnel.write(data)

    async def back() -> None:
        while data := await tunnel.read(CHUNK):
            await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)

    tasks = [asyncio.create_task(out()), asyncio.create_task(back())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


async def _pump_ws(ws: WebSocket, upstream: ClientConnection) -> None:
    """Messages both ways, keeping text/binary; the first side to close closes the other."""
    code = 1000

    async def from_client() -> None:
        nonlocal code
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    code = int(msg.get("code") or 1000)
                    return
                if msg.get("text") is not None:
                    await upstream.send(msg["text"])
                elif msg.get("bytes") is not None:
                    await upstream.send(msg["bytes"])
        except (ConnectionClosed, WebSocketDisconnect, RuntimeError):
            return

    async def from_app() -> None:
        try:
            async for message in upstream:
                if isinstance(message, str):
                    await ws.send_text(message)
                else:
                    await ws.send_bytes(message)
        except (ConnectionClosed, WebSocketDisconnect, RuntimeError, OSError):
            return

    tasks = [asyncio.create_task(from_client()), asyncio.create_task(from_app())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
    if tasks[1] in done:  # the app closed: tell the client with the app's code
        app_code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await ws.close(code=app_code if app_code not in (1005, 1006) else 1000)
    else:
        with contextlib.suppress(Exception):
            await upstream.close(code=code if code not in (1005, 1006) else 1000)
    with contextlib.suppress(Exception):
        await upstream.close()


def path_target(sandbox_id: str, port: int) -> Target:
    """The target of a path-routed request."""
    return Target(sandbox_id, port, f"/v1/sandboxes/{sandbox_id}/ports/{port}")
