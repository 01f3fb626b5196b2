"""Billing records outlive accounts (pseudonymised), last seven years, and offline invoices."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select

from hutch.db.billing import BillingAccountRow, CreditGrantRow, UsageRecordRow
from hutch.db.models import ProjectRow, TeamRow, UserRow
from hutch.services.credits import PAID
from tests.unit.billing.conftest import T0, Stack, hb


def count(stack: Stack, table: type) -> int:
    with stack.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_pseudonymise_user_replaces_identity_in_billing_records(stack: Stack) -> None:
    team, _ = stack.team()
    with stack.db.session() as s:
        for uid, email in (("usr_a", "a@example.test"), ("usr_b", "b@example.test")):
            s.add(UserRow(id=uid, email=email, name=uid, is_admin=True, created_at=T0))
        s.flush()
        stack.credits.grant(s, team, amount_micros=1, kind=PAID, reason="x", created_by="usr_a")
        stack.credits.grant(s, team, amount_micros=1, kind=PAID, reason="x", created_by="usr_b")
        s.get(BillingAccountRow, team).billing_email = "a@example.test"  # type: ignore[union-attr]
        s.commit()
    assert stack.billing.pseudonymise_user("usr_a") == 2
    with stack.db.session() as s:
        by = sorted(
            s.scalars(
                select(CreditGrantRow.created_by).where(CreditGrantRow.created_by.is_not(None))
            )
        )
        email = s.get(BillingAccountRow, team).billing_email  # type: ignore[union-attr]
    pseudo = stack.billing.pseudonym("usr_a")
    assert by == sorted([pseudo, "usr_b"]) and pseudo.startswith("anon_") and "usr_a" not in pseudo
    assert email is None
    assert stack.billing.pseudonym("usr_a") == pseudo != stack.billing.pseudonym("usr_b")


def test_billing_records_survive_the_deletion_of_their_team(stack: Stack) -> None:
    team, project = stack.team()
    sid = stack.sandbox(project)
    stack.metering.ingest([hb(sid, T0, T0 + timedelta(seconds=10))])
    with stack.db.session() as s:
        s.execute(delete(ProjectRow).where(ProjectRow.team_id == team))  # cascades sandboxes
        s.execute(delete(TeamRow).where(TeamRow.id == team))
        s.commit()
    assert count(stack, UsageRecordRow) == 1 and count(stack, CreditGrantRow) == 1


def test_records_are_kept_seven_years_then_purged(stack: Stack) -> None:
    _, project = stack.team()
    sid = stack.sandbox(project)
    stack.metering.ingest([hb(sid, T0, T0 + timedelta(seconds=10))])
    stack.clock.set(T0 + timedelta(days=7 * 365))  # not yet seven years (leap days)
    stack.billing.purge_expired()
    assert count(stack, UsageRecordRow) == 1
    stack.clock.set(T0 + timedelta(days=7 * 366 + 1))
    assert stack.billing.purge_expired() >= 1
    assert count(stack, UsageRecordRow) == 0
    assert count(stack, CreditGrantRow) == 1  # the welcome credit never expires


def test_offline_invoices_are_written_as_json_and_html(stack: Stack, tmp_path: Path) -> None:
    team, project = stack.team(promo=False)
    sid = stack.sandbox(project, vcpu=2, memory_mb=2048)
    stack.metering.ingest([hb(sid, T0, T0 + timedelta(hours=10), vcpu=2, memory_mb=2048)])
    stack.clock.set(datetime(2030, 4, 1, 1, 0, tzinfo=UTC))
    [inv] = stack.invoices.close_due()
    assert (inv.subtotal_micros, inv.credits_micros, inv.total_micros) == (820_000, 0, 820_000)
    d = tmp_path / "invoices" / team
    doc = json.loads((d / "2030-03.json").read_text())
    assert doc["invoice_id"] == inv.id and doc["total_micros"] == 820_000
    assert [(ln["project_id"], ln["description"], ln["quantity"]) for ln in doc["lines"]] == [
        (project, "sandbox 2 vCPU · 2048 MiB", "36000")
    ]
    html = (d / "2030-03.html").read_text()
    assert "$0.820000" in html and project in html
