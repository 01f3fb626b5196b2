"""Billing services on each test database, driven by a fake clock, with tenants made directly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hutch.db.billing import BillingAccountRow
from hutch.db.models import ProjectRow, TeamRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.events import UsageHeartbeat
from hutch.services.billing.invoices import InvoiceService
from hutch.services.billing.offline import OfflineBilling
from hutch.services.billing.service import BillingService
from hutch.services.clock import FakeClock
from hutch.services.credits import CreditService
from hutch.services.metering import MeteringService
from hutch.services.pricing import PriceBook
from tests.support.rows import add_sandbox

T0 = datetime(2030, 3, 10, 12, 0, tzinfo=UTC)


@dataclass
class Stack:
    """Billing services sharing one database and clock."""

    db: Database
    clock: FakeClock
    metering: MeteringService
    credits: CreditService
    invoices: InvoiceService
    billing: BillingService

    def team(self, promo: bool = True) -> tuple[str, str]:
        """A new team and project (with the billing account and welcome credit)."""
        team_id, project_id = new_id("team"), new_id("prj")
        now = self.clock.now()
        with self.db.session() as s:
            s.add(TeamRow(id=team_id, name="t", created_at=now))
            s.flush()
            s.add(ProjectRow(id=project_id, team_id=team_id, name="p", created_at=now))
            if promo:
                self.credits.ensure_account(s, team_id)
            else:  # an account without the welcome credit
                s.add(BillingAccountRow(team_id=team_id, state="active", created_at=now))
            s.commit()
        return team_id, project_id

    def sandbox(
        self, project_id: str, *, vcpu: int = 1, memory_mb: int = 1024, mode: str = "live"
    ) -> str:
        """A running sandbox row created now."""
        return add_sandbox(
            self.db,
            project_id,
            self.clock.now(),
            mode=mode,
            vcpu=vcpu,
            memory_mb=memory_mb,
            disk_mb=1024,
            timeout_s=86400,
        )

    def ledger_balance(self, team_id: str) -> int:
        with self.db.session() as s:
            return self.credits.ledger(s, team_id).balance_micros


def hb(
    sid: str,
    start: datetime,
    end: datetime,
    *,
    vcpu: int = 1,
    memory_mb: int = 1024,
    final: bool = False,
) -> UsageHeartbeat:
    """A usage heartbeat as the runner sends it."""
    return UsageHeartbeat(
        sandbox_id=sid,
        vcpu=vcpu,
        memory_mb=memory_mb,
        window_start=start,
        window_end=end,
        cpu_time_us=0,
        final=final,
    )


def make_stack(database: Database, tmp_path: Path, **kw: float) -> Stack:
    clock = FakeClock(T0)
    prices = PriceBook()
    metering = MeteringService(database, clock, prices, kw.get("late_window_s", 86400.0))
    credits = CreditService(clock, prices, 50_000_000)
    adapter = OfflineBilling(tmp_path / "invoices")
    invoices = InvoiceService(database, clock, prices, credits, adapter, 3600.0)
    billing = BillingService(
        database, clock, metering, credits, invoices, adapter, None, grace_s=600.0
    )
    return Stack(database, clock, metering, credits, invoices, billing)


@pytest.fixture
def stack(database: Database, tmp_path: Path) -> Stack:
    """Billing services on an empty database; the clock starts at T0."""
    return make_stack(database, tmp_path)
