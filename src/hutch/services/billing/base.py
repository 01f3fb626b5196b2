"""The payment-processor seam: what billing asks of Stripe, or of the offline stand-in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Customer:
    """A team as the processor knows it."""

    team_id: str
    team_name: str
    customer_id: str | None
    email: str | None


@dataclass(frozen=True)
class MeterEvent:
    """One usage record sent to the processor; `identifier` makes resending harmless."""

    identifier: str
    customer_id: str
    value: int
    timestamp: int


@dataclass(frozen=True)
class InvoiceDoc:
    """A finalized invoice to hand to the processor (amounts in micro-dollars)."""

    invoice_id: str
    team_id: str
    period: str
    lines: list[dict[str, Any]]
    subtotal_micros: int
    credits_micros: int
    total_micros: int


@dataclass(frozen=True)
class WebhookEvent:
    """A verified processor event, reduced to what changes an account."""

    id: str
    type: str
    customer_id: str | None
    object_id: str | None


class BillingAdapter(ABC):
    """A payment processor."""

    name: str
    reports_usage: bool = False

    @abstractmethod
    def ensure_customer(self, customer: Customer) -> str | None:
        """The processor's customer id for the team (created when missing), or None."""

    @abstractmethod
    def setup_link(self, customer_id: str | None) -> str | None:
        """A URL where the team adds a payment method, or None when there is none."""

    @abstractmethod
    def report_usage(self, events: list[MeterEvent]) -> None:
        """Send usage (idempotent per identifier)."""

    @abstractmethod
    def issue_invoice(self, customer_id: str | None, doc: InvoiceDoc) -> str | None:
        """Hand over a finalized invoice; returns the processor's invoice id, if any."""

    @abstractmethod
    def verify_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        """Check a webhook's signature and parse it (HutchError 400 when it does not verify)."""
