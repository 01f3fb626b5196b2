"""Wire models of the billing API: usage, balance, credits, invoices (money in micro-dollars)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import Field

from hutch.models.common import WireModel

MAX_GRANT_DOLLARS = Decimal(1_000_000)


class UsageGroup(StrEnum):
    """How usage is grouped."""

    day = "day"
    project = "project"
    sandbox = "sandbox"
    size = "size"


class UsageItem(WireModel):
    """Usage of one group: sandbox seconds, vCPU/GiB-seconds, model tokens, and their cost."""

    key: str
    day: date | None = None
    project_id: str | None = None
    sandbox_id: str | None = None
    vcpu: int | None = None
    memory_mb: int | None = None
    seconds: Decimal = Field(description="Sandbox seconds (millisecond resolution)")
    vcpu_seconds: Decimal
    gib_seconds: Decimal
    tokens: int
    cost_micros: int = Field(description="Exact cost of the group, rounded half to even")


class UsageReport(WireModel):
    """Usage between `start` and `end` grouped by `group_by`."""

    group_by: UsageGroup
    start: datetime
    end: datetime
    mode: str
    items: list[UsageItem]
    total_micros: int


class BillingEvent(WireModel):
    """Something that happened to the account (warnings first, then what followed)."""

    type: str
    detail: str
    at: datetime


class BillingSummary(WireModel):
    """Where the team's account stands now."""

    team_id: str
    mode: str
    period: str
    period_start: datetime
    period_end: datetime
    cost_this_period_micros: int
    credits_applied_micros: int
    due_this_period_micros: int
    balance_micros: int
    credit_remaining_micros: int
    low_balance_threshold_micros: int
    payment_method: str | None
    state: str
    warning: str | None = Field(
        default=None, description="low_balance, balance_depleted or payment_failed"
    )
    stop_at: datetime | None = Field(
        default=None, description="When running sandboxes stop unless credit or a card is added"
    )
    events: list[BillingEvent]


class CreditGrant(WireModel):
    """A credit grant and what is left of it."""

    grant_id: str
    amount_micros: int
    remaining_micros: int
    priority: int
    kind: str
    effective_at: datetime
    expires_at: datetime | None
    reason: str
    active: bool


class CreditGrantCreate(WireModel):
    """Give a team credit (server administrators)."""

    team_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")
    amount: Decimal = Field(gt=0, le=MAX_GRANT_DOLLARS, decimal_places=6, description="Dollars")
    kind: str = Field(default="promotional", pattern=r"^(promotional|paid)$")
    priority: int = Field(default=100, ge=0, le=1000, description="Lower is drawn first")
    effective_at: datetime | None = None
    expires_at: datetime | None = None
    reason: str = Field(default="credit", min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")


class InvoiceLine(WireModel):
    """One line: a project's usage of one size (or one model meter)."""

    project_id: str
    description: str
    meter: str
    vcpu: int
    memory_mb: int
    quantity: str
    unit: str
    amount_micros: int


class Invoice(WireModel):
    """A monthly invoice; `upcoming` is the current month so far (not final)."""

    invoice_id: str
    team_id: str
    period: str
    status: str
    subtotal_micros: int
    credits_micros: int
    total_micros: int
    lines: list[InvoiceLine]
    created_at: datetime
    external_id: str | None = None


class PaymentSetup(WireModel):
    """Where to add a payment method (Stripe), or what was recorded (offline)."""

    url: str | None
    payment_method: str | None
    detail: str


class WebhookAck(WireModel):
    """A processed webhook."""

    received: bool = True
    type: str
