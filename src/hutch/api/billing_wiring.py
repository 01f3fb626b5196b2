"""Wire billing together from the server's settings (Stripe when configured, else offline)."""

from __future__ import annotations

import hashlib
import hmac
from decimal import Decimal

from hutch.api.settings import ApiSettings
from hutch.db.session import Database
from hutch.services.billing.base import BillingAdapter
from hutch.services.billing.invoices import InvoiceService
from hutch.services.billing.offline import OfflineBilling
from hutch.services.billing.service import BillingService
from hutch.services.clock import Clock
from hutch.services.credits import CreditService
from hutch.services.metering import MeteringService
from hutch.services.pricing import MICROS_PER_DOLLAR, PriceBook, round_micros
from hutch.services.sandboxes import SandboxService


def dollars_to_micros(d: Decimal) -> int:
    """Dollars (Decimal) to integer micro-dollars, half to even."""
    return round_micros(d * MICROS_PER_DOLLAR)


def build_adapter(settings: ApiSettings) -> BillingAdapter:
    """Stripe when an API key is configured, else local invoices in DATA_DIR/invoices."""
    if settings.stripe_api_key is None:
        return OfflineBilling(settings.data_dir / "invoices")
    from hutch.services.billing.stripe_adapter import StripeBilling

    secret = settings.stripe_webhook_secret
    return StripeBilling(
        settings.stripe_api_key.get_secret_value(),
        secret.get_secret_value() if secret else "",
        api_base=settings.stripe_api_base,
        meter_event=settings.stripe_meter_event,
        success_url=settings.billing_success_url,
        cancel_url=settings.billing_cancel_url,
    )


def build_billing(
    settings: ApiSettings,
    db: Database,
    clock: Clock,
    sandboxes: SandboxService | None,
    pepper: bytes,
    adapter: BillingAdapter | None = None,
) -> BillingService:
    """The billing service and everything under it."""
    prices = PriceBook.load(settings.price_book)
    metering = MeteringService(db, clock, prices, settings.billing_late_window_s)
    credits = CreditService(clock, prices, dollars_to_micros(settings.billing_welcome_credit))
    adapter = adapter or build_adapter(settings)
    invoices = InvoiceService(db, clock, prices, credits, adapter, settings.billing_invoice_delay_s)
    return BillingService(
        db,
        clock,
        metering,
        credits,
        invoices,
        adapter,
        sandboxes,
        enforce=settings.billing_enforce,
        low_balance_micros=dollars_to_micros(settings.billing_low_balance),
        grace_s=settings.billing_grace_s,
        interval_s=settings.billing_interval_s,
        pseudonym_key=hmac.new(pepper, b"billing-pseudonyms", hashlib.sha256).digest(),
    )
