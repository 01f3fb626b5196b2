"""Users (server administrators only)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from hutch.api.deps import BODY_MAX, DB, Actor, Idem, Paging, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import Page, User, UserCreate

router = APIRouter(
    prefix="/v1/users", tags=["accounts"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX
)


@router.post("", status_code=201, response_model=User)
async def create_user(body: UserCreate, actor: Actor, svc: Svc, idem: Idem) -> Response:
    """Create a user."""

    def create() -> User:
        with svc.db.session() as s:
            return svc.accounts.create_user(s, actor, body)

    return await idem.run_sync(201, create)


@router.get("", response_model=Page[User])
def list_users(actor: Actor, db: DB, svc: Svc, page: Paging) -> Page[User]:
    """Every user, newest first."""
    return svc.accounts.list_users(db, actor, limit=page.limit, cursor=page.cursor)
