"""Templates sandboxes start from, as the runner has them (building one is an operator's job on
the runner host: `hutch template build`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from hutch.api.deps import Actor, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import Scope
from hutch.models.common import ErrorCode, HutchError
from hutch.models.sandbox import TemplateInfo

router = APIRouter(prefix="/v1/templates", tags=["templates"], responses=PROBLEM_RESPONSES)
TemplateName = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("", response_model=list[TemplateInfo])
async def list_templates(actor: Actor, svc: Svc) -> list[TemplateInfo]:
    """Every template the runner knows, and whether it is built."""
    actor.require(Scope.sandboxes_read)
    return await svc.sandboxes.require_runner().templates()


@router.get("/{name}", response_model=TemplateInfo)
async def get_template(name: TemplateName, actor: Actor, svc: Svc) -> TemplateInfo:
    """One template."""
    actor.require(Scope.sandboxes_read)
    for t in await svc.sandboxes.require_runner().templates():
        if t.name == name:
            return t
    raise HutchError(ErrorCode.template_not_found, f"template {name!r} not found")
