"""Monthly invoices: lines per project and size (and model), credits applied, finalized once.

A month's invoice is finalized `close_delay` after the month ends; from then on it never changes
(records arriving later go to the current month, see metering). Lines are rounded with the
price book's rule and the total is the sum of rounded lines minus the credits drawn that month.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hutch.db.billing import BillingAccountRow, InvoiceRow, UsageRecordRow
from hutch.db.models import TeamRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.services.billing.base import BillingAdapter, Customer, InvoiceDoc
from hutch.services.clock import Clock
from hutch.services.credits import CreditService
from hutch.services.metering import SANDBOX_METER, period_bounds, period_of
from hutch.services.pricing import PriceBook, round_micros

log = structlog.get_logger("hutch.invoices")
FINAL = ("finalized", "paid", "payment_failed")


def size_label(vcpu: int, memory_mb: int) -> str:
    """`2 vCPU · 4096 MiB`."""
    return f"{vcpu} vCPU · {memory_mb} MiB"


def invoice_doc(row: InvoiceRow) -> InvoiceDoc:
    """The adapter's view of an invoice row."""
    return InvoiceDoc(
        invoice_id=row.id,
        team_id=row.team_id,
        period=row.period,
        lines=row.lines,
        subtotal_micros=row.subtotal_micros,
        credits_micros=row.credits_micros,
        total_micros=row.total_micros,
    )


class InvoiceService:
    """Builds invoice lines and finalizes past months."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        prices: PriceBook,
        credits: CreditService,
        adapter: BillingAdapter,
        close_delay_s: float = 3600.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.prices = prices
        self.credits = credits
        self.adapter = adapter
        self.close_delay = timedelta(seconds=close_delay_s)

    def lines(self, session: Session, team_id: str, period: str) -> list[dict[str, Any]]:
        """Live usage of one period per project, meter and size, priced and rounded."""
        r = UsageRecordRow
        rows = session.execute(
            select(
                r.project_id,
                r.meter,
                r.vcpu,
                r.memory_mb,
                r.price_version,
                func.sum(r.duration_ms),
                func.sum(r.vcpu_ms),
                func.sum(r.mib_ms),
                func.sum(r.units),
            )
            .where(r.team_id == team_id, r.period == period, r.mode == "live")
            .group_by(r.project_id, r.meter, r.vcpu, r.memory_mb, r.price_version)
        ).all()
        grouped: dict[tuple[str, str, int, int], list[Decimal]] = defaultdict(
            lambda: [Decimal(0), Decimal(0)]
        )
        for project_id, meter, vcpu, mem, version, ms, vcpu_ms, mib_ms, units in rows:
            key = (project_id, meter, vcpu or 0, mem or 0)
            g = grouped[key]
            g[0] += Decimal(int(ms or 0)) / 1000 if meter == SANDBOX_METER else int(units or 0)
            g[1] += self.prices.exact(
                version, meter, int(vcpu_ms or 0), int(mib_ms or 0), int(units or 0)
            )
        out = []
        for (project_id, meter, vcpu, mem), (qty, exact) in sorted(grouped.items()):
            if meter == SANDBOX_METER:
                desc, unit = f"sandbox {size_label(vcpu, mem)}", "s"
            else:
                _, model, direction = meter.split(":", 2)
                desc, unit = f"model {model} {direction}", "tokens"
            out.append(
                {
                    "project_id": project_id,
                    "description": desc,
                    "meter": meter,
                    "vcpu": vcpu,
                    "memory_mb": mem,
                    "quantity": str(qty),
                    "unit": unit,
                    "amount_micros": round_micros(exact),
                }
            )
        return out

    def preview(self, session: Session, team_id: str, period: str) -> InvoiceRow:
        """The invoice a period would get now (not stored)."""
        lines = self.lines(session, team_id, period)
        subtotal = sum(int(line["amount_micros"]) for line in lines)
        drawn = self.credits.ledger(session, team_id).credits_by_period.get(period, 0)
        credits = min(subtotal, drawn)
        return InvoiceRow(
            id="upcoming",
            team_id=team_id,
            period=period,
            status="open",
            subtotal_micros=subtotal,
            credits_micros=credits,
            total_micros=subtotal - credits,
            lines=lines,
            created_at=self.clock.now(),
        )

    def due(self, session: Session) -> list[tuple[str, str]]:
        """(team, period) pairs whose month ended at least `close_delay` ago and that have
        live usage but no finalized invoice yet."""
        now = self.clock.now()
        current = period_of(now)
        # A year back is plenty (the job runs every few minutes) and keeps the scan small.
        oldest = period_of(now - timedelta(days=366))
        pairs = session.execute(
            select(UsageRecordRow.team_id, UsageRecordRow.period)
            .where(
                UsageRecordRow.period >= oldest,
                UsageRecordRow.period < current,
                UsageRecordRow.mode == "live",
            )
            .distinct()
        ).all()
        done = set(session.execute(select(InvoiceRow.team_id, InvoiceRow.period)).all())
        return sorted(
            (t, p)
            for t, p in pairs
            if (t, p) not in done and period_bounds(p)[1] + self.close_delay <= now
        )

    def finalize(self, team_id: str, period: str) -> InvoiceRow | None:
        """Finalize one month's invoice (once: a second call finds it done)."""
        with self.db.session() as s:
            if s.scalar(
                select(InvoiceRow.id).where(
                    InvoiceRow.team_id == team_id, InvoiceRow.period == period
                )
            ):
                return None
            row = self.preview(s, team_id, period)
            row.id = new_id("inv")
            row.status = "finalized" if row.total_micros > 0 else "paid"
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return None
        log.info("invoice_finalized", invoice_id=row.id, period=period)
        try:
            self._issue(row)
        except Exception as e:  # stays unissued; the next pass hands it over again
            log.warning("invoice_issue_failed", invoice_id=row.id, error=type(e).__name__)
        return row

    def _issue(self, row: InvoiceRow) -> None:
        with self.db.session() as s:
            account = s.get(BillingAccountRow, row.team_id)
            team = s.get(TeamRow, row.team_id)
        customer_id = account.customer_id if account else None
        if customer_id is None and account is not None and row.total_micros > 0:
            customer_id = self.adapter.ensure_customer(
                Customer(
                    row.team_id, team.name if team else row.team_id, None, account.billing_email
                )
            )
        external = self.adapter.issue_invoice(customer_id, invoice_doc(row))
        with self.db.session() as s:
            stored = s.get(InvoiceRow, row.id)
            acc = s.get(BillingAccountRow, row.team_id)
            if stored is not None:
                stored.external_id = external or stored.external_id
                stored.issued_at = self.clock.now()
            if acc is not None and customer_id and acc.customer_id is None:
                acc.customer_id = customer_id
            s.commit()

    def close_due(self) -> list[InvoiceRow]:
        """Finalize every invoice that is due, and hand over again those the processor did not
        take last time (its idempotency keys make a repeat harmless)."""
        with self.db.session() as s:
            pairs = self.due(s)
            unissued = list(
                s.scalars(
                    select(InvoiceRow).where(
                        InvoiceRow.issued_at.is_(None), InvoiceRow.status == "finalized"
                    )
                )
            )
        for pending in unissued:
            try:
                self._issue(pending)
            except Exception as e:
                log.warning("invoice_issue_failed", invoice_id=pending.id, error=type(e).__name__)
        out = []
        for team_id, period in pairs:
            try:
                row = self.finalize(team_id, period)
            except Exception as e:  # one team's processor failure must not stop the others
                log.warning(
                    "invoice_failed", team_id=team_id, period=period, error=type(e).__name__
                )
                continue
            if row is not None:
                out.append(row)
        return out
