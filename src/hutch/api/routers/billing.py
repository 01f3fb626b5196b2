"""Billing: usage, balance, credits, invoices, payment method, and the Stripe webhook."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, StreamingResponse

from hutch.api.billing_wiring import dollars_to_micros
from hutch.api.deps import BODY_MAX, DB, Actor, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.db.models import TeamRow
from hutch.models.api import Scope
from hutch.models.billing import (
    BillingSummary,
    CreditGrant,
    CreditGrantCreate,
    Invoice,
    PaymentSetup,
    UsageGroup,
    UsageReport,
    WebhookAck,
)
from hutch.models.common import ErrorCode, HutchError
from hutch.services.billing.invoices import invoice_doc
from hutch.services.billing.offline import render_html
from hutch.services.credits import GRANT_KINDS

router = APIRouter(
    prefix="/v1/billing", tags=["billing"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX
)
ID_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
InvoiceId = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
Start = Annotated[datetime | None, Query(description="Default: start of this month (UTC)")]
End = Annotated[datetime | None, Query(description="Default: end of this month (UTC)")]
WEBHOOK_MAX = 256 * 1024


@router.get("/summary", response_model=BillingSummary)
def summary(actor: Actor, db: DB, svc: Svc) -> BillingSummary:
    """Balance, cost so far this month, payment method, warnings and recent account events."""
    return svc.usage.summary(db, actor)


@router.get("/usage", response_model=UsageReport)
def usage(
    actor: Actor,
    db: DB,
    svc: Svc,
    start: Start = None,
    end: End = None,
    group_by: Annotated[UsageGroup, Query()] = UsageGroup.day,
    project_id: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
) -> UsageReport:
    """The team's usage (in the key's mode), grouped per day, project, sandbox or size."""
    return svc.usage.usage(db, actor, group_by, start, end, project_id)


@router.get(
    "/usage.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per usage record"}},
)
def usage_csv(actor: Actor, svc: Svc, start: Start = None, end: End = None) -> StreamingResponse:
    """Every usage record in the range as CSV (streamed)."""
    return StreamingResponse(
        svc.usage.csv_rows(actor, start, end),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
    )


@router.get("/credits", response_model=list[CreditGrant])
def credits(actor: Actor, db: DB, svc: Svc) -> list[CreditGrant]:
    """The team's credit grants and what is left of each."""
    return svc.usage.grants(db, actor)


@router.post("/credits", status_code=201, response_model=CreditGrant)
def grant_credit(body: CreditGrantCreate, actor: Actor, db: DB, svc: Svc) -> CreditGrant:
    """Give a team credit (server administrators)."""
    actor.require(Scope.users_admin)
    if db.get(TeamRow, body.team_id) is None:
        raise HutchError(ErrorCode.not_found, "team not found")
    if body.expires_at and body.expires_at <= (body.effective_at or svc.clock.now()):
        raise HutchError(
            ErrorCode.invalid_request,
            "expires_at must be after effective_at (or now)",
            errors=[{"loc": ["body", "expires_at"], "field": "expires_at", "msg": "too early"}],
        )
    assert body.kind in GRANT_KINDS
    svc.billing.credits.ensure_account(db, body.team_id)
    row = svc.billing.credits.grant(
        db,
        body.team_id,
        amount_micros=dollars_to_micros(body.amount),
        kind=body.kind,
        reason=body.reason,
        priority=body.priority,
        effective_at=body.effective_at,
        expires_at=body.expires_at,
        created_by=actor.user_id,
    )
    svc.admin_log.record_for(
        db,
        actor,
        "credit.grant",
        "team",
        body.team_id,
        {"amount": str(body.amount), "kind": body.kind, "grant_id": row.id},
    )
    db.commit()
    now = svc.clock.now()
    return CreditGrant(
        grant_id=row.id,
        amount_micros=row.amount_micros,
        remaining_micros=row.amount_micros,
        priority=row.priority,
        kind=row.kind,
        effective_at=row.effective_at,
        expires_at=row.expires_at,
        reason=row.reason,
        active=row.effective_at <= now and (row.expires_at is None or row.expires_at > now),
    )


@router.get("/invoices", response_model=list[Invoice])
def invoices(actor: Actor, db: DB, svc: Svc) -> list[Invoice]:
    """This month's upcoming invoice, then finalized ones, newest first."""
    return svc.usage.invoices(db, actor)


@router.get("/invoices/{invoice_id}", response_model=Invoice)
def invoice(invoice_id: InvoiceId, actor: Actor, db: DB, svc: Svc) -> Invoice:
    """One invoice (`upcoming`: the current month so far)."""
    return svc.usage.invoice_wire(svc.usage.invoice(db, actor, invoice_id))


@router.get(
    "/invoices/{invoice_id}/html",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "A printable invoice"}},
)
def invoice_html(invoice_id: InvoiceId, actor: Actor, db: DB, svc: Svc) -> HTMLResponse:
    """One invoice as a readable HTML page."""
    return HTMLResponse(render_html(invoice_doc(svc.usage.invoice(db, actor, invoice_id))))


@router.post(
    "/payment-method",
    response_model=PaymentSetup,
    responses={503: {"description": "The payment processor did not answer"}},
)
async def payment_method(actor: Actor, svc: Svc) -> PaymentSetup:
    """A link where the team adds a card (Stripe). Offline, a server administrator puts the
    team on invoice terms."""
    actor.require(Scope.billing_write)
    url, method = await run_in_threadpool(svc.billing.setup_payment, actor)
    if url:
        detail = "open the URL to add a card"
    elif method:
        detail = f"the team pays by {method}"
    else:
        detail = (
            "no payment processor is configured on this server; a server administrator can "
            "put the team on invoice terms"
        )
    return PaymentSetup(url=url, payment_method=method, detail=detail)


@router.post(
    "/webhooks/stripe",
    response_model=WebhookAck,
    responses={400: {"description": "The Stripe-Signature header does not verify"}},
)
async def stripe_webhook(request: Request, svc: Svc) -> WebhookAck:
    """Stripe events (no API key: the signature authenticates the sender)."""
    body = await request.body()
    if len(body) > WEBHOOK_MAX:
        raise HutchError(ErrorCode.invalid_request, "webhook body too large")
    event = svc.billing.adapter.verify_webhook(body, request.headers.get("stripe-signature"))
    await run_in_threadpool(svc.billing.apply_webhook, event)
    return WebhookAck(type=event.type)
