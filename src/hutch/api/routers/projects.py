"""Projects."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from hutch.api.deps import BODY_MAX, DB, Actor, Idem, Paging, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import Page, Project, ProjectCreate, ProjectUpdate

router = APIRouter(
    prefix="/v1/projects", tags=["accounts"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX
)
ProjectId = Annotated[str, Path(max_length=64)]


@router.post("", status_code=201, response_model=Project)
async def create_project(body: ProjectCreate, actor: Actor, svc: Svc, idem: Idem) -> Response:
    """Create a project."""

    def create() -> Project:
        with svc.db.session() as s:
            return svc.accounts.create_project(s, actor, body)

    return await idem.run_sync(201, create)


@router.get("", response_model=Page[Project])
def list_projects(actor: Actor, db: DB, svc: Svc, page: Paging) -> Page[Project]:
    """Projects of the caller's teams."""
    return svc.accounts.list_projects(db, actor, limit=page.limit, cursor=page.cursor)


@router.get("/{project_id}", response_model=Project)
def get_project(project_id: ProjectId, actor: Actor, db: DB, svc: Svc) -> Project:
    """One project."""
    return svc.accounts.get_project(db, actor, project_id)


@router.patch("/{project_id}", response_model=Project)
def update_project(
    project_id: ProjectId, body: ProjectUpdate, actor: Actor, db: DB, svc: Svc
) -> Project:
    """Rename a project."""
    return svc.accounts.update_project(db, actor, project_id, body)
