"""What billing and the audit log contribute to a user's data export: the usage, invoices and
credit of the teams whose billing the user may read (admins and owners), and admin-log entries
by or about the user. (The exec trail names no user, so it is not personal data of anyone.)"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from hutch.db.audit import AdminLogRow
from hutch.db.billing import CreditGrantRow, InvoiceRow, UsageRecordRow
from hutch.db.models import MemberRow
from hutch.services.export import ExportRegistry

BILLING_ROLES = ("owner", "admin")


def _teams(session: Session, user_id: str) -> list[str]:
    """Teams whose billing the user may see anyway (an export must not widen access)."""
    return list(
        session.scalars(
            select(MemberRow.team_id).where(
                MemberRow.user_id == user_id, MemberRow.role.in_(BILLING_ROLES)
            )
        )
    )


def usage(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Metered usage of the user's teams (sizes and times; never content)."""
    rows = session.scalars(
        select(UsageRecordRow)
        .where(UsageRecordRow.team_id.in_(_teams(session, user_id)))
        .order_by(UsageRecordRow.start)
    )
    return [
        {
            "id": r.id,
            "meter": r.meter,
            "team_id": r.team_id,
            "project_id": r.project_id,
            "sandbox_id": r.sandbox_id,
            "mode": r.mode,
            "vcpu": r.vcpu,
            "memory_mb": r.memory_mb,
            "start": r.start,
            "end": r.end,
        }
        for r in rows
    ]


def invoices(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Invoices of the user's teams (amounts in micro-dollars)."""
    rows = session.scalars(
        select(InvoiceRow).where(InvoiceRow.team_id.in_(_teams(session, user_id)))
    )
    return [
        {
            "id": r.id,
            "team_id": r.team_id,
            "period": r.period,
            "status": r.status,
            "subtotal_micros": r.subtotal_micros,
            "credits_micros": r.credits_micros,
            "total_micros": r.total_micros,
        }
        for r in rows
    ]


def credits(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Credit grants of the user's teams."""
    rows = session.scalars(
        select(CreditGrantRow).where(CreditGrantRow.team_id.in_(_teams(session, user_id)))
    )
    return [
        {
            "id": r.id,
            "team_id": r.team_id,
            "amount_micros": r.amount_micros,
            "kind": r.kind,
            "effective_at": r.effective_at,
            "expires_at": r.expires_at,
            "reason": r.reason,
        }
        for r in rows
    ]


def admin_log(session: Session, user_id: str) -> list[dict[str, Any]]:
    """Admin-log entries the user made, or that are about the user."""
    rows = session.scalars(
        select(AdminLogRow)
        .where(
            or_(
                AdminLogRow.actor_user_id == user_id,
                (AdminLogRow.target_type == "user") & (AdminLogRow.target_id == user_id),
            )
        )
        .order_by(AdminLogRow.seq)
    )
    return [
        {
            "seq": r.seq,
            "at": r.at,
            "actor_user_id": r.actor_user_id,
            "action": r.action,
            "target_type": r.target_type,
            "target_id": r.target_id,
            "source_ip": r.source_ip,
            "details": r.details,
        }
        for r in rows
    ]


def register(registry: ExportRegistry) -> None:
    """Add these collectors to the export."""
    for name, fn in (
        ("usage", usage),
        ("invoices", invoices),
        ("credits", credits),
        ("audit_entries", admin_log),
    ):
        registry.register(name, fn)
