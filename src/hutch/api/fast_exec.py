"""`POST /v1/sandboxes/{sandbox_id}/exec` and `POST /v1/sandboxes` without FastAPI's routing
and dependency solving.

A one-shot exec is the call agents make most, and a create the one they wait on first; the API's
own work on either is small next to the framework's: matching some sixty routes, solving the
dependency graph and validating through generated models costs more CPU than authenticating the
key (cached) and checking the sandbox together. This ASGI layer takes requests with a JSON body
of announced length and answers them in the routed endpoint's order, through the same functions:
the key (401); for an exec, the caller's right to run commands in this running sandbox (403, 404,
409), then the body; for a create, the Idempotency-Key header and the body, then the create
itself (whose refusals, 403 to 429, come from the same service call). Whatever the routed endpoint
would answer differently is handed to it, with the body already read: no or another content type,
a body that is not JSON or does not validate (422), a malformed Idempotency-Key (422), one of
unknown or excessive length, a client that leaves while sending.
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
    BODY_MAX,
    EXEC_BODY_MAX,
    IDEMPOTENCY_KEY_PATTERN,
    Services,
    client_ip,
    idempotency_scope,
    key_prefix,
    presented_key,
    resolve_key,
)
from hutch.api.errors import problem_response
from hutch.api.routers.sandbox_proxy import check_writer, exec_command
from hutch.api.routers.sandboxes import create_answer
from hutch.models.api import SandboxCreate
from hutch.models.common import HutchError
from hutch.models.exec import ExecRequest
from hutch.services.idempotency import MAX_KEY_LEN, Claim, request_fingerprint
from hutch.services.permissions import Principal

ROUTE_PATH = "/v1/sandboxes/{sandbox_id}/exec"
CREATE_PATH = "/v1/sandboxes"
_PATH = re.compile(r"/v1/sandboxes/([^/]{1,64})/exec")
_JSON = re.compile(rb"application/(?:[\w.+-]*\+)?json\s*(?:;.*)?", re.IGNORECASE)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


class _Route:
    """What the request middleware reads from scope["route"] (the template, for logs and
    metrics)."""

    def __init__(self, path: str) -> None:
        self.path = path


ROUTE = _Route(ROUTE_PATH)
CREATE_ROUTE = _Route(CREATE_PATH)


class FastExec:
    """Pure ASGI: serves exec requests it can answer as the routed endpoint would, passes the
    rest on."""

    def __init__(self, app: ASGIApp, services: Callable[[], Services]) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route, sandbox_id, limit = None, None, 0
        if scope["type"] == "http" and scope["method"] == "POST":
            path = get_route_path(scope)
            if path == CREATE_PATH:
                route, limit = CREATE_ROUTE, BODY_MAX
            elif (match := _PATH.fullmatch(path)) is not None:
                route, sandbox_id, limit = ROUTE, match[1], EXEC_BODY_MAX
        length = _length(scope, limit) if route is not None else None
        if route is None or length is None:
            await self.app(scope, receive, send)
            return
        received, body = await _read(receive, length)
        if body is None:  # the client left, or sent more than it announced: as routed
            await self.app(scope, _replay(received, receive), send)
            return
        request = Request(scope)
        scope["route"] = route  # for the request log and metrics, as the router would set it
        scope["path_params"] = {} if sandbox_id is None else {"sandbox_id": sandbox_id}
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

    async def _admit(self, request: Request, sandbox_id: str | None, body: bytes) -> Any:
        """The exec (or, without a sandbox id, the create) to run, or None when the routed
        endpoint should answer. Raises the HutchError the routed endpoint would answer with."""
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
        if sandbox_id is None:
            return self._create(request, svc, actor, data, body)
        runner = await check_writer(svc, actor, sandbox_id)
        try:
            # As FastAPI validates a body: the parsed JSON, in Python mode.
            req = ExecRequest.model_validate(data)
        except ValidationError:
            return None

        async def run() -> Any:
            return await exec_command(sandbox_id, req, runner, actor, svc)

        return run

    def _create(
        self, request: Request, svc: Services, actor: Principal, data: Any, body: bytes
    ) -> Any:
        """The create to run, or None when the routed endpoint should answer (a malformed
        Idempotency-Key or body: 422, both in one answer)."""
        idem = request.headers.get("idempotency-key")
        if idem is not None and not (
            len(idem) <= MAX_KEY_LEN and _IDEMPOTENCY_KEY.fullmatch(idem) is not None
        ):
            return None
        try:
            spec = SandboxCreate.model_validate(data)
        except ValidationError:
            return None
        claim = None
        if idem is not None:
            fingerprint = request_fingerprint(request.method, request.url.path, body)
            claim = Claim(idempotency_scope(actor), idem, fingerprint)

        async def run() -> Any:
            return await create_answer(svc, actor, spec, claim)

        return run


def _length(scope: Scope, limit: int) -> int | None:
    """The announced body length, if the request is one this path takes (a JSON content type,
    a content length within the route's body limit, no transfer coding)."""
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
    if not json_type or length is None or length == 0 or length > limit:
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
