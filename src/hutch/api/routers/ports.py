"""Exposed ports: settings (public or private), signed access tokens, and the path-routed
reverse proxy `/v1/sandboxes/{id}/ports/{port}/{path}` (HTTP and WebSocket).

The host-routed form `{port}-{sandbox id}.{HUTCH_PUBLIC_DOMAIN}` is served by
`hutch.api.host_router` with the same proxy.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hutch.api.deps import BODY_MAX, Actor, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.api.port_proxy import TOKEN_PARAM, PortProxy, path_target
from hutch.models.ports import (
    PORT_MAX,
    PORT_MIN,
    PortInfo,
    PortToken,
    PortTokenRequest,
    PortUpdate,
)
from hutch.services.ports import host_label

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/ports", tags=["ports"])
SandboxId = Annotated[str, Path(max_length=64)]
Port = Annotated[int, Path(ge=PORT_MIN, le=PORT_MAX, description="TCP port in the sandbox")]
PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def port_urls(request: Request, domain: str, sandbox_id: str, port: int) -> tuple[str, str, str]:
    """(host, host-routed URL, path-routed URL) as seen from this request's scheme and port."""
    api_host = request.headers.get("host") or request.url.netloc
    suffix = ""
    if ":" in api_host and not api_host.endswith("]"):
        suffix = ":" + api_host.rsplit(":", 1)[1]
    scheme = request.url.scheme
    host = f"{host_label(sandbox_id, port)}.{domain}{suffix}"
    path_url = f"{scheme}://{api_host}/v1/sandboxes/{sandbox_id}/ports/{port}/"
    return host, f"{scheme}://{host}/", path_url


def _info(request: Request, svc: Svc, sandbox_id: str, port: int, public: bool) -> PortInfo:
    host, url, path_url = port_urls(request, svc.settings.public_domain, sandbox_id, port)
    return PortInfo(
        sandbox_id=sandbox_id, port=port, public=public, host=host, url=url, path_url=path_url
    )


@router.get("/{port}", response_model=PortInfo, responses=PROBLEM_RESPONSES)
async def get_port(
    sandbox_id: SandboxId, port: Port, request: Request, actor: Actor, svc: Svc
) -> PortInfo:
    """A port's access setting and its URLs (needs `sandboxes:read`)."""
    public = await run_in_threadpool(svc.ports.get, actor, sandbox_id, port)
    return _info(request, svc, sandbox_id, port, public)


@router.put("/{port}", response_model=PortInfo, responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX)
async def update_port(
    sandbox_id: SandboxId, port: Port, body: PortUpdate, request: Request, actor: Actor, svc: Svc
) -> PortInfo:
    """Make a port public (anyone with the URL) or private again (needs `sandboxes:write`)."""
    public = await run_in_threadpool(svc.ports.set_public, actor, sandbox_id, port, body.public)
    return _info(request, svc, sandbox_id, port, public)


@router.post(
    "/{port}/token",
    response_model=PortToken,
    status_code=201,
    responses=PROBLEM_RESPONSES,
    max_body_size=BODY_MAX,
)
async def mint_token(
    sandbox_id: SandboxId,
    port: Port,
    request: Request,
    actor: Actor,
    svc: Svc,
    body: PortTokenRequest | None = None,
) -> PortToken:
    """A signed URL token for one port (needs `ports:access`); valid `expires_in` seconds."""
    ttl = (body or PortTokenRequest()).expires_in
    token, expires_at = await run_in_threadpool(svc.ports.mint, actor, sandbox_id, port, ttl)
    _, url, path_url = port_urls(request, svc.settings.public_domain, sandbox_id, port)
    q = f"?{TOKEN_PARAM}={token}"
    return PortToken(
        sandbox_id=sandbox_id,
        port=port,
        token=token,
        expires_at=expires_at,
        url=url + q,
        path_url=path_url + q,
    )


class _Proxied(Response):
    """Hands the raw request to the proxy (no body was read by FastAPI)."""

    def __init__(self, proxy: PortProxy, sandbox_id: str, port: int) -> None:
        super().__init__()
        self.proxy, self.sandbox_id, self.port = proxy, sandbox_id, port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy.http(scope, receive, send, path_target(self.sandbox_id, self.port))


PROXY_DOC = (
    "Reverse proxy to TCP `port` on the sandbox's loopback, any method, bodies streamed. "
    "Access: the port is public, or an API key of the sandbox's project with `ports:access` "
    "(or `sandboxes:write`), or a signed token (`?hutch_token=`, header `X-Hutch-Token`, or the "
    "`hutch_port_token` cookie set after the first signed request). 401 `unauthenticated` / "
    "`token_expired`, 403 `token_invalid` / `forbidden`, 404 another tenant's sandbox, 409 not "
    "running, 502 `port_unreachable` when nothing listens. WebSocket upgrades on the same path."
)


async def proxy(sandbox_id: SandboxId, port: Port, path: str, svc: Svc) -> Response:
    """See PROXY_DOC."""
    return _Proxied(svc.port_proxy, sandbox_id, port)


for _method in PROXY_METHODS:  # one operation per method: OpenAPI operation ids stay unique
    router.add_api_route(
        "/{port}/{path:path}",
        proxy,
        methods=[_method],
        operation_id=f"proxy_port_{_method.lower()}",
        summary="Proxy to a sandbox port",
        description=PROXY_DOC,
        response_class=Response,
        responses={
            **PROBLEM_RESPONSES,
            200: {"description": "Whatever the sandbox's server answers"},
            502: {"description": "Nothing listens on the port (`port_unreachable`)"},
        },
    )


@router.websocket("/{port}/{path:path}")
async def proxy_ws(ws: WebSocket, sandbox_id: SandboxId, port: Port, path: str, svc: Svc) -> None:
    """WebSocket to a sandbox port (access as for HTTP; refusals are HTTP problem answers)."""
    await svc.port_proxy.websocket(ws.scope, ws.receive, ws.send, path_target(sandbox_id, port))
