"""Credits: a ledger of grants that live usage draws down, and the balance that results.

Usage is drawn hour by hour (the exact cost of each hour's records, rounded once), in time order,
from the grants in force during that hour: lowest `priority` first, then the earliest expiry
(grants that never expire last), then the oldest. What a grant has left when it expires is gone.
Usage no grant covers is owed: it is invoiced, and once an invoice is paid it is settled.

balance = what the grants in force now have left - usage owed and not yet paid
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hutch.db.billing import BillingAccountRow, CreditGrantRow, InvoiceRow, UsageRecordRow
from hutch.ids import new_id
from hutch.services.clock import Clock
from hutch.services.pricing import PriceBook, round_micros

PROMOTIONAL = "promotional"
PAID = "paid"
GRANT_KINDS = (PROMOTIONAL, PAID)
HOUR = timedelta(hours=1)


@dataclass
class GrantState:
    """A grant and what is left of it."""

    row: CreditGrantRow
    remaining_micros: int
    active: bool

    def sort_key(self) -> tuple[int, int, datetime, datetime, str]:
        r = self.row
        never = r.expires_at is None
        return (r.priority, int(never), r.expires_at or r.effective_at, r.effective_at, r.id)


@dataclass
class Bucket:
    """One hour of a team's live usage (in one billing period), priced and rounded."""

    hour: datetime
    period: str
    micros: int


@dataclass
class Ledger:
    """Where a team's credit stands."""

    grants: list[GrantState]
    usage_micros: int
    covered_micros: int
    owed_micros: int
    paid_micros: int
    balance_micros: int
    credits_by_period: dict[str, int] = field(default_factory=dict)


class CreditService:
    """Billing accounts and their credit grants."""

    def __init__(self, clock: Clock, prices: PriceBook, promo_micros: int = 50_000_000) -> None:
        self.clock = clock
        self.prices = prices
        self.promo_micros = promo_micros

    def ensure_account(self, session: Session, team_id: str) -> BillingAccountRow:
        """The team's billing account, created with the promotional grant on first sight
        (flushed, not committed: the caller's transaction decides)."""
        row = session.get(BillingAccountRow, team_id)
        if row is not None:
            return row
        now = self.clock.now()
        row = BillingAccountRow(team_id=team_id, state="active", created_at=now)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            # Opened concurrently by another request: use that one (and its single grant).
            # Callers have nothing else pending here (a new team's id cannot collide).
            session.rollback()
            existing = session.get(BillingAccountRow, team_id)
            assert existing is not None
            return existing
        if self.promo_micros > 0:
            self.grant(
                session,
                team_id,
                amount_micros=self.promo_micros,
                kind=PROMOTIONAL,
                reason="welcome credit",
            )
        return row

    def grant(
        self,
        session: Session,
        team_id: str,
        *,
        amount_micros: int,
        kind: str,
        reason: str,
        priority: int = 100,
        effective_at: datetime | None = None,
        expires_at: datetime | None = None,
        created_by: str | None = None,
    ) -> CreditGrantRow:
        """Add a grant (flushed, not committed)."""
        if amount_micros <= 0:
            raise ValueError("a grant must be positive")
        if kind not in GRANT_KINDS:
            raise ValueError(f"grant kind must be one of {GRANT_KINDS}")
        now = self.clock.now()
        row = CreditGrantRow(
            id=new_id("grt"),
            team_id=team_id,
            amount_micros=amount_micros,
            priority=priority,
            kind=kind,
            effective_at=effective_at or now,
            expires_at=expires_at,
            reason=reason,
            created_by=created_by,
            created_at=now,
        )
        session.add(row)
        session.flush()
        return row

    def buckets(self, session: Session, team_id: str) -> list[Bucket]:
        """The team's live usage per hour and period, oldest first."""
        rows = session.execute(
            select(
                UsageRecordRow.hour,
                UsageRecordRow.period,
                UsageRecordRow.price_version,
                UsageRecordRow.meter,
                func.sum(UsageRecordRow.vcpu_ms),
                func.sum(UsageRecordRow.mib_ms),
                func.sum(UsageRecordRow.units),
            )
            .where(UsageRecordRow.team_id == team_id, UsageRecordRow.mode == "live")
            .group_by(
                UsageRecordRow.hour,
                UsageRecordRow.period,
                UsageRecordRow.price_version,
                UsageRecordRow.meter,
            )
        ).all()
        exact: dict[tuple[datetime, str], Decimal] = defaultdict(Decimal)
        for hour, period, version, meter, vcpu_ms, mib_ms, units in rows:
            exact[(hour, period)] += self.prices.exact(
                version, meter, int(vcpu_ms or 0), int(mib_ms or 0), int(units or 0)
            )
        return [Bucket(h, p, round_micros(v)) for (h, p), v in sorted(exact.items())]

    def ledger(self, session: Session, team_id: str) -> Ledger:
        """Draw the team's usage from its grants and say what is left."""
        now = self.clock.now()
        grants = [
            GrantState(g, g.amount_micros, False)
            for g in session.scalars(
                select(CreditGrantRow).where(CreditGrantRow.team_id == team_id)
            )
        ]
        grants.sort(key=GrantState.sort_key)
        usage = covered = 0
        by_period: dict[str, int] = defaultdict(int)
        for b in self.buckets(session, team_id):
            usage += b.micros
            need = b.micros
            for g in grants:
                if need == 0:
                    break
                r = g.row
                if r.effective_at >= b.hour + HOUR or (r.expires_at and r.expires_at <= b.hour):
                    continue
                take = min(need, g.remaining_micros)
                g.remaining_micros -= take
                need -= take
            by_period[b.period] += b.micros - need
            covered += b.micros - need
        for g in grants:
            r = g.row
            g.active = r.effective_at <= now and (r.expires_at is None or r.expires_at > now)
        paid = (
            session.scalar(
                select(func.coalesce(func.sum(InvoiceRow.total_micros), 0)).where(
                    InvoiceRow.team_id == team_id, InvoiceRow.status == "paid"
                )
            )
            or 0
        )
        owed = usage - covered - int(paid)
        available = sum(g.remaining_micros for g in grants if g.active)
        return Ledger(
            grants=grants,
            usage_micros=usage,
            covered_micros=covered,
            owed_micros=owed,
            paid_micros=int(paid),
            balance_micros=available - owed,
            credits_by_period=dict(by_period),
        )
