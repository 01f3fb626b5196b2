"""HTTP plumbing shared by the sync and async SDK: a request description (`Call`), the retry
decision, error mapping, and two thin I/O shells (`SyncHttp`, `AsyncHttp`) over httpx.

Retries are a few lines here rather than a library: the decision depends on Hutch's own rules
(idempotent calls and creates carrying an Idempotency-Key may be replayed; streamed bodies not).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx

from hutch.sdk._wire import Connections, json_body
from hutch.sdk.config import ENV_API_KEY, ConnectionConfig, tls_context
from hutch.sdk.exceptions import (
    APIConnectionError,
    AuthenticationError,
    HutchSDKError,
    RequestTimeoutError,
    error_from_problem,
)

T = TypeVar("T")
DEFAULT: Literal["default"] = "default"
RETRY_STATUSES = frozenset({502, 503, 504})
# Transport failures after which the server may or may not have seen the request.
_MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
# Failures where the request certainly never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _none(_: httpx.Response) -> None:
    return None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer; built once, sent by either shell."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True
    timeout: float | Literal["default"] | None = DEFAULT
    # A floor under the timeout, for calls the server may take long to answer.
    min_timeout: float | None = None


def no_content(method: str, path: str, **kw: Any) -> Call[None]:
    """A call whose answer body is ignored (204s)."""
    return Call(method, path, _none, **kw)


def retry_delay(
    call: Call[Any],
    config: ConnectionConfig,
    attempt: int,
    *,
    error: Exception | None = None,
    response: httpx.Response | None = None,
    replayable: bool = True,
) -> float | None:
    """Seconds to wait before trying again, or None to give up now."""
    if attempt >= config.retry.attempts or not replayable:
        return None
    if error is not None:
        if isinstance(error, _NOT_SENT) or (call.idempotent and isinstance(error, _MAYBE_SENT)):
            return config.retry.delay(attempt)
        return None
    if response is not None and call.idempotent and response.status_code in RETRY_STATUSES:
        ra = response.headers.get("retry-after")
        try:
            after = float(ra) if ra is not None else None
        except ValueError:
            after = None
        return config.retry.delay(attempt, after)
    return None


def transport_error(e: httpx.HTTPError, config: ConnectionConfig) -> HutchSDKError:
    """Map an httpx failure to the SDK's exception, naming the URL but nothing sensitive."""
    if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
        return RequestTimeoutError(
            "the request timed out; pass a larger request_timeout= if the operation is slow"
        )
    if isinstance(e, httpx.LocalProtocolError):
        # Its text may quote a header, and headers carry the key.
        return APIConnectionError("the request could not be sent: a header is not valid HTTP")
    return APIConnectionError(f"cannot reach the Hutch API at {config.api_url}: {e}")


def raise_for_problem(
    resp: httpx.Response, body: bytes, config: ConnectionConfig | None = None
) -> None:
    """Raise the typed exception of an error response."""
    if resp.is_error:
        err = error_from_problem(resp.status_code, body, dict(resp.headers))
        if isinstance(err, AuthenticationError) and config is not None and not config.api_key:
            err.detail += (
                f"; set {ENV_API_KEY} or pass api_key= (hutch serve writes an admin key to "
                "DATA_DIR/admin-key)"
            )
        raise err


def _timeout(call: Call[Any], config: ConnectionConfig) -> float | None:
    timeout = config.request_timeout if call.timeout == DEFAULT else call.timeout
    if timeout is not None and call.min_timeout is not None:
        return max(timeout, call.min_timeout)
    return timeout


def _request_kwargs(call: Call[Any], config: ConnectionConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "params": list(call.params),
        "headers": dict(call.headers),
        "timeout": _timeout(call, config),
    }
    if call.json is not None:
        kw["json"] = call.json
    return kw


_PoolKey = tuple[str, str | None, str | None]


class _Pool:
    """The process's connections to one API (per trust store): httpx's pool for streamed
    bodies, and kept-alive connections of its own for one-shot calls."""

    def __init__(self, api_url: str) -> None:
        tls = tls_context()
        self.httpx = httpx.HTTPTransport(
            verify=tls, limits=httpx.Limits(max_keepalive_connections=64)
        )
        self.wire = Connections(api_url, tls)
        self.users = 0

    def close(self) -> None:
        self.wire.close()
        self.httpx.close()


class _SharedTransport(httpx.BaseTransport):
    """One client's share of a connection pool: the pool closes when its last client does."""

    def __init__(self, key: _PoolKey, pool: _Pool) -> None:
        self._key = key
        self._pool = pool
        self.wire = pool.wire
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._pool.httpx.handle_request(request)

    def close(self) -> None:
        with _pools_lock:
            if self._closed:
                return
            self._closed = True
            self._pool.users -= 1
            last = self._pool.users == 0
            if last and _pools.get(self._key) is self._pool:
                del _pools[self._key]
        if last:
            self._pool.close()


_pools: dict[_PoolKey, _Pool] = {}
_pools_lock = threading.Lock()
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def _after_fork_in_child() -> None:
    # A child must not use its parent's sockets, nor a lock another thread held at fork().
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _proxied() -> bool:
    """Whether the environment names a proxy (httpx routes through it only for clients that
    build their own transport)."""
    return any(os.environ.get(v) or os.environ.get(v.lower()) for v in _PROXY_VARS)


def shared_transport(api_url: str) -> _SharedTransport:
    """A share of the process's connection pool to `api_url` (per trust store): blocking
    clients open at the same time, such as many sandbox handles, reuse each other's warm
    keep-alive connections instead of each paying a TCP (and TLS) handshake on both sides.
    When the last of them closes, so does the pool: a closed handle holds no connection."""
    key = (api_url, os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = _Pool(api_url)
        pool.users += 1
        return _SharedTransport(key, pool)


class SyncHttp:
    """Blocking shell: sends `Call`s with retries over a pooled `httpx.Client`."""

    def __init__(self, config: ConnectionConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        # One-shot calls on the shared pool go over `_wire` (see hutch.sdk._wire); a client
        # passed in, or one routed through a proxy, carries everything itself.
        self._wire: Connections | None = None
        if client is None:
            # Behind a proxy, httpx's own transport (which honours HTTP(S)_PROXY and NO_PROXY).
            shared = None if _proxied() else shared_transport(config.api_url)
            self._wire = shared.wire if shared is not None else None
            client = httpx.Client(
                base_url=config.api_url,
                headers=config.headers(),
                timeout=config.request_timeout,
                transport=shared,
                verify=tls_context(),
            )
        self._client = client
        self._wire_headers = {"Accept": "*/*", **config.headers()}

    def send(self, call: Call[T], content: bytes | Iterable[bytes] | None = None) -> T:
        """Send a call (optionally with a raw body) and parse its answer."""
        replayable = content is None or isinstance(content, bytes)
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self._request(call, content)
            except httpx.HTTPError as e:
                delay = retry_delay(call, self.config, attempt, error=e, replayable=replayable)
                if delay is None:
                    raise transport_error(e, self.config) from e
                time.sleep(delay)
                continue
            delay = retry_delay(call, self.config, attempt, response=resp, replayable=replayable)
            if delay is not None:
                time.sleep(delay)
                continue
            raise_for_problem(resp, resp.content, self.config)
            return call.parse(resp)

    def _request(self, call: Call[Any], content: bytes | Iterable[bytes] | None) -> httpx.Response:
        if self._wire is None or not (content is None or isinstance(content, bytes)):
            return self._client.request(
                call.method, call.path, content=content, **_request_kwargs(call, self.config)
            )
        headers = {**self._wire_headers, **call.headers}
        body = content
        if call.json is not None:
            body = json_body(call.json)
            if not any(k.lower() == "content-type" for k in call.headers):
                headers["Content-Type"] = "application/json"
        return self._wire.request(
            call.method,
            call.path,
            params=call.params,
            headers=headers,
            body=body,
            timeout=_timeout(call, self.config),
        )

    @contextmanager
    def stream(self, call: Call[Any]) -> Iterator[httpx.Response]:
        """Open a streamed response (downloads); errors are raised before the body is read."""
        req = self._client.build_request(
            call.method, call.path, **_request_kwargs(call, self.config)
        )
        try:
            resp = self._client.send(req, stream=True)
        except httpx.HTTPError as e:
            raise transport_error(e, self.config) from e
        try:
            if resp.is_error:
                raise_for_problem(resp, resp.read(), self.config)
            yield resp
        finally:
            resp.close()

    def close(self) -> None:
        """Release this client's connections (shared ones once no open client uses them)."""
        self._wire = None  # later calls meet the closed httpx client, which refuses them
        self._client.close()


class AsyncHttp:
    """Asyncio shell: the same as `SyncHttp` over `httpx.AsyncClient`."""

    def __init__(self, config: ConnectionConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client or httpx.AsyncClient(
            base_url=config.api_url,
            headers=config.headers(),
            timeout=config.request_timeout,
            verify=tls_context(),
        )

    async def send(self, call: Call[T], content: bytes | AsyncIterable[bytes] | None = None) -> T:
        """Send a call (optionally with a raw body) and parse its answer."""
        replayable = content is None or isinstance(content, bytes)
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._client.request(
                    call.method, call.path, content=content, **_request_kwargs(call, self.config)
                )
            except httpx.HTTPError as e:
                delay = retry_delay(call, self.config, attempt, error=e, replayable=replayable)
                if delay is None:
                    raise transport_error(e, self.config) from e
                await asyncio.sleep(delay)
                continue
            delay = retry_delay(call, self.config, attempt, response=resp, replayable=replayable)
            if delay is not None:
                await asyncio.sleep(delay)
                continue
            raise_for_problem(resp, resp.content, self.config)
            return call.parse(resp)

    @asynccontextmanager
    async def stream(self, call: Call[Any]) -> AsyncIterator[httpx.Response]:
        """Open a streamed response (downloads); errors are raised before the body is read."""
        req = self._client.build_request(
            call.method, call.path, **_request_kwargs(call, self.config)
        )
        try:
            resp = await self._client.send(req, stream=True)
        except httpx.HTTPError as e:
            raise transport_error(e, self.config) from e
        try:
            if resp.is_error:
                raise_for_problem(resp, await resp.aread(), self.config)
            yield resp
        finally:
            await resp.aclose()

    async def close(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()
