"""API server settings: the shared `Settings` plus what only the server process needs."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from hutch.config import Settings


class ApiSettings(Settings):
    """`HUTCH_*` settings of the API server."""

    key_pepper: SecretStr | None = Field(
        default=None, description="HMAC secret for API keys; default: DATA_DIR/pepper (0600)"
    )
    public_domain: str = Field(
        default="localhost",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
        description="Sandbox ports are also served at {port}-sbx-{id}.<public_domain>",
    )
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    fast_exec: bool = Field(
        default=True,
        description="Serve well-formed one-shot exec and create requests without FastAPI's "
        "routing (the answers are the same; anything unusual still goes through the routed "
        "endpoint)",
    )
    auth_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How long an authenticated key is remembered; changes made through another "
        "API process apply within this time (0 = ask the database on every request)",
    )
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

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
    audit_signing_key: Path | None = Field(
        default=None,
        description="Ed25519 key signing admin-log checkpoints; default: DATA_DIR/audit-signing.key"
        " (created 0600, public half next to it as .pub). Keep a copy of the .pub elsewhere.",
    )
    audit_retention_days: int = Field(
        default=400, ge=365, description="Admin log entries are kept at least this long"
    )
    audit_checkpoint_every: int = Field(
        default=100, ge=1, description="Sign a checkpoint every N admin log entries"
    )
    usage_retention_days: int = Field(
        default=90, ge=1, le=90, description="Raw API usage rows are folded after this many days"
    )
    scheduler_tick_s: float = Field(default=5.0, gt=0, description="How often jobs are checked")

    tls_cert: Path | None = Field(
        default=None, description="PEM certificate chain; with tls_key, serve HTTPS"
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    tls13_only: bool = Field(default=False, description="Refuse TLS versions before 1.3")

    # Project secrets: which key-encryption-key provider wraps their data keys.
    kek_provider: Literal["local", "vault", "kms"] = Field(
        default="local", description="local key file, HashiCorp Vault transit, or AWS KMS"
    )
    kek_file: Path | None = Field(
        default=None, description="Local KEK file; default: DATA_DIR/kek.json (created 0600)"
    )
    vault_addr: str | None = Field(default=None, description="e.g. https://vault:8200")
    vault_token: SecretStr | None = None
    vault_transit_mount: str = "transit"
    vault_transit_key: str = Field(default="hutch", description="A derived transit key")
    kms_key_id: str | None = Field(default=None, description="KMS key id, ARN or alias")
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    erasure_grace_days: int = Field(
        default=30, ge=0, le=30, description="Days between an erasure and its purge"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key (HUTCH_TLS_CERT, HUTCH_TLS_KEY)")
        if self.tls13_only and self.tls_cert is None:
            raise ValueError("tls13_only needs tls_cert and tls_key")
        return self

    def audit_key_path(self) -> Path:
        """Where the admin-log checkpoint signing key lives."""
        return self.audit_signing_key or self.data_dir / "audit-signing.key"
