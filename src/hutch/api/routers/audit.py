"""Audit trails: the per-project exec trail and the tamper-evident admin log."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.responses import StreamingResponse

from hutch.api.deps import DB, Actor, Paging, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import Page, Scope
from hutch.models.audit import AdminLogEntry, AdminLogPage, AuditVerification, ExecRecord
from hutch.services.audit import public_key_id
from hutch.services.audit_verify import verify

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=PROBLEM_RESPONSES)

NO_NUL = r"^[^\x00]+$"
SandboxFilter = Annotated[
    str | None, Query(max_length=64, pattern=NO_NUL, description="Only this sandbox")
]
CommandFilter = Annotated[
    str | None, Query(max_length=255, pattern=NO_NUL, description="Only this command name")
]
Since = Annotated[datetime | None, Query(description="Started at or after (ISO 8601)")]
Until = Annotated[datetime | None, Query(description="Started before (ISO 8601)")]


class ExportFormat(StrEnum):
    """Export formats."""

    jsonl = "jsonl"
    csv = "csv"


MEDIA = {ExportFormat.jsonl: "application/x-ndjson", ExportFormat.csv: "text/csv"}


@router.get("/execs", response_model=Page[ExecRecord])
def list_execs(
    actor: Actor,
    svc: Svc,
    page: Paging,
    sandbox_id: SandboxFilter = None,
    command: CommandFilter = None,
    since: Since = None,
    until: Until = None,
) -> Page[ExecRecord]:
    """The project's exec trail, newest first (projects:admin)."""
    actor.require(Scope.projects_admin)
    return svc.exec_audit.list(
        actor.project_id,
        mode=actor.mode.value,
        limit=page.limit,
        cursor=page.cursor,
        sandbox_id=sandbox_id,
        command=command,
        since=since,
        until=until,
    )


@router.get(
    "/execs/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}, "text/csv": {}},
            "description": "Every matching record, oldest first",
        }
    },
)
async def export_execs(
    actor: Actor,
    svc: Svc,
    format: Annotated[ExportFormat, Query(description="jsonl or csv")] = ExportFormat.jsonl,
    sandbox_id: SandboxFilter = None,
    command: CommandFilter = None,
    since: Since = None,
    until: Until = None,
) -> StreamingResponse:
    """Export the project's exec trail as JSON Lines or CSV (projects:admin)."""
    actor.require(Scope.projects_admin)
    lines = svc.exec_audit.export(
        actor.project_id,
        format.value,
        mode=actor.mode.value,
        sandbox_id=sandbox_id,
        command=command,
        since=since,
        until=until,
    )
    return StreamingResponse(
        iterate_in_threadpool(lines),
        media_type=MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="execs.{format.value}"'},
    )


SEQ_MAX = 2**63 - 1  # sequence numbers are 64-bit signed integers in the database


@router.get("/admin-log", response_model=AdminLogPage)
def list_admin_log(
    actor: Actor,
    db: DB,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after_seq: Annotated[
        int | None, Query(ge=0, le=SEQ_MAX, description="next_after_seq of the last page")
    ] = None,
    target_type: Annotated[str | None, Query(max_length=32, pattern=NO_NUL)] = None,
    target_id: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    actor_user_id: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
) -> AdminLogPage:
    """Admin log entries in chain order (server administrators)."""
    actor.require(Scope.users_admin)
    entries = svc.admin_log.list(
        db,
        limit=limit + 1,
        after_seq=after_seq,
        target_type=target_type,
        target_id=target_id,
        actor_user_id=actor_user_id,
        action=action,
    )
    more = len(entries) > limit
    entries = entries[:limit]
    return AdminLogPage(
        items=[AdminLogEntry(**e.__dict__) for e in entries],
        next_after_seq=entries[-1].seq if more else None,
    )


@router.get("/admin-log/verify", response_model=AuditVerification)
async def verify_admin_log(actor: Actor, svc: Svc) -> AuditVerification:
    """Check every hash, link and signed checkpoint of the admin log (server administrators)."""
    actor.require(Scope.users_admin)

    def run() -> AuditVerification:
        with svc.db.session() as s:
            v = verify(s, svc.admin_log.public_key)
        return AuditVerification(
            ok=v.ok,
            entries=v.entries,
            first_seq=v.first_seq,
            last_seq=v.last_seq,
            checkpoints=v.checkpoints,
            latest_checkpoint_seq=v.latest_checkpoint_seq,
            public_key_id=public_key_id(svc.admin_log.public_key),
            problems=v.problems,
        )

    return await run_in_threadpool(run)
