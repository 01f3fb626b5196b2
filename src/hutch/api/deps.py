"""FastAPI dependencies: services, database session, caller, pagination, idempotency."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection
from starlette.responses import Response

from hutch.api.metrics import Metrics
from hutch.api.port_proxy import PortProxy
from hutch.api.settings import ApiSettings
from hutch.db.session import Database
from hutch.services.accounts import AccountService
from hutch.services.clock import Clock
from hutch.services.idempotency import MAX_KEY_LEN, IdempotencyService, Stored, request_fingerprint
from hutch.services.keys import KeyService
from hutch.services.pagination import LIMIT_DEFAULT, LIMIT_MAX, LIMIT_MIN
from hutch.services.permissions import Principal
from hutch.services.ports import PortService
from hutch.services.reconcile import Reconciler
from hutch.services.runner_port import RunnerPort
from hutch.services.sandboxes import SandboxService

JSON = "application/json"
BODY_MAX = 1 << 20  # JSON bodies of account and sandbox routes
EXEC_BODY_MAX = 8 << 20  # commands may carry stdin


@dataclass
class Services:
    """Everything a request handler may use; built once per app."""

    settings: ApiSettings
    db: Database
    clock: Clock
    keys: KeyService
    accounts: AccountService
    sandboxes: SandboxService
    idempotency: IdempotencyService
    reconciler: Reconciler
    runner: RunnerPort | None
    metrics: Metrics
    ports: PortService
    port_proxy: PortProxy


def services(conn: HTTPConnection) -> Services:
    """The app's services."""
    svc: Services = conn.app.state.services
    return svc


def get_db(svc: Annotated[Services, Depends(services)]) -> Iterator[Session]:
    """A database session for this request."""
    with svc.db.session() as s:
        yield s


def presented_key(conn: HTTPConnection) -> str | None:
    """The API key from `Authorization: Bearer …` or `X-API-Key`."""
    auth = conn.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return conn.headers.get("x-api-key") or None


def authenticate(svc: Services, key: str | None) -> Principal:
    """Resolve an API key in a short session of its own (blocking: call from a worker thread)."""
    with svc.db.session() as s:
        return svc.keys.authenticate(s, key)


async def principal(conn: HTTPConnection, svc: Annotated[Services, Depends(services)]) -> Principal:
    """Authenticate the caller (401 problem otherwise)."""
    # Its own session, closed at once: the connection goes back to the pool while a long request
    # (a file download, a command) runs.
    actor = await run_in_threadpool(authenticate, svc, presented_key(conn))
    conn.state.key_id = actor.key_id
    return actor


DB = Annotated[Session, Depends(get_db)]
Actor = Annotated[Principal, Depends(principal)]
Svc = Annotated[Services, Depends(services)]


@dataclass(frozen=True)
class PageParams:
    """`limit` and `cursor` query parameters."""

    limit: int
    cursor: str | None


def page_params(
    limit: Annotated[
        int, Query(ge=LIMIT_MIN, le=LIMIT_MAX, description="Items per page")
    ] = LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
) -> PageParams:
    """Pagination parameters."""
    return PageParams(limit, cursor)


Paging = Annotated[PageParams, Depends(page_params)]


class Idempotent:
    """Runs a create at most once per Idempotency-Key and replays its first response."""

    def __init__(
        self, svc: IdempotencyService, scope: str, key: str | None, fingerprint: str
    ) -> None:
        self.svc = svc
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint

    async def run(self, status: int, fn: Callable[[], Awaitable[BaseModel]]) -> Response:
        """Run `fn` (or replay); the response body is the model as JSON."""
        if self.key is None:
            return Response((await fn()).model_dump_json(), status_code=status, media_type=JSON)
        stored = await run_in_threadpool(self.svc.begin, self.scope, self.key, self.fingerprint)
        if stored is not None:
            return Response(
                stored.body,
                status_code=stored.status,
                media_type=JSON,
                headers={"Idempotent-Replayed": "true"},
            )
        try:
            body = (await fn()).model_dump_json()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self.svc.abandon, self.scope, self.key)
            raise
        await run_in_threadpool(self.svc.complete, self.scope, self.key, Stored(status, body))
        return Response(body, status_code=status, media_type=JSON)

    async def run_sync(self, status: int, fn: Callable[[], BaseModel]) -> Response:
        """`run` for a synchronous (database-only) create, done in a worker thread."""

        async def call() -> BaseModel:
            return await run_in_threadpool(fn)

        return await self.run(status, call)


async def idempotency(
    request: Request,
    actor: Actor,
    svc: Svc,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_KEY_LEN,
            pattern=r"^[\x21-\x7e]+$",
            description="Retries with the same key and body return the first response (24 h)",
        ),
    ] = None,
) -> Idempotent:
    """The Idempotency-Key of a create, scoped to the key's owner and project."""
    fingerprint = ""
    if idempotency_key is not None:
        fingerprint = request_fingerprint(request.method, request.url.path, await request.body())
    return Idempotent(
        svc.idempotency, f"{actor.user_id}:{actor.project_id}", idempotency_key, fingerprint
    )


Idem = Annotated[Idempotent, Depends(idempotency)]
