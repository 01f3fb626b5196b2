"""Sandboxes: create, list, get, kill, timeout, stats, network policy."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from hutch.api.deps import BODY_MAX, Actor, Idem, Paging, Services, Svc, replayed
from hutch.api.errors import PROBLEM_JSON, PROBLEM_RESPONSES
from hutch.models.api import METADATA_KEY_PATTERN, Page, Sandbox, SandboxCreate
from hutch.models.common import ErrorCode, HutchError, Problem, SandboxState
from hutch.models.network import NetworkPolicy
from hutch.models.sandbox import SandboxStats, SetTimeout
from hutch.services.idempotency import Claim, Stored
from hutch.services.permissions import Principal

router = APIRouter(
    prefix="/v1/sandboxes", tags=["sandboxes"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX
)
SandboxId = Annotated[str, Path(max_length=64)]
_META = "metadata."


def metadata_filters(request: Request) -> dict[str, str]:
    """`metadata.KEY=VALUE` query parameters."""
    out: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith(_META):
            key = name[len(_META) :]
            if not re.match(METADATA_KEY_PATTERN, key):
                raise HutchError(
                    ErrorCode.invalid_request,
                    f"metadata filter key {key!r} is not allowed: 1-64 of letters, digits, '_.:-'",
                    errors=[{"loc": ["query", name], "field": name, "msg": "bad metadata key"}],
                )
            out[key] = value
    return out


@router.post(
    "",
    status_code=201,
    response_model=Sandbox,
    responses={
        402: {
            "model": Problem,
            "content": {PROBLEM_JSON: {}},
            "description": "Credit used up and no payment method (`payment_required`)",
        },
        429: {"description": "Quota or create rate exceeded (see Retry-After)"},
    },
)
async def create_sandbox(body: SandboxCreate, actor: Actor, svc: Svc, idem: Idem) -> Response:
    """Create a sandbox and wait until it runs."""
    # The service keeps the Idempotency-Key with the sandbox's own writes (no extra round
    # trips on the hot path).
    return await create_answer(svc, actor, body, idem.claim)


async def create_answer(
    svc: Services, actor: Principal, body: SandboxCreate, claim: Claim | None
) -> Response:
    """Create (or replay the first answer to `claim`'s Idempotency-Key): the 201 response."""
    made: Sandbox | Stored
    if claim is None:
        made = await svc.sandboxes.create(actor, body)
    else:
        made = await svc.sandboxes.create(actor, body, claim)
    if isinstance(made, Stored):
        return replayed(made)
    return Response(made.model_dump_json(), status_code=201, media_type="application/json")


@router.get(
    "",
    response_model=Page[Sandbox],
    description="Filter by `state` and by any number of `metadata.KEY=VALUE` query parameters.",
)
async def list_sandboxes(
    request: Request,
    actor: Actor,
    svc: Svc,
    page: Paging,
    state: Annotated[SandboxState | None, Query()] = None,
) -> Page[Sandbox]:
    """Sandboxes of the key's project and mode, newest first."""
    metadata = metadata_filters(request)

    def read() -> Page[Sandbox]:
        with svc.db.session() as db:
            return svc.sandboxes.list(
                db, actor, state=state, metadata=metadata, limit=page.limit, cursor=page.cursor
            )

    return await run_in_threadpool(read)


# The hot reads are async with one worker-thread hop for the whole database read (a sync route
# with a session dependency costs three).
@router.get("/{sandbox_id}", response_model=Sandbox)
async def get_sandbox(sandbox_id: SandboxId, actor: Actor, svc: Svc) -> Sandbox:
    """One sandbox."""

    def read() -> Sandbox:
        with svc.db.session() as db:
            return svc.sandboxes.get(db, actor, sandbox_id)

    return await run_in_threadpool(read)


@router.delete("/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: SandboxId, actor: Actor, svc: Svc) -> Response:
    """Kill a sandbox (its filesystem is gone afterwards)."""
    await svc.sandboxes.kill(actor, sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/timeout", response_model=Sandbox)
async def set_timeout(sandbox_id: SandboxId, body: SetTimeout, actor: Actor, svc: Svc) -> Sandbox:
    """Kill the sandbox `timeout_s` seconds from now."""
    return await svc.sandboxes.set_timeout(actor, sandbox_id, body)


@router.get("/{sandbox_id}/stats", response_model=SandboxStats)
async def stats(sandbox_id: SandboxId, actor: Actor, svc: Svc) -> SandboxStats:
    """Live resource use."""
    return await svc.sandboxes.stats(actor, sandbox_id)


@router.get("/{sandbox_id}/network", response_model=NetworkPolicy)
async def get_network(sandbox_id: SandboxId, actor: Actor, svc: Svc) -> NetworkPolicy:
    """The sandbox's egress policy (empty: nothing but loopback is reachable)."""

    def read() -> NetworkPolicy:
        with svc.db.session() as db:
            return svc.sandboxes.get_network(db, actor, sandbox_id)

    return await run_in_threadpool(read)


@router.put("/{sandbox_id}/network", response_model=Sandbox)
async def set_network(
    sandbox_id: SandboxId, body: NetworkPolicy, actor: Actor, svc: Svc
) -> Sandbox:
    """Replace the egress policy of a running sandbox. New connections follow it at once;
    existing connections it no longer allows are cut."""
    return await svc.sandboxes.set_network(actor, sandbox_id, body)
