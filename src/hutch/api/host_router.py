"""Host-based routing in front of the API: `{port}-sbx-{ulid}.{domain}` goes to the port proxy.

Sandbox ids are `sbx_<ulid>`; DNS names cannot hold `_`, so the canonical host replaces it with
`-` (`8000-sbx-01j….localhost`); `8000-sbx_01j….localhost` is accepted too. Every path on such
a host belongs to the sandbox's app (nothing is reserved), and every other host reaches the API.
With the default domain `localhost`, browsers and curl resolve the names to loopback by
themselves (RFC 6761); elsewhere point a wildcard DNS record at the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from hutch.api.port_proxy import PortProxy, Target
from hutch.services.ports import parse_host


@dataclass(frozen=True)
class _HostRoute:
    """Stands in for a matched route so request logs and metrics name a bounded template."""

    path: str = "{port}-{sandbox_id}.{domain}/{path}"


HOST_ROUTE = _HostRoute()


class HostRouter:
    """Pure ASGI: sandbox hosts to the proxy, everything else to the app."""

    def __init__(self, app: ASGIApp, domain: str, proxy: Callable[[], PortProxy]) -> None:
        self.app = app
        self.domain = domain
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            hit = parse_host(Headers(scope=scope).get("host", ""), self.domain)
            if hit is not None:
                scope["route"] = HOST_ROUTE
                target = Target(hit[0], hit[1], "")
                if scope["type"] == "http":
                    await self.proxy().http(scope, receive, send, target)
                else:
                    await self.proxy().websocket(scope, receive, send, target)
                return
        await self.app(scope, receive, send)
