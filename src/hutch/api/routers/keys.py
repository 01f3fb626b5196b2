"""API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from hutch.api.deps import BODY_MAX, DB, Actor, Idem, Paging, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyRotate, Page

router = APIRouter(
    prefix="/v1/keys", tags=["keys"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX
)
KeyId = Annotated[str, Path(max_length=64)]


@router.post("", status_code=201, response_model=ApiKeyCreated)
async def create_key(body: ApiKeyCreate, actor: Actor, svc: Svc, idem: Idem) -> Response:
    """Create a key; its secret is in this response only."""

    def create() -> ApiKeyCreated:
        with svc.db.session() as s:
            return svc.keys.create(s, actor, body)

    return await idem.run_sync(201, create)


@router.get("", response_model=Page[ApiKey])
def list_keys(actor: Actor, db: DB, svc: Svc, page: Paging) -> Page[ApiKey]:
    """Keys of the caller's project (only the caller's own without keys:admin)."""
    return svc.keys.list(db, actor, limit=page.limit, cursor=page.cursor)


@router.post("/{key_id}/rotate", status_code=201, response_model=ApiKeyCreated)
async def rotate_key(
    key_id: KeyId, actor: Actor, svc: Svc, idem: Idem, body: ApiKeyRotate | None = None
) -> Response:
    """Issue a successor; the old key works until the grace period ends."""

    def rotate() -> ApiKeyCreated:
        with svc.db.session() as s:
            return svc.keys.rotate(s, actor, key_id, body or ApiKeyRotate())

    return await idem.run_sync(201, rotate)


@router.delete("/{key_id}", status_code=204)
def revoke_key(key_id: KeyId, actor: Actor, db: DB, svc: Svc) -> Response:
    """Revoke a key at once."""
    svc.keys.revoke(db, actor, key_id)
    return Response(status_code=204)
