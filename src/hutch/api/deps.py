"""FastAPI dependencies: services, database session, caller, pagination, idempotency."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
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
from hutch.services.audit import AdminLog
from hutch.services.authcache import PrincipalCache
from hutch.services.billing.service import BillingService
from hutch.services.billing.usage import UsageReports
from hutch.services.clock import Clock
from hutch.services.exec_audit import ExecAudit
from hutch.services.idempotency import (
    MAX_KEY_LEN,
    Claim,
    IdempotencyService,
    Stored,
    request_fingerprint,
)
from hutch.services.keys import DISPLAY_PREFIX_LEN, KeyService
from hutch.services.pagination import LIMIT_DEFAULT, LIMIT_MAX, LIMIT_MIN
from hutch.services.permissions import Principal
from hutch.services.ports import PortService
from hutch.services.privacy import PrivacyService
from hutch.services.reconcile import Reconciler
from hutch.services.runner_port import RunnerPort
from hutch.services.sandboxes import SandboxService
from hutch.services.scheduler import Scheduler
from hutch.services.secrets.service import SecretService
from hutch.services.suspensions import SuspensionService
from hutch.services.usage import UsageLog

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
    auth_cache: PrincipalCache
    billing: BillingService
    usage: UsageReports
    admin_log: AdminLog
    usage_log: UsageLog
    scheduler: Scheduler  # other services register their periodic jobs here
    exec_audit: ExecAudit
    suspensions: SuspensionService
    secrets: SecretService
    privacy: PrivacyService
    ports: PortService
    port_proxy: PortProxy


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in a worker
# thread, a hop that costs more than the work.


async def services(conn: HTTPConnection) -> Services:
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


def client_ip(conn: HTTPConnection) -> str | None:
    """The peer address of a request (what the admin log records as its source)."""
    return conn.client.host if conn.client else None


def key_prefix(key: str | None) -> str | None:
    """The display prefix of a presented key (e.g. sk_live_AbCd): never the key itself."""
    return key[:DISPLAY_PREFIX_LEN] if key else None


def authenticate(svc: Services, key: str | None) -> Principal:
    """Resolve an API key in a short session of its own (blocking: call from a worker thread)."""
    with svc.db.session() as s:
        return svc.keys.authenticate(s, key)


def cached_principal(svc: Services, key: str) -> Principal | None:
    """The caller behind `key` if the principal cache knows it (no database round trip)."""
    return svc.auth_cache.get(svc.keys.hash(key))


async def resolve_key(svc: Services, key: str | None) -> Principal:
    """The caller behind `key`: from the short-lived cache, else from the database."""
    if key:
        digest = svc.keys.hash(key)
        cached = svc.auth_cache.get(digest)
        if cached is not None:
            return cached
        generation = svc.auth_cache.generation
    # Its own session, closed at once: the connection goes back to the pool while a long request
    # (a file download, a command) runs.
    actor = await run_in_threadpool(authenticate, svc, key)
    if key:
        svc.auth_cache.put(digest, actor, actor.key_expires_at, generation)
    return actor


async def principal(conn: HTTPConnection, svc: Annotated[Services, Depends(services)]) -> Principal:
    """Authenticate the caller (401 problem otherwise)."""
    key = presented_key(conn)
    actor = await resolve_key(svc, key)
    conn.state.key_id = actor.key_id
    conn.state.key_prefix = key_prefix(key)
    return replace(actor, source_ip=client_ip(conn))


DB = Annotated[Session, Depends(get_db)]
Actor = Annotated[Principal, Depends(principal)]
Svc = Annotated[Services, Depends(services)]


async def source_ip(conn: HTTPConnection) -> str | None:
    """`client_ip` as a dependency."""
    return client_ip(conn)


SourceIP = Annotated[str | None, Depends(source_ip)]


@dataclass(frozen=True)
class PageParams:
    """`limit` and `cursor` query parameters."""

    limit: int
    cursor: str | None


async def page_params(
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


IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"


def idempotency_scope(actor: Principal) -> str:
    """Whose Idempotency-Keys a key shares: its owner's, in its project."""
    return f"{actor.user_id}:{actor.project_id}"


class Idempotent:
    """Runs a create at most once per Idempotency-Key and replays its first response."""

    def __init__(
        self, svc: IdempotencyService, scope: str, key: str | None, fingerprint: str
    ) -> None:
        self.svc = svc
        self.claim = Claim(scope, key, fingerprint) if key is not None else None

    async def run(self, status: int, fn: Callable[[], Awaitable[BaseModel]]) -> Response:
        """Run `fn` (or replay); the response body is the model as JSON."""
        claim = self.claim
        if claim is None:
            return Response((await fn()).model_dump_json(), status_code=status, media_type=JSON)
        stored = await run_in_threadpool(self.svc.begin, claim)
        if stored is not None:
            return replayed(stored)
        try:
            body = (await fn()).model_dump_json()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self.svc.abandon, claim)
            raise
        await run_in_threadpool(self.svc.complete, claim, Stored(status, body))
        return Response(body, status_code=status, media_type=JSON)

    async def run_sync(self, status: int, fn: Callable[[], BaseModel]) -> Response:
        """`run` for a synchronous (database-only) create, done in a worker thread."""

        async def call() -> BaseModel:
            return await run_in_threadpool(fn)

        return await self.run(status, call)


def replayed(stored: Stored) -> Response:
    """The first response to an Idempotency-Key, again."""
    return Response(
        stored.body,
        status_code=stored.status,
        media_type=JSON,
        headers={"Idempotent-Replayed": "true"},
    )


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
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Retries with the same key and body return the first response (24 h)",
        ),
    ] = None,
) -> Idempotent:
    """The Idempotency-Key of a create, scoped to the key's owner and project."""
    fingerprint = ""
    if idempotency_key is not None:
        fingerprint = request_fingerprint(request.method, request.url.path, await request.body())
    return Idempotent(svc.idempotency, idempotency_scope(actor), idempotency_key, fingerprint)


Idem = Annotated[Idempotent, Depends(idempotency)]
