"""What the usage API shows: grouped usage, CSV export, summary, credits and invoices."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hutch.db.billing import BillingEventRow, InvoiceRow, UsageRecordRow
from hutch.models.api import Scope
from hutch.models.billing import (
    BillingEvent,
    BillingSummary,
    CreditGrant,
    Invoice,
    InvoiceLine,
    UsageGroup,
    UsageItem,
    UsageReport,
)
from hutch.models.common import ErrorCode, HutchError
from hutch.services.billing.service import PAYMENT_FAILED, BillingService
from hutch.services.metering import SANDBOX_METER, period_bounds, period_of
from hutch.services.permissions import Principal
from hutch.services.pricing import MIB_PER_GIB, PriceBook, round_micros

MAX_RANGE = timedelta(days=400)
CSV_COLUMNS = (
    "record_id", "meter", "project_id", "sandbox_id", "mode", "vcpu", "memory_mb", "start",
    "end", "duration_ms", "units", "price_version", "period", "late", "cost_micros",
)  # fmt: skip


def _not_found(what: str) -> HutchError:
    return HutchError(ErrorCode.not_found, f"{what} not found")


class UsageReports:
    """Read-only views of a team's billing data for an API key with billing:read."""

    def __init__(self, billing: BillingService, prices: PriceBook) -> None:
        self.billing = billing
        self.prices = prices

    def _range(self, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
        month = period_bounds(period_of(self.billing.clock.now()))
        start = start or month[0]
        end = end or month[1]
        if end <= start or end - start > MAX_RANGE:
            raise HutchError(
                ErrorCode.invalid_request,
                f"start must be before end, and the range at most {MAX_RANGE.days} days",
                errors=[{"loc": ["query", "start"], "field": "start", "msg": "bad range"}],
            )
        return start, end

    def usage(
        self,
        session: Session,
        actor: Principal,
        group_by: UsageGroup,
        start: datetime | None,
        end: datetime | None,
        project_id: str | None = None,
    ) -> UsageReport:
        """The team's usage (of the key's mode) in a range, grouped."""
        actor.require(Scope.billing_read)
        start, end = self._range(start, end)
        r = UsageRecordRow
        keys: list[Any] = {  # type: ignore[assignment]
            UsageGroup.day: [r.hour],
            UsageGroup.project: [r.project_id],
            UsageGroup.sandbox: [r.sandbox_id, r.project_id, r.vcpu, r.memory_mb],
            UsageGroup.size: [r.vcpu, r.memory_mb],
        }[group_by]
        stmt = (
            select(
                *keys,
                r.meter,
                r.price_version,
                func.sum(r.duration_ms),
                func.sum(r.vcpu_ms),
                func.sum(r.mib_ms),
                func.sum(r.units),
            )
            .where(
                r.team_id == actor.team_id,
                r.mode == actor.mode.value,
                r.start >= start,
                r.start < end,
            )
            .group_by(*keys, r.meter, r.price_version)
        )
        if project_id:
            stmt = stmt.where(r.project_id == project_id)
        acc: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, Decimal(0)])
        free = actor.mode.value == "test"
        for row in session.execute(stmt).all():
            k = tuple(row[: len(keys)])
            if group_by is UsageGroup.day:
                k = (k[0].date(),)
            meter, version, ms, vcpu_ms, mib_ms, units = row[len(keys) :]
            a = acc[k]
            if meter == SANDBOX_METER:
                a[0] += int(ms or 0)
                a[1] += int(vcpu_ms or 0)
                a[2] += int(mib_ms or 0)
            else:
                a[3] += int(units or 0)
            if not free:
                a[4] += self.prices.exact(
                    version, meter, int(vcpu_ms or 0), int(mib_ms or 0), int(units or 0)
                )
        items = []
        for k, (ms, vcpu_ms, mib_ms, units, exact) in sorted(
            acc.items(), key=lambda kv: str(kv[0])
        ):
            item = UsageItem(
                key=" ".join(str(x) for x in k if x is not None) or "-",
                seconds=Decimal(ms) / 1000,
                vcpu_seconds=Decimal(vcpu_ms) / 1000,
                gib_seconds=Decimal(mib_ms) / (1000 * MIB_PER_GIB),
                tokens=units,
                cost_micros=round_micros(exact),
            )
            if group_by is UsageGroup.day:
                item.day = k[0]
            elif group_by is UsageGroup.project:
                item.project_id = k[0]
            elif group_by is UsageGroup.sandbox:
                item.sandbox_id, item.project_id, item.vcpu, item.memory_mb = k
                item.key = k[0] or f"models {k[1]}"
            else:
                item.vcpu, item.memory_mb = k
                item.key = f"{k[0]} vCPU · {k[1]} MiB" if k[0] else "models"
            items.append(item)
        return UsageReport(
            group_by=group_by,
            start=start,
            end=end,
            mode=actor.mode.value,
            items=items,
            total_micros=sum(i.cost_micros for i in items),
        )

    def csv_rows(
        self, actor: Principal, start: datetime | None, end: datetime | None
    ) -> Iterator[str]:
        """Every usage record in the range as CSV chunks (cost rounded per record, for
        reading). Checks happen at once; rows are read in a session of the iterator's own
        while the response streams."""
        actor.require(Scope.billing_read)
        start, end = self._range(start, end)
        return self._csv(actor, start, end)

    def _csv(self, actor: Principal, start: datetime, end: datetime) -> Iterator[str]:
        with self.billing.db.session() as session:
            yield from self._csv_in(session, actor, start, end)

    def _csv_in(
        self, session: Session, actor: Principal, start: datetime, end: datetime
    ) -> Iterator[str]:
        r = UsageRecordRow
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        free = actor.mode.value == "test"
        rows = session.scalars(
            select(r)
            .where(
                r.team_id == actor.team_id,
                r.mode == actor.mode.value,
                r.start >= start,
                r.start < end,
            )
            .order_by(r.start, r.id)
            .execution_options(yield_per=1000)
        )
        for rec in rows:
            cost = (
                0
                if free
                else round_micros(
                    self.prices.exact(
                        rec.price_version, rec.meter, rec.vcpu_ms, rec.mib_ms, rec.units
                    )
                )
            )
            w.writerow(
                (
                    rec.id,
                    rec.meter,
                    rec.project_id,
                    rec.sandbox_id or "",
                    rec.mode,
                    rec.vcpu,
                    rec.memory_mb,
                    rec.start.isoformat(),
                    rec.end.isoformat(),
                    rec.duration_ms,
                    rec.units,
                    rec.price_version,
                    rec.period,
                    int(rec.late),
                    cost,
                )
            )
            if buf.tell() > 1 << 16:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    def summary(self, session: Session, actor: Principal) -> BillingSummary:
        """Balance, cost so far this month, warnings and recent events."""
        actor.require(Scope.billing_read)
        b = self.billing
        now = b.clock.now()
        period = period_of(now)
        account, ledger = b.ledger(session, actor.team_id)
        upcoming = b.invoices.preview(session, actor.team_id, period)
        if actor.mode.value == "test":
            upcoming.subtotal_micros = upcoming.credits_micros = upcoming.total_micros = 0
        events = session.scalars(
            select(BillingEventRow)
            .where(BillingEventRow.team_id == actor.team_id)
            .order_by(BillingEventRow.at.desc(), BillingEventRow.id.desc())
            .limit(20)
        ).all()
        warning = None
        if account.state == PAYMENT_FAILED:
            warning = "payment_failed"
        elif account.payment_method is None and b.enforce:
            if ledger.balance_micros <= 0:
                warning = "balance_depleted"
            elif ledger.balance_micros <= b.low_balance_micros:
                warning = "low_balance"
        start, end = period_bounds(period)
        return BillingSummary(
            team_id=actor.team_id,
            mode=actor.mode.value,
            period=period,
            period_start=start,
            period_end=end,
            cost_this_period_micros=upcoming.subtotal_micros,
            credits_applied_micros=upcoming.credits_micros,
            due_this_period_micros=upcoming.total_micros,
            balance_micros=ledger.balance_micros,
            credit_remaining_micros=sum(g.remaining_micros for g in ledger.grants if g.active),
            low_balance_threshold_micros=b.low_balance_micros,
            payment_method=account.payment_method,
            state=account.state,
            warning=warning,
            stop_at=b.stop_at(account) if warning == "balance_depleted" else None,
            events=[BillingEvent(type=e.type, detail=e.detail, at=e.at) for e in events],
        )

    def grants(self, session: Session, actor: Principal) -> list[CreditGrant]:
        """The team's credit grants with what is left of each."""
        actor.require(Scope.billing_read)
        _, ledger = self.billing.ledger(session, actor.team_id)
        return [
            CreditGrant(
                grant_id=g.row.id,
                amount_micros=g.row.amount_micros,
                remaining_micros=g.remaining_micros if g.active else 0,
                priority=g.row.priority,
                kind=g.row.kind,
                effective_at=g.row.effective_at,
                expires_at=g.row.expires_at,
                reason=g.row.reason,
                active=g.active,
            )
            for g in ledger.grants
        ]

    @staticmethod
    def invoice_wire(row: InvoiceRow) -> Invoice:
        """Wire view of an invoice."""
        return Invoice(
            invoice_id=row.id,
            team_id=row.team_id,
            period=row.period,
            status=row.status,
            subtotal_micros=row.subtotal_micros,
            credits_micros=row.credits_micros,
            total_micros=row.total_micros,
            lines=[InvoiceLine.model_validate(line) for line in row.lines],
            created_at=row.created_at,
            external_id=row.external_id,
        )

    def invoices(self, session: Session, actor: Principal) -> list[Invoice]:
        """The team's invoices, newest first, after this month's upcoming one."""
        actor.require(Scope.billing_read)
        rows = session.scalars(
            select(InvoiceRow)
            .where(InvoiceRow.team_id == actor.team_id)
            .order_by(InvoiceRow.period.desc())
        ).all()
        upcoming = self.billing.invoices.preview(
            session, actor.team_id, period_of(self.billing.clock.now())
        )
        return [self.invoice_wire(upcoming), *(self.invoice_wire(r) for r in rows)]

    def invoice(self, session: Session, actor: Principal, invoice_id: str) -> InvoiceRow:
        """One of the team's invoices (`upcoming` for the current month)."""
        actor.require(Scope.billing_read)
        if invoice_id == "upcoming":
            return self.billing.invoices.preview(
                session, actor.team_id, period_of(self.billing.clock.now())
            )
        row = session.get(InvoiceRow, invoice_id)
        if row is None or row.team_id != actor.team_id:
            raise _not_found("invoice")
        return row
