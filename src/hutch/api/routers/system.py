"""Health, metrics and who-am-I."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from hutch.api.deps import DB, Actor, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.db.models import ApiKeyRow, ProjectRow
from hutch.models.api import Health, Me, Project
from hutch.services.accounts import project_wire
from hutch.services.keys import to_wire as key_wire

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["system"])
async def healthz(svc: Svc, response: Response) -> Health:
    """Liveness: 200 when the database answers (runner reachability is reported, not required)."""
    database = await run_in_threadpool(svc.db.ping)
    runner: bool | None = None
    if svc.runner is not None:
        runner = False
        with anyio.move_on_after(2):
            try:
                await svc.runner.info()
                runner = True
            except Exception:
                runner = False
    if not database:
        response.status_code = 503
    return Health(status="ok" if database else "degraded", database=database, runner=runner)


@router.get("/metrics", tags=["system"], response_class=Response)
def metrics(svc: Svc) -> Response:
    """Prometheus metrics."""
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/me", response_model=Me, tags=["accounts"], responses=PROBLEM_RESPONSES)
def me(actor: Actor, db: DB, svc: Svc) -> Me:
    """The calling key, its owner, project, role and effective scopes."""
    key = db.get(ApiKeyRow, actor.key_id)
    project = db.get(ProjectRow, actor.project_id)
    assert key is not None and project is not None  # authenticate() just found both
    p: Project = project_wire(project)
    return Me(
        user=svc.accounts.get_user(db, actor.user_id),
        key=key_wire(key),
        project=p,
        role=actor.role,
        effective_scopes=sorted(actor.rights),
    )
