"""Acceptable-use enforcement by server administrators: suspend, reinstate, terminate."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.concurrency import run_in_threadpool

from hutch.api.deps import BODY_MAX, DB, Actor, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import ID_PATTERN
from hutch.models.audit import SubjectType, SuspendRequest, Suspension

router = APIRouter(
    prefix="/v1/admin", tags=["admin"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX
)
SubjectId = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]


class Subjects(StrEnum):
    """Which kind of account a route acts on."""

    users = "users"
    teams = "teams"


KIND = {Subjects.users: SubjectType.user, Subjects.teams: SubjectType.team}


@router.get("/{subjects}/{subject_id}/suspension", response_model=Suspension)
def get_suspension(
    subjects: Subjects, subject_id: SubjectId, actor: Actor, db: DB, svc: Svc
) -> Suspension:
    """Whether and why a user or team is suspended or terminated (404: it is not)."""
    return svc.suspensions.get(db, actor, KIND[subjects], subject_id)


@router.post("/{subjects}/{subject_id}/suspend", response_model=Suspension)
def suspend(
    subjects: Subjects, subject_id: SubjectId, body: SuspendRequest, actor: Actor, db: DB, svc: Svc
) -> Suspension:
    """Suspend: no new sandboxes or commands (403 account_suspended); data and running
    sandboxes are kept. The reason goes to the admin log."""
    return svc.suspensions.suspend(db, actor, KIND[subjects], subject_id, body)


@router.post("/{subjects}/{subject_id}/unsuspend", status_code=204)
def unsuspend(
    subjects: Subjects, subject_id: SubjectId, body: SuspendRequest, actor: Actor, db: DB, svc: Svc
) -> Response:
    """Reinstate a suspended (not terminated) user or team."""
    svc.suspensions.unsuspend(db, actor, KIND[subjects], subject_id, body)
    return Response(status_code=204)


@router.post("/{subjects}/{subject_id}/terminate", response_model=Suspension)
async def terminate(
    subjects: Subjects, subject_id: SubjectId, body: SuspendRequest, actor: Actor, svc: Svc
) -> Suspension:
    """Terminate for good: blocked, API keys revoked, running sandboxes killed (a team's; for a
    user, those of teams they alone belong to)."""

    def begin() -> tuple[Suspension, list[str]]:
        with svc.db.session() as s:
            return svc.suspensions.terminate(s, actor, KIND[subjects], subject_id, body)

    wire, ids = await run_in_threadpool(begin)
    killed = await svc.suspensions.kill(ids)
    return wire.model_copy(update={"sandboxes_killed": killed})
