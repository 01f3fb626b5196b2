"""Project secrets: write-only values; reads give names and metadata."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from hutch.api.deps import BODY_MAX, DB, Actor, Paging, SourceIP, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import Page
from hutch.models.privacy import (
    SECRET_NAME_PATTERN,
    RewrapRequest,
    RewrapResult,
    Secret,
    SecretPut,
)

router = APIRouter(tags=["secrets"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX)
ProjectId = Annotated[str, Path(max_length=64)]
SecretName = Annotated[
    str, Path(pattern=SECRET_NAME_PATTERN, description="Letters, digits and _, ≤ 64")
]
BASE = "/v1/projects/{project_id}/secrets"


@router.put(
    BASE + "/{name}",
    response_model=Secret,
    responses={201: {"model": Secret, "description": "Created"}},
)
def put_secret(
    project_id: ProjectId,
    name: SecretName,
    body: SecretPut,
    actor: Actor,
    db: DB,
    svc: Svc,
    ip: SourceIP,
    response: Response,
) -> Secret:
    """Create or replace a secret (the value is never returned)."""
    secret, created = svc.secrets.put(db, actor, project_id, name, body.value, source_ip=ip)
    response.status_code = 201 if created else 200
    return secret


@router.get(BASE, response_model=Page[Secret])
def list_secrets(
    project_id: ProjectId, actor: Actor, db: DB, svc: Svc, page: Paging
) -> Page[Secret]:
    """Names and metadata of the project's secrets."""
    return svc.secrets.list(db, actor, project_id, limit=page.limit, cursor=page.cursor)


@router.get(BASE + "/{name}", response_model=Secret)
def get_secret(project_id: ProjectId, name: SecretName, actor: Actor, db: DB, svc: Svc) -> Secret:
    """One secret's metadata."""
    return svc.secrets.get(db, actor, project_id, name)


@router.delete(BASE + "/{name}", status_code=204)
def delete_secret(
    project_id: ProjectId, name: SecretName, actor: Actor, db: DB, svc: Svc, ip: SourceIP
) -> Response:
    """Delete a secret."""
    svc.secrets.delete(db, actor, project_id, name, source_ip=ip)
    return Response(status_code=204)


@router.post("/v1/secrets/rewrap", response_model=RewrapResult)
def rewrap(body: RewrapRequest, actor: Actor, svc: Svc, ip: SourceIP) -> RewrapResult:
    """Server administrators: rotate the KEK (optional) and rewrap every data key under it."""
    return svc.secrets.rewrap(actor, rotate=body.rotate, source_ip=ip)
