"""API server settings: the shared `Settings` plus what only the server process needs."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field, SecretStr

from hutch.config import Settings


class ApiSettings(Settings):
    """`HUTCH_*` settings of the API server."""

    key_pepper: SecretStr | None = Field(
        default=None, description="HMAC secret for API keys; default: DATA_DIR/pepper (0600)"
    )
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    auth_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How long an authenticated key is remembered; changes made through another "
        "API process apply within this time (0 = ask the database on every request)",
    )
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")

    # --- billing ---
    price_book: Path | None = Field(
        default=None, description="JSON price book {versions: [...]}; default built in"
    )
    billing_enforce: bool = Field(default=True, description="Refuse/stop unpaid live usage")
    billing_welcome_credit: Decimal = Field(default=Decimal("50"), ge=0, decimal_places=6)
    billing_low_balance: Decimal = Field(default=Decimal("5"), ge=0, decimal_places=6)
    billing_grace_s: float = Field(default=900.0, ge=0)
    billing_interval_s: float = Field(default=30.0, gt=0)
    billing_late_window_s: float = Field(default=86400.0, gt=0)
    billing_invoice_delay_s: float = Field(default=3600.0, ge=0)
    stripe_api_key: SecretStr | None = Field(default=None, description="Enables Stripe")
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = Field(default=None, description="Stripe API base URL")
    stripe_meter_event: str = "hutch_usage"
    billing_success_url: str = "http://127.0.0.1:8787/"
    billing_cancel_url: str = "http://127.0.0.1:8787/"
