"""Per-request log line, metrics and request id. Logs name the route template, never the raw
path or query (they may hold file paths), bodies, headers or keys."""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.api.metrics import Metrics
from hutch.ids import new_id
from hutch.models.common import ErrorCode, HutchError
from hutch.services.usage import UsageLog, UsageRecord

log = structlog.get_logger("hutch.api")
UNMATCHED = "<unmatched>"
UNLOGGED = frozenset({"/metrics", "/healthz"})
PROBLEM_JSON = b"application/problem+json"
TOO_LARGE = (
    HutchError(ErrorCode.invalid_request, "the request body is too large", status=413)
    .problem()
    .model_dump_json(exclude_none=True)
    .encode()
)


def route_template(scope: Scope) -> str:
    """The matched route's template (e.g. /v1/sandboxes/{sandbox_id}), bounded cardinality."""
    route = scope.get("route")
    return str(getattr(route, "path", UNMATCHED))


class RequestMiddleware:
    """Pure ASGI middleware (no body buffering, so streaming stays streaming)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, usage: UsageLog | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.usage = usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        status = 500 if scope["type"] == "http" else 101
        start = time.perf_counter()

        replaced = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, replaced
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if status == 413 and (b"content-type", PROBLEM_JSON) not in headers:
                    # The body-size limiter answers in plain text below our exception handlers.
                    replaced = True
                    headers = [
                        (b"content-type", PROBLEM_JSON),
                        (b"content-length", str(len(TOO_LARGE)).encode()),
                    ]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            elif replaced and message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                message = {"type": "http.response.body", "body": TOO_LARGE}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = route_template(scope)
            method = scope.get("method", "WS")
            if route != "/metrics":
                self.metrics.observe(method, route, status, elapsed)
            state = scope.get("state") or {}
            if self.usage is not None and route not in UNLOGGED:
                # Queued in memory; a background task writes batches (no database write here).
                sandbox_id = (scope.get("path_params") or {}).get("sandbox_id")
                self.usage.add(
                    UsageRecord(
                        at=self.usage.clock.now(),
                        key_prefix=state.get("key_prefix"),
                        method=str(method)[:8],
                        route=route[:200],
                        status=status,
                        latency_us=int(elapsed * 1_000_000),
                        sandbox_id=str(sandbox_id)[:64] if sandbox_id else None,
                    )
                )
            log.info(
                "request",
                request_id=request_id,
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                key_id=state.get("key_id"),
            )
