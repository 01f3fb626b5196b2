"""Billing accounts: admission of new sandboxes, enforcement, payment methods, webhooks,
retention and pseudonymisation.

Without a payment method (or with a failed payment), a team whose balance is at or below zero
may not start live sandboxes (402 `payment_required`), and its running live sandboxes are stopped
once `grace` has passed since the balance ran out. Warnings come first: a `low_balance` event when
the balance falls under the threshold, a `balance_depleted` event naming the stop time. With a
payment method usage simply continues and is invoiced. Test-mode usage is free and never blocked.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from anyio import to_thread
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from hutch.db.billing import (
    BillingAccountRow,
    BillingEventRow,
    CreditGrantRow,
    InvoiceRow,
    SandboxMeterRow,
    UsageRecordRow,
)
from hutch.db.models import ProjectRow, SandboxRow, TeamRow, UserRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.api import Mode
from hutch.models.common import ErrorCode, HutchError, SandboxState
from hutch.services.billing.base import BillingAdapter, Customer, MeterEvent, WebhookEvent
from hutch.services.billing.invoices import InvoiceService
from hutch.services.clock import Clock
from hutch.services.credits import CreditService, Ledger
from hutch.services.metering import EPOCH, SANDBOX_METER, MeteringService
from hutch.services.permissions import Principal
from hutch.services.pricing import format_dollars
from hutch.services.sandboxes import SandboxService

log = structlog.get_logger("hutch.billing")
RETENTION = timedelta(days=7 * 366)  # seven years, leap days included
REPORT_BATCH = 500
PAYMENT_FAILED = "past_due"
PURGE_EVERY = timedelta(days=1)
# How long a team's admission stands without reading its balance again. Only a team with a
# payment method, or with more than the low-balance threshold left, is admitted from memory: at
# the default prices, using up the threshold within this time takes thousands of sandboxes.
ADMIT_FOR = timedelta(seconds=5)
CLOSE_EVERY = timedelta(minutes=10)


@dataclass
class EnforcementReport:
    """What one enforcement pass did."""

    warned: list[str] = field(default_factory=list)
    depleted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    invoiced: list[str] = field(default_factory=list)
    reported: int = 0


@contextmanager
def log_failure(event: str) -> Iterator[None]:
    """Log (by type only) and swallow a failure of one periodic step."""
    try:
        yield
    except Exception as e:
        log.warning(event, error=type(e).__name__)


def has_payment_method(account: BillingAccountRow) -> bool:
    """Whether usage beyond credit may continue (a method on file that has not failed)."""
    return account.payment_method is not None and account.state != PAYMENT_FAILED


class BillingService:
    """Accounts, enforcement and the processor, on top of metering, credits and invoices."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        metering: MeteringService,
        credits: CreditService,
        invoices: InvoiceService,
        adapter: BillingAdapter,
        sandboxes: SandboxService | None = None,
        *,
        enforce: bool = True,
        low_balance_micros: int = 5_000_000,
        grace_s: float = 900.0,
        interval_s: float = 30.0,
        pseudonym_key: bytes = b"",
    ) -> None:
        self.db = db
        self.clock = clock
        self.metering = metering
        self.credits = credits
        self.invoices = invoices
        self.adapter = adapter
        self.sandboxes = sandboxes
        self.enforce = enforce
        self.low_balance_micros = low_balance_micros
        self.grace = timedelta(seconds=grace_s)
        self.interval_s = interval_s
        self.pseudonym_key = pseudonym_key
        self._purged_at: datetime | None = None
        self._closed_at: datetime | None = None
        self._admitted: dict[str, datetime] = {}  # team → until when creates need no check

    # --- events ---

    def event(self, session: Session, team_id: str, type_: str, detail: str) -> None:
        """Record an account event (and log its type, never amounts or names)."""
        session.add(
            BillingEventRow(
                id=new_id("evt"), team_id=team_id, type=type_, detail=detail, at=self.clock.now()
            )
        )
        log.info("billing_event", team_id=team_id, type=type_)

    # --- admission ---

    def check_create(self, actor: Principal) -> None:
        """Refuse a new live sandbox when credit is used up and no payment method is on file."""
        if not self.enforce or actor.mode is Mode.test:
            return
        now = self.clock.now()
        if now < self._admitted.get(actor.team_id, now):
            return
        with self.db.session() as s:
            account = self.credits.ensure_account(s, actor.team_id)
            s.commit()
            if has_payment_method(account):
                self._admit_for(actor.team_id, now)
                return
            ledger = self.credits.ledger(s, actor.team_id)
        if ledger.balance_micros > self.low_balance_micros:
            self._admit_for(actor.team_id, now)
        elif ledger.balance_micros <= 0:
            why = (
                "the team's last payment failed"
                if account.state == PAYMENT_FAILED
                else "the team's credit is used up (balance "
                f"{format_dollars(ledger.balance_micros)})"
            )
            raise HutchError(
                ErrorCode.payment_required,
                f"{why}; add a payment method (POST /v1/billing/payment-method, or "
                "`hutch billing setup`) or ask an administrator for credit",
            )

    def _admit_for(self, team_id: str, now: datetime) -> None:
        if len(self._admitted) >= 10_000:  # forget the expired ones
            self._admitted = {t: u for t, u in self._admitted.items() if u > now}
        self._admitted[team_id] = now + ADMIT_FOR

    # --- enforcement ---

    def _watched(self, session: Session) -> list[str]:
        """Teams with running live sandboxes, or whose account is in a warned state."""
        running = session.scalars(
            select(ProjectRow.team_id)
            .join(SandboxRow, SandboxRow.project_id == ProjectRow.id)
            .where(SandboxRow.state == SandboxState.running.value, SandboxRow.mode == "live")
            .distinct()
        ).all()
        flagged = session.scalars(
            select(BillingAccountRow.team_id).where(
                (BillingAccountRow.warned_at.is_not(None))
                | (BillingAccountRow.depleted_at.is_not(None))
            )
        ).all()
        return sorted(set(running) | set(flagged))

    def _assess(self, team_id: str, report: EnforcementReport) -> bool:
        """Update one account's warnings; True when its live sandboxes must stop now."""
        now = self.clock.now()
        with self.db.session() as s:
            account = self.credits.ensure_account(s, team_id)
            # With a payment method nothing is enforced: skip the ledger.
            balance = (
                0 if has_payment_method(account) else self.credits.ledger(s, team_id).balance_micros
            )
            if has_payment_method(account) or balance > self.low_balance_micros:
                account.warned_at = account.depleted_at = None
                s.commit()
                return False
            if account.warned_at is None:
                account.warned_at = now
                self.event(s, team_id, "low_balance", f"balance {format_dollars(balance)}")
                report.warned.append(team_id)
            stop = False
            if balance <= 0:
                if account.depleted_at is None:
                    account.depleted_at = now
                    self.event(
                        s,
                        team_id,
                        "balance_depleted",
                        "credit used up; running sandboxes stop at "
                        f"{(now + self.grace).isoformat()}"
                        " unless a payment method or credit is added",
                    )
                    report.depleted.append(team_id)
                stop = now >= account.depleted_at + self.grace
            else:
                account.depleted_at = None
            s.commit()
            return stop

    async def _stop_team(self, team_id: str, report: EnforcementReport) -> None:
        if self.sandboxes is None:
            return

        def running() -> list[str]:
            with self.db.session() as s:
                return list(
                    s.scalars(
                        select(SandboxRow.id)
                        .join(ProjectRow, ProjectRow.id == SandboxRow.project_id)
                        .where(
                            ProjectRow.team_id == team_id,
                            SandboxRow.mode == "live",
                            SandboxRow.state == SandboxState.running.value,
                        )
                    )
                )

        stopped = []
        for sandbox_id in await to_thread.run_sync(running):
            try:
                if await self.sandboxes.stop(sandbox_id, "payment required"):
                    stopped.append(sandbox_id)
            except HutchError as e:
                log.warning("billing_stop_failed", sandbox_id=sandbox_id, code=e.code.value)
        if stopped:
            report.stopped.extend(stopped)

            def note() -> None:
                with self.db.session() as s:
                    self.event(s, team_id, "sandboxes_stopped", f"{len(stopped)} stopped")
                    s.commit()

            await to_thread.run_sync(note)

    async def tick(self) -> EnforcementReport:
        """One pass: warn, stop what must stop, send usage, finalize due invoices, purge.
        Each step fails on its own (a Stripe outage must not stop enforcement)."""
        report = EnforcementReport()
        if self.enforce:
            with log_failure("billing_enforce_failed"):
                await self._enforce(report)
        if self.adapter.reports_usage:
            with log_failure("usage_report_failed"):
                report.reported = await to_thread.run_sync(self.report_usage)
        now = self.clock.now()
        if self._closed_at is None or now - self._closed_at >= CLOSE_EVERY:
            with log_failure("invoice_close_failed"):
                finalized = await to_thread.run_sync(self.invoices.close_due)
                report.invoiced = [r.id for r in finalized]
                self._closed_at = now
        if self._purged_at is None or now - self._purged_at >= PURGE_EVERY:
            with log_failure("billing_purge_failed"):
                await to_thread.run_sync(self.purge_expired)
                self._purged_at = now
        return report

    async def _enforce(self, report: EnforcementReport) -> None:
        def watched() -> list[str]:
            with self.db.session() as s:
                return self._watched(s)

        for team_id in await to_thread.run_sync(watched):
            if await to_thread.run_sync(self._assess, team_id, report):
                await self._stop_team(team_id, report)

    def report_usage(self) -> int:
        """Send unsent live usage of teams with a processor customer as meter events."""
        with self.db.session() as s:
            rows = s.execute(
                select(UsageRecordRow, BillingAccountRow.customer_id)
                .join(BillingAccountRow, BillingAccountRow.team_id == UsageRecordRow.team_id)
                .where(
                    UsageRecordRow.reported_at.is_(None),
                    UsageRecordRow.mode == "live",
                    UsageRecordRow.meter == SANDBOX_METER,
                    BillingAccountRow.customer_id.is_not(None),
                )
                .limit(REPORT_BATCH)
            ).all()
            # One Stripe meter with one unit price: the value is compute-unit milliseconds (one
            # vCPU, or one GiB of memory, for one millisecond), which the default price book
            # charges alike. Model usage is not sent as meter events (it is on the invoices).
            events = [
                MeterEvent(
                    identifier=r.id,
                    customer_id=str(customer),
                    value=r.vcpu_ms + r.mib_ms // 1024,
                    timestamp=int((r.end - EPOCH).total_seconds()),
                )
                for r, customer in rows
            ]
            if not events:
                return 0
            self.adapter.report_usage(events)
            now = self.clock.now()
            s.execute(
                update(UsageRecordRow)
                .where(UsageRecordRow.id.in_([e.identifier for e in events]))
                .values(reported_at=now)
            )
            s.commit()
            return len(events)

    # --- payment methods and webhooks ---

    def ledger(self, session: Session, team_id: str) -> tuple[BillingAccountRow, Ledger]:
        """The team's account (created if missing) and its ledger."""
        account = self.credits.ensure_account(session, team_id)
        session.commit()
        return account, self.credits.ledger(session, team_id)

    def setup_payment(self, actor: Principal) -> tuple[str | None, str | None]:
        """A processor set-up link. Without a processor there is none; when a server
        administrator asks, the team is put on `invoice` terms instead."""
        with self.db.session() as s:
            account = self.credits.ensure_account(s, actor.team_id)
            team = s.get(TeamRow, actor.team_id)
            s.commit()
            customer = Customer(
                actor.team_id,
                team.name if team else actor.team_id,
                account.customer_id,
                account.billing_email,
            )
        customer_id = self.adapter.ensure_customer(customer)
        url = self.adapter.setup_link(customer_id)
        with self.db.session() as s:
            account = self.credits.ensure_account(s, actor.team_id)
            if customer_id and account.customer_id is None:
                account.customer_id = customer_id
            if url is None and actor.is_admin and account.payment_method is None:
                account.payment_method = "invoice"
                account.state = "active"
                self.event(s, actor.team_id, "payment_method_added", "invoice terms")
            s.commit()
            return url, account.payment_method

    def apply_webhook(self, event: WebhookEvent) -> bool:
        """Apply a verified processor event; True when it changed something."""
        with self.db.session() as s:
            account = None
            if event.customer_id:
                account = s.scalar(
                    select(BillingAccountRow).where(
                        BillingAccountRow.customer_id == event.customer_id
                    )
                )
            if account is None:
                return False
            t = event.type
            if t in ("checkout.session.completed", "setup_intent.succeeded"):
                account.payment_method, account.state = "card", "active"
                self.event(s, account.team_id, "payment_method_added", "card")
            elif t in ("invoice.paid", "invoice.payment_succeeded"):
                self._invoice_status(s, event, "paid")
                account.state = "active"
                self.event(s, account.team_id, "payment_succeeded", event.object_id or "")
            elif t == "invoice.payment_failed":
                self._invoice_status(s, event, "payment_failed")
                account.state = PAYMENT_FAILED
                self.event(s, account.team_id, "payment_failed", event.object_id or "")
            else:
                return False
            s.commit()
            # After the commit: a create checking meanwhile reads the new state or is forgotten.
            self._admitted.pop(account.team_id, None)
            return True

    @staticmethod
    def _invoice_status(session: Session, event: WebhookEvent, status: str) -> None:
        if event.object_id:
            session.execute(
                update(InvoiceRow)
                .where(InvoiceRow.external_id == event.object_id)
                .values(status=status)
            )

    # --- retention ---

    def pseudonym(self, user_id: str) -> str:
        """A stable pseudonym for a user id (keyed, so it cannot be reversed by guessing)."""
        digest = hmac.new(self.pseudonym_key, user_id.encode(), hashlib.sha256).hexdigest()
        return f"anon_{digest[:32]}"

    def pseudonymise_user(self, user_id: str) -> int:
        """Replace a user's identity in billing records (which outlive the account) with a
        pseudonym; clears billing e-mails of teams the user alone owned. Returns rows changed."""
        pseudo = self.pseudonym(user_id)
        with self.db.session() as s:
            n = s.execute(
                update(CreditGrantRow)
                .where(CreditGrantRow.created_by == user_id)
                .values(created_by=pseudo)
            ).rowcount  # type: ignore[attr-defined]
            email = s.scalar(select(UserRow.email).where(UserRow.id == user_id))
            if email:
                n += s.execute(
                    update(BillingAccountRow)
                    .where(BillingAccountRow.billing_email == email)
                    .values(billing_email=None)
                ).rowcount  # type: ignore[attr-defined]
            s.commit()
            return int(n)

    def purge_expired(self) -> int:
        """Delete billing records older than seven years; returns rows deleted."""
        cutoff = self.clock.now() - RETENTION
        with self.db.session() as s:
            n = 0
            for stmt in (
                delete(UsageRecordRow).where(UsageRecordRow.end < cutoff),
                delete(InvoiceRow).where(InvoiceRow.created_at < cutoff),
                delete(BillingEventRow).where(BillingEventRow.at < cutoff),
                delete(CreditGrantRow).where(
                    CreditGrantRow.expires_at.is_not(None), CreditGrantRow.expires_at < cutoff
                ),
                delete(SandboxMeterRow).where(SandboxMeterRow.billed_until < cutoff),
            ):
                n += s.execute(stmt).rowcount  # type: ignore[attr-defined]
            s.commit()
            return int(n)

    def stop_at(self, account: BillingAccountRow) -> datetime | None:
        """When running sandboxes will be stopped (if the account is depleted)."""
        return account.depleted_at + self.grace if account.depleted_at else None
