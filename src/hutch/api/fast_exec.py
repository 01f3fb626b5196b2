"""`POST /v1/sandboxes/{sandbox_id}/exec` without FastAPI's routing and dependency solving.

A one-shot exec is the call agents make most, and the API's own work on it is small next to the
framework's: matching some sixty routes, solving the dependency graph and validating through
generated models costs more CPU than authenticating the key (cached), checking the sandbox and
calling the runner together. This ASGI layer takes requests with a JSON body of announced length
and answers them in the routed endpoint's order, through the same functions: the key (401), the
caller's right to run commands in this running sandbox (403, 404, 409), then the body. Whatever
the routed endpoint would answer differently is handed to it, with the body already read: no or
another content type, a body that is not JSON or does not validate (422), one of unknown or
excessive length, a client that leaves while sending.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pydantic import ValidationError
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.api.deps import (
    EXEC_BODY_MAX,
    Services,
    client_ip,
    key_prefix,
    presented_key,
    resolve_key,
)
from hutch.api.errors import problem_response
from hutch.api.routers.sandbox_proxy import check_writer, exec_command
from hutch.models.common import HutchError
from hutch.models.exec import ExecRequest

ROUTE_PATH = "/v1/sandboxes/{sandbox_id}/exec"
_PATH = re.compile(r"/v1/sandboxes/([^/]{1,64})/exec")
_JSON = re.compile(rb"application/(?:[\w.+-]*\+)?json\s*(?:;.*)?", re.IGNORECASE)


class _Route:
    """What the request middleware reads from scope["route"] (the template, for logs and
    metrics)."""

    path = ROUTE_PATH


ROUTE = _Route()


class FastExec:
    """Pure ASGI: serves exec requests it can answer as the routed endpoint would, passes the
    rest on."""

    def __init__(self, app: ASGIApp, services: Callable[[], Services]) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _PATH.fullmatch(get_route_path(scope))
        length = _length(scope) if match is not None else None
        if match is None or length is None:
            await self.app(scope, receive, send)
            return
        received, body = await _read(receive, length)
        if body is None:  # the client left, or sent more than it announced: as routed
            await self.app(scope, _replay(received, receive), send)
            return
        request = Request(scope)
        sandbox_id = match[1]
        scope["route"] = ROUTE  # for the request log and metrics, as the router would set it
        scope["path_params"] = {"sandbox_id": sandbox_id}
        try:
            run = await self._admit(request, sandbox_id, body)
            if run is None:
                del scope["route"], scope["path_params"]
                await self.app(scope, _replay(received, receive), send)
                return
            response = await run()
        except HutchError as e:
            response = problem_response(e, request)
        # Anything else propagates to the server-error handler, which answers 500 and logs the
        # traceback, as it does for the routed endpoint.
        await response(scope, receive, send)

    async def _admit(self, request: Request, sandbox_id: str, body: bytes) -> Any:
        """The exec to run, or None when the routed endpoint should answer. Raises the
        HutchError the routed endpoint would answer with."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # refused by the routed endpoint before the key
            return None
        svc = self.services()
        key = presented_key(request)
        actor = await resolve_key(svc, key)
        request.state.key_id = actor.key_id
        request.state.key_prefix = key_prefix(key)
        actor = replace(actor, source_ip=client_ip(request))
        runner = await check_writer(svc, actor, sandbox_id)
        try:
            # As FastAPI validates a body: the parsed JSON, in Python mode.
            req = ExecRequest.model_validate(data)
        except ValidationError:
            return None

        async def run() -> Any:
            return await exec_command(sandbox_id, req, runner, actor, svc)

        return run


def _length(scope: Scope) -> int | None:
    """The announced body length, if the request is one this path takes (a JSON content type,
    a content length within the exec body limit, no transfer coding)."""
    length = None
    json_type: bool | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                return None
            length = int(value)
        elif name == b"content-type" and json_type is None:  # the first, as Starlette reads
            json_type = _JSON.fullmatch(value) is not None
        elif name == b"transfer-encoding":
            return None
    if not json_type or length is None or length == 0 or length > EXEC_BODY_MAX:
        return None
    return length


async def _read(receive: Receive, length: int) -> tuple[list[Message], bytes | None]:
    """The messages received and the whole body; the body is None if the client left or sent
    more than `length` (the routed endpoint then answers from the messages)."""
    received: list[Message] = []
    size = 0
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return received, None
        size += len(message.get("body", b""))
        if size > length:
            return received, None
        if not message.get("more_body", False):
            return received, b"".join(m.get("body", b"") for m in received)


def _replay(received: list[Message], receive: Receive) -> Receive:
    """A `receive` that hands over the messages already read, then listens to the client."""
    pending = list(received)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
