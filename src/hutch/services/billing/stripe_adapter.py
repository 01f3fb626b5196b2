"""Stripe, through the official `stripe` library: customers, set-up links, meter events,
invoices and signed webhooks. `api_base` points the library elsewhere (a local test server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import stripe
import structlog

from hutch.models.common import ErrorCode, HutchError
from hutch.services.billing.base import (
    BillingAdapter,
    Customer,
    InvoiceDoc,
    MeterEvent,
    WebhookEvent,
)
from hutch.services.pricing import micros_to_cents

log = structlog.get_logger("hutch.billing.stripe")


@contextmanager
def _unavailable() -> Iterator[None]:
    """Stripe failures a caller is waiting on become 503 `billing_unavailable`."""
    try:
        yield
    except stripe.StripeError as e:
        log.warning("stripe_failed", error=type(e).__name__)
        raise HutchError(
            ErrorCode.billing_unavailable, "the payment processor did not answer; try again"
        ) from None


class StripeBilling(BillingAdapter):
    """Stripe as the payment processor."""

    name = "stripe"
    reports_usage = True

    def __init__(
        self,
        api_key: str,
        webhook_secret: str,
        *,
        api_base: str | None = None,
        meter_event: str = "hutch_usage",
        success_url: str = "http://127.0.0.1:8787/billing/done",
        cancel_url: str = "http://127.0.0.1:8787/billing/cancelled",
        currency: str = "usd",
    ) -> None:
        bases: Any = {"api": api_base, "meter_events": api_base} if api_base else None
        self.client = stripe.StripeClient(api_key, base_addresses=bases, max_network_retries=2)
        self.webhook_secret = webhook_secret
        self.meter_event = meter_event
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.currency = currency

    def ensure_customer(self, customer: Customer) -> str | None:
        """The team's Stripe customer id (created once)."""
        with _unavailable():
            return self._ensure_customer(customer)

    def setup_link(self, customer_id: str | None) -> str | None:
        """A Checkout URL in set-up mode."""
        with _unavailable():
            return self._setup_link(customer_id)

    def _ensure_customer(self, customer: Customer) -> str | None:
        """Create the team's Stripe customer once (idempotent per team on Stripe's side too)."""
        if customer.customer_id:
            return customer.customer_id
        params: dict[str, Any] = {
            "name": customer.team_name,
            "metadata": {"team_id": customer.team_id},
        }
        if customer.email:
            params["email"] = customer.email
        created = self.client.v1.customers.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": f"hutch-customer-{customer.team_id}"},
        )
        return str(created.id)

    def _setup_link(self, customer_id: str | None) -> str | None:
        """A Checkout session in set-up mode: the team saves a card without paying now."""
        session = self.client.v1.checkout.sessions.create(
            {  # type: ignore[arg-type]
                "mode": "setup",
                "customer": customer_id,
                "currency": self.currency,
                "payment_method_types": ["card"],
                "success_url": self.success_url,
                "cancel_url": self.cancel_url,
            }
        )
        return str(session.url) if session.url else None

    def report_usage(self, events: list[MeterEvent]) -> None:
        """One meter event per usage record; Stripe ignores a repeated identifier."""
        for ev in events:
            self.client.v1.billing.meter_events.create(
                {
                    "event_name": self.meter_event,
                    "identifier": ev.identifier,
                    "timestamp": ev.timestamp,
                    "payload": {"stripe_customer_id": ev.customer_id, "value": str(ev.value)},
                }
            )

    def issue_invoice(self, customer_id: str | None, doc: InvoiceDoc) -> str | None:
        """An invoice with one item per line (credits as a negative item), finalized so Stripe
        collects it from the saved payment method."""
        if customer_id is None or doc.total_micros <= 0:
            return None
        key = f"hutch-invoice-{doc.invoice_id}"
        for i, line in enumerate(doc.lines):
            self.client.v1.invoice_items.create(
                {
                    "customer": customer_id,
                    "currency": self.currency,
                    "amount": micros_to_cents(int(line["amount_micros"])),
                    "description": f"{line['project_id']} {line['description']} ({doc.period})",
                    "metadata": {"invoice_id": doc.invoice_id},
                },
                {"idempotency_key": f"{key}-item-{i}"},
            )
        if doc.credits_micros:
            self.client.v1.invoice_items.create(
                {
                    "customer": customer_id,
                    "currency": self.currency,
                    "amount": -micros_to_cents(doc.credits_micros),
                    "description": f"credits ({doc.period})",
                },
                {"idempotency_key": f"{key}-credits"},
            )
        inv = self.client.v1.invoices.create(
            {
                "customer": customer_id,
                "collection_method": "charge_automatically",
                "pending_invoice_items_behavior": "include",
                "metadata": {"invoice_id": doc.invoice_id, "period": doc.period},
            },
            {"idempotency_key": key},
        )
        assert inv.id is not None
        self.client.v1.invoices.finalize_invoice(inv.id, {"auto_advance": True})
        return str(inv.id)

    def verify_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        """`stripe.Webhook.construct_event`: signature and timestamp checked before parsing."""
        try:
            event = stripe.Webhook.construct_event(payload, signature, self.webhook_secret)
        except (stripe.SignatureVerificationError, ValueError):
            raise HutchError(
                ErrorCode.webhook_signature_invalid,
                "the Stripe-Signature header does not verify for this body",
            ) from None
        # Verified: read the few fields needed from the raw JSON (plain dicts, no attribute magic).
        data = json.loads(payload)
        obj = data.get("data", {}).get("object", {})
        customer = obj.get("customer") if isinstance(obj, dict) else None
        object_id = obj.get("id") if isinstance(obj, dict) else None
        return WebhookEvent(
            id=str(event.id),
            type=str(data.get("type")),
            customer_id=str(customer) if isinstance(customer, str) else None,
            object_id=str(object_id) if isinstance(object_id, str) else None,
        )
