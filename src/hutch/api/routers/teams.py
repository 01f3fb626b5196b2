"""Teams and their members."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from hutch.api.deps import BODY_MAX, DB, Actor, Idem, Paging, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import Member, MemberAdd, MemberUpdate, Page, Team, TeamCreate

router = APIRouter(
    prefix="/v1/teams", tags=["accounts"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX
)
TeamId = Annotated[str, Path(max_length=64)]
UserId = Annotated[str, Path(max_length=64)]


@router.post("", status_code=201, response_model=Team)
async def create_team(body: TeamCreate, actor: Actor, svc: Svc, idem: Idem) -> Response:
    """Create a team; the caller becomes its owner."""

    def create() -> Team:
        with svc.db.session() as s:
            return svc.accounts.create_team(s, actor, body)

    return await idem.run_sync(201, create)


@router.get("", response_model=Page[Team])
def list_teams(actor: Actor, db: DB, svc: Svc, page: Paging) -> Page[Team]:
    """The caller's teams."""
    return svc.accounts.list_teams(db, actor, limit=page.limit, cursor=page.cursor)


@router.get("/{team_id}", response_model=Team)
def get_team(team_id: TeamId, actor: Actor, db: DB, svc: Svc) -> Team:
    """One of the caller's teams."""
    return svc.accounts.get_team(db, actor, team_id)


@router.get("/{team_id}/members", response_model=Page[Member])
def list_members(team_id: TeamId, actor: Actor, db: DB, svc: Svc, page: Paging) -> Page[Member]:
    """Members of a team."""
    return svc.accounts.list_members(db, actor, team_id, limit=page.limit, cursor=page.cursor)


@router.post("/{team_id}/members", status_code=201, response_model=Member)
async def add_member(
    team_id: TeamId, body: MemberAdd, actor: Actor, svc: Svc, idem: Idem
) -> Response:
    """Add a user to a team."""

    def add() -> Member:
        with svc.db.session() as s:
            return svc.accounts.add_member(s, actor, team_id, body)

    return await idem.run_sync(201, add)


@router.patch("/{team_id}/members/{user_id}", response_model=Member)
def update_member(
    team_id: TeamId, user_id: UserId, body: MemberUpdate, actor: Actor, db: DB, svc: Svc
) -> Member:
    """Change a member's role."""
    return svc.accounts.update_member(db, actor, team_id, user_id, body)


@router.delete("/{team_id}/members/{user_id}", status_code=204)
def remove_member(team_id: TeamId, user_id: UserId, actor: Actor, db: DB, svc: Svc) -> Response:
    """Remove a member."""
    svc.accounts.remove_member(db, actor, team_id, user_id)
    return Response(status_code=204)
